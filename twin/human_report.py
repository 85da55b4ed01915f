"""Report on a human-twin (or any MM-Fi-format) folder: a figure and a learnability check.

The learnability check trains a logistic regression on simple per-frame features (LiDAR body shape, radar
Doppler statistics, CSI temporal variation) with a cross-subject split: a credible dataset lands well above
chance (1/27) and well below 100 %.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.io

from twin.skeleton import BONES


def _load_frame(action_dir: Path, name: str) -> dict[str, np.ndarray]:
    out = {}
    lidar, radar = action_dir / "lidar" / f"{name}.bin", action_dir / "mmwave" / f"{name}.bin"
    if lidar.is_file() and lidar.stat().st_size:
        out["lidar"] = np.fromfile(lidar, "<f8").reshape(-1, 3)
    if radar.is_file() and radar.stat().st_size:
        out["radar"] = np.fromfile(radar, "<f8").reshape(-1, 5)
    csi = action_dir / "wifi-csi" / f"{name}.mat"
    if csi.is_file() and csi.stat().st_size:
        out["csi"] = scipy.io.loadmat(csi)["CSIamp"]
    return out


def frame_features(frame: dict[str, np.ndarray]) -> np.ndarray:
    """A fixed-length feature vector of one frame (zeros where a modality is missing)."""
    feats = []
    lid = frame.get("lidar", np.zeros((0, 3)))
    if len(lid):
        floor = np.percentile(lid[:, 2], 2)
        back = np.percentile(lid[:, 1], 98)
        lid = lid[(lid[:, 2] > floor + 0.05) & (lid[:, 1] < back - 0.3)]
    if len(lid) > 3:
        feats += [*lid.mean(0), *lid.std(0), *np.percentile(lid[:, 2], [10, 50, 90]), np.ptp(lid[:, 0]), len(lid) / 100]
    else:
        feats += [0.0] * 11
    rad = frame.get("radar", np.zeros((0, 5)))
    if len(rad) > 1:
        feats += [len(rad) / 50, rad[:, 3].mean(), rad[:, 3].std(), np.abs(rad[:, 3]).mean(), *rad[:, :3].mean(0), *rad[:, :3].std(0)]
    else:
        feats += [0.0] * 10
    csi = frame.get("csi")
    if csi is not None:
        var = csi.std(axis=2).mean(axis=0)  # per subcarrier
        feats += [*[g.mean() for g in np.array_split(var, 6)], csi.mean() / 10]
    else:
        feats += [0.0] * 7
    return np.asarray(feats, dtype=np.float64)


def _actions(root: Path):
    """Each action folder with its activity index and whether its subject is held out (every environment's
    last quarter of subjects, at least one)."""
    for env_dir in sorted(root.glob("E[0-9]*")):
        subjects = sorted(p.name for p in env_dir.glob("S[0-9]*"))
        held = set(subjects[-max(1, len(subjects) // 4):])
        for action_dir in sorted(env_dir.glob("S[0-9]*/A[0-9]*")):
            yield action_dir, int(action_dir.name[1:]) - 1, action_dir.parent.name in held


def _held_out_accuracy(x: np.ndarray, y: np.ndarray, test: np.ndarray, max_iter: int) -> float:
    """Accuracy on the ``test`` rows of a standardised logistic regression fitted on the others."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, C=1.0)).fit(x[~test], y[~test])
    return float((clf.predict(x[test]) == y[test]).mean())


def learnability(root: Path, max_frames: int = 10) -> dict[str, float]:
    """Cross-subject logistic-regression accuracy on :func:`frame_features` (every subject's last quarter
    of each environment held out)."""
    xs, ys, test = [], [], []
    for action_dir, activity, held in _actions(root):
        names = sorted(p.stem for p in (action_dir / "lidar").glob("frame*.bin"))[:max_frames]
        for name in names:
            xs.append(frame_features(_load_frame(action_dir, name)))
            ys.append(activity)
            test.append(held)
    x, y, test = np.asarray(xs), np.asarray(ys), np.asarray(test)
    if test.all() or not test.any():
        raise ValueError(f"{root}: need at least two subjects per environment for a cross-subject split")
    n_cls = len(np.unique(y))
    return {"accuracy": _held_out_accuracy(x, y, test, 2000), "chance": 1.0 / n_cls,
            "train_frames": int((~test).sum()), "test_frames": int(test.sum()), "classes": int(n_cls)}


def csi_window_features(amp: np.ndarray) -> np.ndarray:
    """Motion features of CSI amplitude over a window (3 antennas x 114 subcarriers x packets): the log power
    in 6 log-spaced bands of the amplitude's spectrum over time (its Doppler signature) and the temporal
    spread per group of 19 subcarriers, with the static part (each subcarrier's mean) removed."""
    db = 20 * np.log10(amp + 1e-9)
    groups = db.reshape(3, 6, 19, -1).mean(2)
    x = groups - groups.mean(-1, keepdims=True)
    spec = np.abs(np.fft.rfft(x * np.hanning(x.shape[-1]), axis=-1)).mean((0, 1))
    edges = np.unique(np.geomspace(1, len(spec), 7).astype(int))
    bands = [np.log(spec[lo:hi].mean() + 1e-6) for lo, hi in zip(edges[:-1], edges[1:])]
    return np.array([*bands, *[0.0] * (6 - len(bands)), x.std(), np.abs(np.diff(db, axis=-1)).mean(),
                     *x.std(-1).mean(0)])


def csi_window_learnability(root: Path, windows: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Cross-subject logistic-regression accuracy of :func:`csi_window_features` over the last ``w`` frames'
    CSI, for each window ``w`` that fits the shortest action (the same frames for every window)."""
    actions = [([scipy.io.loadmat(f)["CSIamp"] for f in sorted((d / "wifi-csi").glob("frame*.mat")) if f.stat().st_size],
                activity, held) for d, activity, held in _actions(root)]
    fits = [w for w in windows if w <= min((len(a) for a, _, _ in actions), default=0)]
    out: dict[str, float] = {}
    for w in fits:  # frames from the largest window's first on, so every window is scored on the same frames
        rows = [(csi_window_features(np.concatenate(amps[t - w + 1: t + 1], -1)), y, test)
                for amps, y, test in actions for t in range(max(fits) - 1, len(amps))]
        x, y, test = (np.asarray(v) for v in zip(*rows))
        if test.all() or not test.any():
            return {}
        out[str(w)] = _held_out_accuracy(x, y, test, 3000)
    return out


def figure(root: Path, path: Path) -> None:
    """Skeletons of several activities, a radar and a LiDAR frame over the skeleton, CSI over time and a
    histogram of points per frame."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    info = json.loads((root / "twin_info.json").read_text()) if (root / "twin_info.json").is_file() else {}
    names = info.get("activities", {})
    subject_dir = sorted(root.glob("E[0-9]*/S[0-9]*"))[0]
    fig = plt.figure(figsize=(16, 9))
    shown = ["A01", "A04", "A07", "A08", "A12", "A20"]
    for i, act in enumerate(shown):
        ax = fig.add_subplot(3, 6, i + 1)
        gt_path = subject_dir / act / "ground_truth.npy"
        if not gt_path.is_file():
            ax.set_axis_off()
            continue
        gt = np.load(gt_path)
        for f in range(0, len(gt), max(1, len(gt) // 4)):
            for a, b in BONES:
                ax.plot(gt[f, [a, b], 0], gt[f, [a, b], 2], color=plt.cm.viridis(f / len(gt)), lw=1)
        ax.set_title(f"{act} {names.get(act, '')}"[:28], fontsize=8)
        ax.set_aspect("equal")
        ax.set_xticks([])
    action = subject_dir / "A04"
    gt = np.load(action / "ground_truth.npy")
    mid = len(gt) // 2
    frame = _load_frame(action, f"frame{mid + 1:03d}")
    for k, (mod, col) in enumerate((("radar", "tab:red"), ("lidar", "tab:blue"))):
        ax = fig.add_subplot(3, 3, 4 + k)
        pts = frame.get(mod, np.zeros((0, 3)))
        if mod == "radar":
            sc = ax.scatter(pts[:, 0], pts[:, 2], s=6, c=pts[:, 3], cmap="coolwarm")
        else:
            ax.scatter(pts[:, 0], pts[:, 2], s=3, c=col)
        for a, b in BONES:
            ax.plot(gt[mid, [a, b], 0], gt[mid, [a, b], 2], "k-", lw=1.5)
        ax.set_title(f"{mod} frame over the skeleton (x-z, m)" + (", colour = Doppler" if mod == "radar" else ""), fontsize=9)
        ax.set_xlim(-2.5, 2.5)
        if mod == "radar":
            fig.colorbar(sc, ax=ax, fraction=0.04)
    ax = fig.add_subplot(3, 3, 6)
    amps = []
    for f in range(len(gt)):
        fr = _load_frame(action, f"frame{f + 1:03d}")
        if "csi" in fr:
            amps.append(fr["csi"][0])  # antenna 0: 114 x 10
    if amps:
        ax.imshow(np.concatenate(amps, axis=1), aspect="auto", cmap="magma")
        ax.set_xlabel("packet (10 per frame)")
        ax.set_ylabel("subcarrier")
    ax.set_title("WiFi CSI amplitude over time, antenna 1 (A04)", fontsize=9)
    counts = {"radar": [], "lidar": []}
    for action_dir in sorted(root.glob("E[0-9]*/S[0-9]*/A[0-9]*"))[:60]:
        for mod in counts:
            for f in (action_dir / ("mmwave" if mod == "radar" else "lidar")).glob("frame*.bin"):
                counts[mod].append(f.stat().st_size // (8 * (5 if mod == "radar" else 3)))
    for k, mod in enumerate(counts):
        ax = fig.add_subplot(3, 2, 5 + k)
        ax.hist(counts[mod], bins=30, color="tab:red" if mod == "radar" else "tab:blue")
        ax.set_title(f"{mod} points per frame", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
