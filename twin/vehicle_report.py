"""Vehicle twin next to the real DeepSense scenario 5: best beam vs bearing, power dynamic range,
blockage power drop and blockage rate, how predictable the future-blockage label is, and how precisely the
radar's points can tell the receiver's bearing (text + PNG)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from airbind.blockage import DEFAULT_BLOCKAGE_LABEL, future_blockage
from airbind.geo import latlon_to_en
from shards.radar import RadarConfig, cube_to_points


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def twin_stats(root: Path) -> dict[str, Any]:
    """Per-sample arrays of a twin folder: LoS angle, best beam, max/median ratio, blockage and drop."""
    out: dict[str, list] = {k: [] for k in ("angle", "beam", "ratio_db", "blocked", "drop_db", "scenario")}
    for truth_path in sorted(root.glob("scenario*/twin_truth.csv")):
        base = truth_path.parent
        index = {r["index"]: r for r in _rows(base / f"{base.name}.csv")}
        for t in _rows(truth_path):
            power = np.loadtxt(base / index[t["index"]]["unit1_pwr_60ghz"])
            out["angle"].append(float(t["los_angle_deg"]))
            out["beam"].append(int(np.argmax(power)))
            out["ratio_db"].append(10 * np.log10(power.max() / np.median(power)))
            out["blocked"].append(int(t["blocked"]))
            out["drop_db"].append(float(t["unblocked_signal_db"]) - float(t["signal_db"]))
            out["scenario"].append(base.name)
    return {k: np.asarray(v) for k, v in out.items()}


BLOCKAGE_HORIZON = 3  # frames: the default Δ of the future-blockage label (shards/deepsense.py blockage_horizon)


def blockage_series(root: Path) -> list[np.ndarray]:
    """The per-frame ``blockage`` column of every pass (``seq_index``) of a twin folder, in time order."""
    series = []
    for path in sorted(root.glob("scenario*/scenario*.csv")):
        by_seq: dict[str, list[tuple[int, int]]] = {}
        for r in _rows(path):
            by_seq.setdefault(r["seq_index"], []).append((int(float(r["index"])), int(r["blockage"])))
        series += [np.array([b for _, b in sorted(v)]) for v in by_seq.values()]
    return series


def blockage_predictability(series: list[np.ndarray], horizon: int = BLOCKAGE_HORIZON,
                            kind: str = DEFAULT_BLOCKAGE_LABEL) -> dict[str, float]:
    """For the future-blockage label of frame t (``kind`` "within": blocked in any of frames t+1..t+horizon;
    "at": blocked at frame t+horizon) over every t of every pass that has it: the share of positives, the
    accuracy of always answering the majority, and of persistence (answering frame t's own state, which a
    model reading frame t's camera could at best see), and the median length in frames of the blocked runs.
    When persistence does not beat the majority, no accuracy gain over the majority is to be had from the
    current state alone: the events are too short for the horizon."""
    pairs = [(s[t], future_blockage(s[t + 1: t + 1 + horizon], kind))
             for s in series for t in range(len(s) - horizon)]
    now, later = np.array(pairs, int).reshape(-1, 2).T
    runs = [len(r) for s in series for r in np.split(s, np.flatnonzero(np.diff(s)) + 1) if r[0] == 1]
    pos = float(later.mean()) if len(later) else float("nan")
    return {"labels": float(len(later)), "positive_rate": pos, "majority_accuracy": max(pos, 1 - pos),
            "persistence_accuracy": float((now == later).mean()) if len(later) else float("nan"),
            "blocked_run_median_frames": float(np.median(runs)) if runs else float("nan")}


MOVING_MPS = 0.25  # |radial velocity| above the zero-Doppler bin (bins are ~0.47 m/s wide for the twin's chirp)


def bearing_error(points: np.ndarray, angle_deg: float, moving_mps: float = MOVING_MPS) -> float:
    """Signed azimuth - angle_deg (deg) of the moving point of one radar frame (N x 5: x across the boresight,
    y along it, z, Doppler, intensity) nearest to ``angle_deg``, NaN without a moving point. Given the
    receiver's true LoS angle, this picks the detection nearest to it: an oracle that knows which car carries
    the receiver, so its error bounds from below what a model reading the radar alone can tell."""
    moving = points[np.abs(points[:, 3]) > moving_mps]
    if not len(moving):
        return float("nan")
    diff = np.degrees(np.arctan2(moving[:, 0], moving[:, 1])) - angle_deg
    return float(diff[np.abs(diff).argmin()])


def radar_bearing(root: Path, max_angle_deg: float, cfg: RadarConfig = RadarConfig(), stride: int = 2) -> dict[str, float]:
    """Over every ``stride``-th unblocked frame whose LoS angle lies inside the codebook: the radar cube →
    points as the shard writer makes them (shards/radar.py), and :func:`bearing_error` against the true LoS
    angle. Returns the share of frames with a moving detection within 10 deg of the receiver, the median and
    75th percentile of |error| (deg) over the frames with a moving detection, and the median |error| left
    after removing, per street, the part linear in the angle (the offset of the reflecting car body from the
    receiver that a model could learn)."""
    errors, residuals = [], []
    for truth_path in sorted(root.glob("scenario*/twin_truth.csv")):
        base = truth_path.parent
        index = {r["index"]: r for r in _rows(base / f"{base.name}.csv")}
        street = []
        for t in _rows(truth_path)[::stride]:
            angle = float(t["los_angle_deg"])
            if int(t["blocked"]) or abs(angle) > max_angle_deg or not index[t["index"]].get("unit1_radar"):
                continue
            path = base / index[t["index"]]["unit1_radar"]
            try:
                points = cube_to_points(np.load(path, allow_pickle=False), cfg)
            except ValueError as exc:
                raise ValueError(f"{path}: not a radar cube ({exc})") from exc
            street.append((angle, bearing_error(points, angle)))
        a, e = np.asarray(street, float).reshape(-1, 2).T
        errors += e.tolist()
        seen = ~np.isnan(e)
        if seen.sum() > 2:
            residuals += (e[seen] - np.polyval(np.polyfit(a[seen], e[seen], 1), a[seen])).tolist()
    e = np.abs(np.asarray(errors, float))
    seen = e[~np.isnan(e)]
    nan = float("nan")
    return {"frames": float(len(e)), "moving_frames": float(len(seen)),
            "within_10_deg": float((seen < 10).sum() / len(e)) if len(e) else nan,
            "median_deg": float(np.median(seen)) if len(seen) else nan,
            "p75_deg": float(np.percentile(seen, 75)) if len(seen) else nan,
            "median_deg_linear_corrected": float(np.median(np.abs(residuals))) if residuals else nan}


def real_stats(folder: Path) -> dict[str, np.ndarray] | None:
    """Bearing (deg from north, seen from unit1), best beam and max/median ratio of a real scenario folder."""
    csvs = sorted(folder.glob("*.csv"))
    bs_file = folder / "unit1" / "GPS_data" / "gps_location.txt"
    if not csvs or not bs_file.is_file():
        return None
    lat0, lon0 = np.loadtxt(bs_file)[:2]
    bearing, beam, ratio = [], [], []
    for c in csvs:
        for r in _rows(c):
            pwr_col = next(k for k in r if k.startswith("unit1_pwr"))
            loc_col = next(k for k in r if k.startswith("unit2_loc"))
            p = np.loadtxt(folder / r[pwr_col])
            lat, lon = np.loadtxt(folder / r[loc_col])[:2]
            e, n = latlon_to_en(np.array(lat), np.array(lon), lat0, lon0)
            bearing.append(float(np.degrees(np.arctan2(e, n))))
            beam.append(int(np.argmax(p)))
            ratio.append(10 * np.log10(p.max() / np.median(p)))
    return {"bearing": np.asarray(bearing), "beam": np.asarray(beam), "ratio_db": np.asarray(ratio)}


def _pct(x: np.ndarray) -> str:
    return "p10 {:.1f} / p50 {:.1f} / p90 {:.1f} dB".format(*np.percentile(x, [10, 50, 90]))


def report(root: Path, out: Path, real: Path | None) -> dict[str, Any]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tw = twin_stats(root)
    rl = real_stats(real) if real is not None and real.is_dir() else None
    inside = np.abs(tw["angle"]) <= 42.0
    unb = tw["blocked"] == 0
    corr = float(np.corrcoef(tw["angle"][inside & unb], tw["beam"][inside & unb])[0, 1]) if (inside & unb).sum() > 2 else float("nan")
    blocked = tw["blocked"] == 1
    series = blockage_series(root)
    result: dict[str, Any] = {
        "twin_samples": int(len(tw["beam"])),
        "twin_ratio_db": np.percentile(tw["ratio_db"], [10, 50, 90]).round(2).tolist(),
        "twin_blockage_rate": float(blocked.mean()),
        "twin_blockage_rate_per_scenario": {s: float(tw["blocked"][tw["scenario"] == s].mean()) for s in np.unique(tw["scenario"])},
        "twin_blocked_drop_db": np.percentile(tw["drop_db"][blocked], [0, 10, 50]).round(2).tolist() if blocked.any() else None,
        "twin_beam_vs_angle_corr": corr,
        "twin_future_blockage": blockage_predictability(series),
        "twin_future_blockage_at": blockage_predictability(series, kind="at"),
    }
    beam_cfg = json.loads((root / "twin_info.json").read_text())["config"]["beam"]
    spacing = 2 * beam_cfg["max_angle_deg"] / (beam_cfg["n_beams"] - 1)
    rb = result["twin_radar_bearing"] = {**radar_bearing(root, beam_cfg["max_angle_deg"]), "beam_spacing_deg": spacing}
    lines = [f"vehicle twin {root}: {result['twin_samples']} samples",
             f"best beam vs LoS angle (unblocked, inside the +-42 deg codebook): correlation {corr:.3f}",
             f"max/median beam power: twin {_pct(tw['ratio_db'])}",
             f"blockage rate: twin {result['twin_blockage_rate']:.3f}"]
    if blocked.any():
        lines.append("signal drop of blocked samples vs the same position without traffic: min {:.1f}, p10 {:.1f}, "
                     "median {:.1f} dB".format(*result["twin_blocked_drop_db"]))
    fb = result["twin_future_blockage"]
    lines.append(f"blocked within the next {BLOCKAGE_HORIZON} frames (the future-blockage label, {fb['labels']:.0f} frames): "
                 f"positives {fb['positive_rate']:.3f}; accuracy of the majority {fb['majority_accuracy']:.3f}, "
                 f"of persistence (the current state) {fb['persistence_accuracy']:.3f}; blocked runs last a median "
                 f"of {fb['blocked_run_median_frames']:.0f} frames")
    fa = result["twin_future_blockage_at"]
    lines.append(f"blocked at frame t+{BLOCKAGE_HORIZON} alone (--blockage-label at): positives {fa['positive_rate']:.3f}; "
                 f"majority {fa['majority_accuracy']:.3f}, persistence {fa['persistence_accuracy']:.3f}")
    lines.append(f"radar bearing of the receiver (every 2nd unblocked frame inside the codebook, {rb['frames']:.0f}): "
                 f"a moving detection within 10 deg in {rb['within_10_deg']:.3f} of them; the moving detection "
                 f"nearest the true LoS angle is off by a median of {rb['median_deg']:.2f} deg (p75 "
                 f"{rb['p75_deg']:.2f}) = {rb['median_deg'] / spacing:.1f} beams of {spacing:.2f} deg, "
                 f"{rb['median_deg_linear_corrected']:.2f} deg = "
                 f"{rb['median_deg_linear_corrected'] / spacing:.1f} beams after a per-street correction linear in "
                 "the angle (the car body reflects, not the receiver on it)")
    if rl is not None:
        result["real_samples"] = int(len(rl["beam"]))
        result["real_ratio_db"] = np.percentile(rl["ratio_db"], [10, 50, 90]).round(2).tolist()
        lines.append(f"max/median beam power: real scenario 5 {_pct(rl['ratio_db'])} ({len(rl['beam'])} samples)")
    fig, axes = plt.subplots(1, 4 if rl is not None else 3, figsize=(18, 4.2))
    ax = axes[0]
    ax.scatter(tw["angle"][unb], tw["beam"][unb], s=6, label="LoS")
    ax.scatter(tw["angle"][blocked], tw["beam"][blocked], s=10, c="tab:red", label="LoS blocked")
    ax.set_xlabel("LoS angle from BS boresight (deg)")
    ax.set_ylabel("best beam (0-based)")
    ax.set_title("twin: best beam vs vehicle bearing")
    ax.legend(fontsize=8)
    k = 1
    if rl is not None:
        axes[k].scatter(rl["bearing"], rl["beam"], s=4, c="tab:green")
        axes[k].set_xlabel("bearing of unit2 from unit1 (deg from north)")
        axes[k].set_title("real scenario 5: best beam vs bearing")
        k += 1
    ax = axes[k]
    bins = np.linspace(0, max(25, float(tw["ratio_db"].max()) + 1), 40)
    ax.hist(tw["ratio_db"], bins=bins, alpha=0.6, density=True, label="twin")
    if rl is not None:
        ax.hist(rl["ratio_db"], bins=bins, alpha=0.6, density=True, label="real scenario 5")
    ax.set_xlabel("max / median beam power (dB)")
    ax.set_title("received-power dynamic range")
    ax.legend(fontsize=8)
    ax = axes[k + 1]
    if blocked.any():
        ax.hist(np.clip(tw["drop_db"][blocked], 0, 80), bins=30, color="tab:red")
    ax.axvline(15, color="k", ls="--", lw=1)
    ax.set_xlabel("best-beam signal drop when blocked (dB)")
    ax.set_title(f"blockage: rate {result['twin_blockage_rate']:.2f}")
    fig.tight_layout()
    fig.savefig(out / "vehicles.png", dpi=90)
    plt.close(fig)
    text = "\n".join(lines) + "\n"
    result["text"] = text
    (out / "vehicles.json").write_text(json.dumps({k: v for k, v in result.items() if k != "text"}, indent=1))
    return result
