"""Figures (PNG, matplotlib): confusion matrices, beam error vs position, predicted vs true pose skeletons,
t-SNE of stage-one embeddings, gating weights per task, few-shot curves."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from evaluation.common import EvalConfig, finetune_checkpoint, pretrain_checkpoint, roots_for  # noqa: E402
from pretrain.data import resolve_data, split_dirs  # noqa: E402

# Human3.6M / MM-Fi 17-joint skeleton (the twin's joint order)
BONES = ((0, 1), (1, 2), (2, 3), (0, 4), (4, 5), (5, 6), (0, 7), (7, 8), (8, 9), (9, 10), (8, 11), (11, 12),
         (12, 13), (8, 14), (14, 15), (15, 16))


def confusion(pred: np.ndarray, true: np.ndarray, n: int) -> np.ndarray:
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (true, pred), 1)
    return m


def save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def plot_confusion(arrays: dict, task: str, n: int, out: Path) -> str | None:
    if task not in arrays:
        return None
    a = arrays[task]
    m = confusion(a["output"].argmax(1), a["label"], n)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(np.log1p(m), cmap="viridis")
    ax.set(xlabel="predicted", ylabel="true", title=f"{task}: confusion (log counts), top-1 {np.trace(m) / m.sum():.2f}")
    return save(fig, out / f"confusion_{task}.png")


def positions(dirs: list[Path]) -> dict[str, np.ndarray]:
    from shards.stream import StreamConfig, make_loader
    out = {}
    for batch in make_loader(dirs, StreamConfig(batch_size=256, always=("gps",), shuffle_buffer=0)):
        for k, g in zip(batch["key"], batch["gps"][:, :2].numpy()):
            out[k] = g
    return out


def plot_beam_error(arrays: dict, gps: dict[str, np.ndarray], out: Path) -> str | None:
    if "beam" not in arrays:
        return None
    a = arrays["beam"]
    keep = [i for i, k in enumerate(a["key"]) if k in gps]
    xy = np.stack([gps[a["key"][i]] for i in keep])
    err = np.abs(a["output"][keep].argmax(1) - a["label"][keep])
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=err, cmap="magma_r", s=14, vmin=0, vmax=max(4, err.max()))
    fig.colorbar(sc, label="|predicted - true beam|")
    ax.set(xlabel="east of BS (m)", ylabel="north of BS (m)", title="beam-prediction error vs position")
    return save(fig, out / "beam_error_vs_position.png")


def plot_poses(arrays: dict, out: Path, n: int = 3) -> str | None:
    if "hpe" not in arrays:
        return None
    a = arrays["hpe"]
    idx = np.linspace(0, len(a["label"]) - 1, n).astype(int)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.6))
    for ax, i in zip(np.atleast_1d(axes), idx):
        for pts, colour, label in ((a["label"][i].reshape(17, 3), "k", "true"), (a["output"][i].reshape(17, 3), "tab:red", "predicted")):
            for j, (p, q) in enumerate(BONES):  # front view: x right, z up
                ax.plot(pts[[p, q], 0], pts[[p, q], 2], color=colour, lw=2, label=label if j == 0 else None)
        ax.set_aspect("equal")
        ax.set_title(str(a["key"][i])[-28:], fontsize=7)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    return save(fig, out / "pose_skeletons.png")


def plot_tsne(emb: dict[str, np.ndarray], modality: str, label_key: str, out: Path, name: str) -> str | None:
    from sklearn.manifold import TSNE
    if f"z/{modality}" not in emb:
        return None
    rows = emb[f"present/{modality}"] & (emb[label_key] >= 0)
    if rows.sum() < 10:
        return None
    xy = TSNE(n_components=2, perplexity=min(30, rows.sum() // 4), init="pca", random_state=0).fit_transform(emb[f"z/{modality}"][rows])
    fig, ax = plt.subplots(figsize=(5, 4.5))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=emb[label_key][rows], cmap="turbo", s=10)
    fig.colorbar(sc, label=label_key)
    ax.set(title=f"t-SNE of stage-one {modality} embeddings ({name})", xticks=[], yticks=[])
    return save(fig, out / f"tsne_{modality}_{name}.png")


def plot_gates(metrics: dict[str, float], out: Path) -> str | None:
    gates: dict[str, dict[str, float]] = {}
    for k, v in metrics.items():
        parts = k.split("/")
        if len(parts) == 3 and parts[1] == "gate":
            gates.setdefault(parts[0], {})[parts[2]] = v
    if not gates:
        return None
    mods = sorted({m for g in gates.values() for m in g})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(mods)
    for j, m in enumerate(mods):
        ax.bar(np.arange(len(gates)) + j * width, [g.get(m, 0.0) for g in gates.values()], width, label=m)
    ax.set_xticks(np.arange(len(gates)) + 0.4 - width / 2, list(gates))
    ax.set(ylabel="mean gate weight (Eq. 8)", title="modality gating per task")
    ax.legend(fontsize=7, ncol=3)
    return save(fig, out / "gating_weights.png")


def plot_fewshot(fewshot: dict[str, Any], out: Path) -> str | None:
    tasks = sorted({t for k in ("stage_one", "random_init", "stage_two") for t in fewshot.get(k, {})})
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.4 * len(tasks), 3.2))
    for ax, t in zip(np.atleast_1d(axes), tasks):
        metric = "mpjpe_mm" if t == "hpe" else "top1"
        for feats in ("stage_one", "random_init", "stage_two"):
            res = {float(s): r for s, r in fewshot.get(feats, {}).get(t, {}).items() if "shot" not in s}
            if res:
                xs = sorted(res)
                ax.plot([x * 100 for x in xs], [res[x][metric] for x in xs], marker="o", label=feats)
        ax.set(xscale="log", xlabel="% of labels", ylabel=metric, title=t)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    return save(fig, out / "fewshot_curves.png")


def run_plots(ev: EvalConfig) -> list[str]:
    from evaluation.embed import embed_split, load_binding
    from finetune.predict import evaluate_checkpoint
    out = Path(ev.out) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    model, pcfg = load_binding(pretrain_checkpoint(ev))
    roots = resolve_data(ev.data or pcfg.data)
    dirs = split_dirs(roots, ev.split)
    metrics, arrays = evaluate_checkpoint(finetune_checkpoint(ev), dirs, ev.max_eval_samples)
    made = [plot_confusion(arrays, "beam", 64, out), plot_confusion(arrays, "har", 27, out),
            plot_beam_error(arrays, positions(split_dirs(roots_for("beam", roots), ev.split)), out),
            plot_poses(arrays, out), plot_gates(metrics, out)]
    for task, label_key, name in (("beam", "beam_label", "vehicles"), ("har", "activity", "humans")):
        task_roots = roots_for(task, roots)
        if task_roots:
            emb = embed_split(model, pcfg, split_dirs(task_roots, ev.split), ev.max_eval_samples)
            made.append(plot_tsne(emb, "image", label_key, out, name))
    few = Path(ev.out) / "fewshot.json"
    if few.is_file():
        made.append(plot_fewshot(json.loads(few.read_text()), out))
    return [m for m in made if m]
