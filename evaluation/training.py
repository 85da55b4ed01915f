"""Train a stage-two variant under the evaluation's budget, or reuse the identical run from before."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from airbind.checkpoint import latest, load_state
from evaluation.common import EvalConfig
from finetune.config import FinetuneConfig, from_dict, merge

IGNORED = ("progress", "resume", "save_optimizer")  # fields that do not change what a run computes


def base_config(ckpt: Path) -> FinetuneConfig:
    """The configuration of a stage-two checkpoint: the recipe every row of the tables starts from."""
    return from_dict(FinetuneConfig, json.loads((ckpt / "config.json").read_text())["config"])


def budgeted(base: FinetuneConfig, ev: EvalConfig, out: Path, **overrides: Any) -> FinetuneConfig:
    """``base`` with the evaluation's budget (the same for every row) and the row's own ``overrides``. The
    head-initialising probe reads at most the samples the row trains on. The rows are never resumed, so their
    checkpoints hold no optimizer state (about 100 MB each at the demo's size)."""
    model = overrides.pop("model", {})
    model.setdefault("backbone", {})["layers"] = ev.backbone_layers
    steps = overrides.get("steps_per_epoch", ev.steps_per_epoch) * ev.epochs
    return merge(base, {"epochs": ev.epochs, "steps_per_epoch": ev.steps_per_epoch, "batch_size": ev.batch_size,
                        "head_init_samples": min(base.head_init_samples, steps * ev.batch_size),
                        "val_max_samples": ev.max_eval_samples, "seed": ev.seed, "out": str(out),
                        "resume": None, "save_optimizer": False, "progress": ev.progress, "stop_after_steps": None,
                        "model": model, **overrides})


def same_recipe(a: dict, b: dict) -> bool:
    strip = lambda d: {k: v for k, v in d.items() if k not in IGNORED}  # noqa: E731
    return strip(a) == strip(b)


def train_or_reuse(cfg: FinetuneConfig) -> Path:
    """The final checkpoint of ``cfg``: reused when ``cfg.out`` already holds a finished run of the same
    recipe (so subcommands run after ``all`` retrain nothing); otherwise the folder is cleared and trained."""
    from finetune.train import train
    out = Path(cfg.out)
    ckpt = latest(out / "checkpoints")
    if ckpt is not None:
        saved = json.loads((ckpt / "config.json").read_text())["config"]
        done = load_state(ckpt / "trainer_state").get("step") == cfg.epochs * cfg.steps_per_epoch
        if same_recipe(saved, json.loads(json.dumps(asdict(cfg), default=str))) and done:
            return ckpt
    if out.exists():
        shutil.rmtree(out)  # the evaluation's own work folder: a run of another recipe or an unfinished one
    result = train(cfg)
    return Path(result["checkpoint"])
