"""MMSense Table I (small single-task models, an LLM baseline, the full model) and Table II (ablations of
gating and task attention), every row trained by ``finetune/train.py`` under the same budget and evaluated
on the same held-out split."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from evaluation.common import EvalConfig, finetune_checkpoint, markdown_table, pretrain_checkpoint, roots_for, write_report
from evaluation.training import base_config, budgeted, train_or_reuse
from finetune.bodies import BODIES
from finetune.model import TASKS
from pretrain.data import resolve_data, split_dirs

# (column, task, metric key, higher is better)
COLUMNS = [("beam top-1", "beam", "top1", True), ("HAR top-1", "har", "top1", True), ("HPE MSE", "hpe", "mse", False),
           ("blockage acc", "blockage", "accuracy", True)]
EXTRA = [("beam top-3", "beam", "top3", True), ("beam power loss dB", "beam", "power_loss_db", False),
         ("HAR macro-F1", "har", "macro_f1", True), ("MPJPE mm", "hpe", "mpjpe_mm", False),
         ("PA-MPJPE mm", "hpe", "pa_mpjpe_mm", False), ("blockage F1", "blockage", "f1", True)]
MULTI_TASK_ROWS = {  # name → model overrides of the stage-two recipe (all with the stage-one encoders)
    "LLM baseline (LLM4WM-style: no gating, no task attention)": dict(gating=False, task_attention=False,
                                                                      head_skip=False, blockage_state=False),
    "MMSense (full)": {},
    "w/o gating": dict(gating=False),
    "w/o task attention": dict(task_attention=False),
    "w/o head skip": dict(head_skip=False),  # the heads read the backbone only (this project's addition, off)
    "w/o blockage state": dict(blockage_state=False),  # the paper's one-logit blockage head (this project's, off)
}
TABLE_II = ["MMSense (full)", "w/o gating", "w/o task attention", "w/o head skip", "w/o blockage state"]
FULL_MODEL = dict(body="llm", gating=True, task_attention=True, use_backbone=True, head_skip=True,
                  blockage_state=True)  # the full row


def evaluate_row(ckpts: list[Path], dirs_of, max_samples: int) -> dict[str, float]:
    from finetune.predict import evaluate_checkpoint
    merged: dict[str, float] = {}
    for ckpt, dirs in zip(ckpts, dirs_of):
        metrics, _ = evaluate_checkpoint(ckpt, dirs, max_samples)
        merged.update(metrics)
    return merged


def run_table(ev: EvalConfig) -> dict[str, Any]:
    base = base_config(finetune_checkpoint(ev))
    encoders = str(pretrain_checkpoint(ev))
    roots = resolve_data(ev.data or base.data)
    work = Path(ev.work) / "table"
    tasks = [t for t in base.model.tasks if roots_for(t, roots)]
    rows: dict[str, dict[str, float]] = {}
    for body in BODIES:  # small single-task models, encoders from scratch, one run per task
        ckpts, dirs = [], []
        for t in tasks:
            task_roots = roots_for(t, roots)
            cfg = budgeted(base, ev, work / f"{body}-{t}", data=[str(r) for r in task_roots], encoders=None,
                           freeze_encoders=False, model=dict(tasks=[t], body=body, blockage_state=False))
            ckpts.append(train_or_reuse(cfg))
            dirs.append(split_dirs(task_roots, ev.split))
        rows[f"{body.upper() if body != 'transformer' else 'Transformer'} (single-task)"] = evaluate_row(
            ckpts, dirs, ev.max_eval_samples)
    eval_dirs = split_dirs(roots, ev.split)
    for name, overrides in MULTI_TASK_ROWS.items():
        slug = name.split(" (")[0].replace(" ", "-").replace("/", "").lower()
        cfg = budgeted(base, ev, work / slug, data=[str(r) for r in roots], encoders=encoders,
                       model={**FULL_MODEL, "tasks": tasks, **overrides})
        rows[name] = evaluate_row([train_or_reuse(cfg)], [eval_dirs], ev.max_eval_samples)
    trivial = trivial_row(rows["MMSense (full)"])
    data = {"split": ev.split, "budget": {"epochs": ev.epochs, "steps_per_epoch": ev.steps_per_epoch,
                                          "batch_size": ev.batch_size, "backbone_layers": ev.backbone_layers},
            "encoders": encoders, "recipe": str(finetune_checkpoint(ev)), "table1": rows, "trivial": trivial,
            "table2": {k: rows[k] for k in TABLE_II}}
    md = render(data, tasks)
    write_report(Path(ev.out), "tables", data, md)
    return data


def trivial_row(metrics: dict[str, float]) -> dict[str, float]:
    """Majority class / mean pose of the training labels, on the same split (from the full row's run)."""
    out = {f"{t}/top1": metrics.get(f"{t}/baseline_accuracy") for t in ("beam", "har")}
    out["blockage/accuracy"] = metrics.get("blockage/baseline_accuracy")
    out["hpe/mpjpe_mm"] = metrics.get("hpe/baseline_mpjpe_mm")
    out["hpe/pa_mpjpe_mm"] = metrics.get("hpe/baseline_pa_mpjpe_mm")
    return {k: v for k, v in out.items() if v is not None}


def render(data: dict[str, Any], tasks: list[str]) -> str:
    cols = [c for c in COLUMNS + EXTRA if c[1] in tasks]
    header = ["model"] + [c[0] + (" ↑" if c[3] else " ↓") for c in cols]
    body = [[name] + [m.get(f"{t}/{k}") for _, t, k, _ in cols] for name, m in data["table1"].items()]
    body.append(["trivial (majority class / mean pose)"] + [data["trivial"].get(f"{t}/{k}") for _, t, k, _ in cols])
    b = data["budget"]
    md = (f"## Table I: comparison (split `{data['split']}`)\n\nEvery row trained by `finetune/train.py` for "
          f"{b['epochs']} x {b['steps_per_epoch']} steps of {b['batch_size']} samples; LLM rows use "
          f"{b['backbone_layers']} backbone layers and the stage-one encoders; single-task rows train one model "
          f"per task with encoders from scratch.\n\n" + markdown_table(header, body))
    cols2 = [c for c in COLUMNS if c[1] in tasks]
    body2 = [[name] + [m.get(f"{t}/{k}") for _, t, k, _ in cols2] for name, m in data["table2"].items()]
    md += "\n## Table II: ablations\n\n" + markdown_table(["variant"] + [c[0] for c in cols2], body2)
    return md


assert set(t for _, t, _, _ in COLUMNS) == set(TASKS)
