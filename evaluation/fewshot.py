"""Few-shot studies: linear probes on frozen stage-one and stage-two features with 1 %, 10 %, 100 % of the
training labels and k shots per class, against the same probe on a randomly initialised stage-one model;
and 10 % fine-tuning (``finetune/run.py --fraction 0.1``) next to 100 % under the same budget."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.common import EvalConfig, finetune_checkpoint, markdown_table, pretrain_checkpoint, roots_for, write_report
from evaluation.embed import embed_split, load_binding
from evaluation.probe import probe_classifier, probe_regressor, subset
from evaluation.table import FULL_MODEL
from evaluation.training import base_config, budgeted, train_or_reuse
from finetune.model import TASKS, label_rows
from pretrain.data import resolve_data, split_dirs

MAX_TRAIN = 2000


def task_labels(task: str, emb: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(rows with a label, labels) of ``task`` in an ``embed_split`` result."""
    rows = np.asarray(label_rows(task, emb), dtype=bool)
    key = {"beam": "beam_label", "har": "activity", "hpe": "keypoints", "blockage": "blockage"}[task]
    labels = emb[key][rows]
    return rows, labels.astype(int) if task == "blockage" else labels


def stage_one_features(task: str, emb: dict[str, np.ndarray]) -> np.ndarray:
    """The task's input modalities' shared-space embeddings, concatenated (zeros where absent)."""
    mods = [m for m in TASKS[task].inputs if f"z/{m}" in emb]
    return np.concatenate([emb[f"z/{m}"] for m in mods], 1)


@torch.no_grad()
def stage_two_features(ckpt: Path, dirs: list[Path], max_samples: int) -> dict[str, dict[str, np.ndarray]]:
    """Per task: the feature the head reads (after gating, fusion, backbone and task attention; with the head
    skip also the gated pooled embedding) and labels."""
    from finetune.train import evaluate, load_model
    model, cfg = load_model(ckpt)
    feats: dict[str, list] = {}
    hooks = [model.heads[t].register_forward_pre_hook(lambda _m, args, t=t: feats.setdefault(t, []).append(args[0].numpy()))
             for t in model.cfg.tasks]
    _, arrays = evaluate(model, cfg, dirs, max_samples)
    for h in hooks:
        h.remove()
    return {t: {"x": np.concatenate(feats[t]), "y": arrays[t]["label"]} for t in arrays}


def probe(task: str, xtr, ytr, xte, yte, ev: EvalConfig) -> dict[str, dict[str, float]]:
    fit = probe_regressor if task == "hpe" else probe_classifier
    out = {}
    for f in ev.fractions:
        idx = subset(ytr if task != "hpe" else np.arange(len(ytr)), fraction=f, seed=ev.seed)
        out[f"{f:g}"] = {**fit(xtr[idx], ytr[idx], xte, yte), "labels": int(len(idx))}
    if task != "hpe":
        for k in ev.shots:
            idx = subset(ytr, shots=k, seed=ev.seed)
            out[f"{k}-shot"] = {**fit(xtr[idx], ytr[idx], xte, yte), "labels": int(len(idx))}
    return out


def run_fewshot(ev: EvalConfig, finetune_fraction: bool = True) -> dict[str, Any]:
    ckpt1 = pretrain_checkpoint(ev)
    trained, pcfg = load_binding(ckpt1)
    random, _ = load_binding(ckpt1, random_init=True, seed=ev.seed)
    roots = resolve_data(ev.data or pcfg.data)
    data: dict[str, Any] = {"stage_one": {}, "random_init": {}, "stage_two": {}, "split": ev.split}
    for kind, tasks in (("vehicles", ("beam", "blockage")), ("humans", ("har", "hpe"))):
        task_roots = roots_for(tasks[0], roots)
        if not task_roots:
            continue
        for name, model in (("stage_one", trained), ("random_init", random)):
            tr = embed_split(model, pcfg, split_dirs(task_roots, "train"), MAX_TRAIN)
            te = embed_split(model, pcfg, split_dirs(task_roots, ev.split), ev.max_eval_samples)
            for t in tasks:
                rtr, ytr = task_labels(t, tr)
                rte, yte = task_labels(t, te)
                if rtr.sum() >= 2 and rte.sum() >= 1:
                    data[name][t] = probe(t, stage_one_features(t, tr)[rtr], ytr, stage_one_features(t, te)[rte], yte, ev)
        ckpt2 = finetune_checkpoint(ev)
        tr2 = stage_two_features(ckpt2, split_dirs(task_roots, "train"), MAX_TRAIN)
        te2 = stage_two_features(ckpt2, split_dirs(task_roots, ev.split), ev.max_eval_samples)
        for t in tasks:
            if t in tr2 and t in te2:
                data["stage_two"][t] = probe(t, tr2[t]["x"], tr2[t]["y"], te2[t]["x"], te2[t]["y"], ev)
    if finetune_fraction:
        data["finetune"] = fraction_finetune(ev)
    write_report(Path(ev.out), "fewshot", data, render(data))
    return data


def fraction_finetune(ev: EvalConfig) -> dict[str, dict[str, float]]:
    """Stage two fine-tuned on 10 % and on 100 % of the labels, same budget (the 100 % run is Table I's full
    model, reused when the table was made first)."""
    from finetune.predict import evaluate_checkpoint
    base = base_config(finetune_checkpoint(ev))
    roots = resolve_data(ev.data or base.data)
    out = {}
    for fraction, folder in ((0.1, "fewshot/finetune-10pct"), (1.0, "table/mmsense")):
        cfg = budgeted(base, ev, Path(ev.work) / folder, data=[str(r) for r in roots],
                       encoders=str(pretrain_checkpoint(ev)), fraction=fraction,
                       model={**FULL_MODEL, "tasks": [t for t in base.model.tasks if roots_for(t, roots)]})
        metrics, _ = evaluate_checkpoint(train_or_reuse(cfg), split_dirs(roots, ev.split), ev.max_eval_samples)
        out[f"{fraction:g}"] = {k: v for k, v in metrics.items() if "/gate/" not in k}
    return out


METRIC = {"beam": "top1", "har": "top1", "blockage": "top1", "hpe": "mpjpe_mm"}


def render(data: dict[str, Any]) -> str:
    md = f"## Few-shot linear probes (split `{data['split']}`)\n\n"
    rows = []
    for feats in ("stage_one", "random_init", "stage_two"):
        for t, res in data[feats].items():
            for setting, r in res.items():
                rows.append([feats, t, setting, r["labels"], r[METRIC[t]], r.get("pa_mpjpe_mm"), r.get("baseline_pa_mpjpe_mm")])
    md += markdown_table(["features", "task", "labels used", "n labels", "top-1 (HPE: MPJPE mm)", "HPE: PA-MPJPE mm",
                          "HPE: PA-MPJPE of the aligned mean pose"], rows)
    if "finetune" in data:
        md += "\n## Fine-tuning on 10 % vs 100 % of the labels (same budget)\n\n"
        keys = ["beam/top1", "har/top1", "hpe/mpjpe_mm", "blockage/accuracy"]
        md += markdown_table(["labels"] + keys, [[f] + [m.get(k) for k in keys] for f, m in data["finetune"].items()])
    return md
