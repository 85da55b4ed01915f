"""Shared pieces of the evaluation: its budget, locating checkpoints, data roots per task, report writing."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from airbind.checkpoint import find_checkpoint

VEHICLE_TASKS, HUMAN_TASKS = ("beam", "blockage"), ("har", "hpe")


@dataclass
class EvalConfig:
    """What ``evaluation/run.py`` evaluates and the training budget every trained row gets."""
    pretrain: str | None = None     # stage-one run/checkpoint; default: newest of runs/demo/pretrain, runs/pretrain
    finetune: str | None = None     # stage-two run/checkpoint; default: newest of runs/demo/finetune, runs/finetune
    data: list[str] = field(default_factory=list)   # shard roots; empty = built-in twin
    out: str = "reports"
    work: str = "runs/evaluation"   # training runs of the table, few-shot and real-data parts
    split: str = "val"              # split the table reports on (val: held-out sequences / subjects)
    epochs: int = 1                 # budget of every trained row (same for all rows; CPU-sized, raise on a GPU)
    steps_per_epoch: int = 30
    batch_size: int = 16
    backbone_layers: int = 4
    max_eval_samples: int = 300
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    shots: list[int] = field(default_factory=lambda: [1, 5])
    real_steps: int = 150           # GPS-only model on real scenario 5 (cheap: more steps than the other rows)
    seed: int = 0
    progress: bool = True


def find_run(given: str | None, candidates: tuple[str, ...], what: str) -> Path:
    """A checkpoint directory: ``given`` (checkpoint or run folder) or the newest of the candidate runs."""
    paths = [Path(given)] if given else [Path(c) for c in candidates]
    found = []
    for p in paths:
        ckpt = find_checkpoint(p)
        if ckpt is not None:
            found.append(ckpt)
    if not found:
        hint = given or " or ".join(candidates)
        raise FileNotFoundError(f"no {what} checkpoint in {hint}; train one first (make demo) or pass its path")
    return max(found, key=lambda c: c.stat().st_mtime)


def pretrain_checkpoint(cfg: EvalConfig) -> Path:
    return find_run(cfg.pretrain, ("runs/demo/pretrain", "runs/pretrain"), "stage-one")


def finetune_checkpoint(cfg: EvalConfig) -> Path:
    return find_run(cfg.finetune, ("runs/demo/finetune", "runs/finetune"), "stage-two")


def source_of(root: Path) -> str:
    """deepsense | mmfi: the reader that wrote a shard root (from its report.json)."""
    report = root / "report.json"
    if not report.is_file():
        raise FileNotFoundError(f"{report}: missing; expected a folder written by shards.write")
    return json.loads(report.read_text())["source"]


def roots_for(task: str, roots: list[Path]) -> list[Path]:
    """The shard roots holding labels of ``task`` (vehicle tasks: DeepSense roots; human tasks: MM-Fi)."""
    want = "deepsense" if task in VEHICLE_TASKS else "mmfi"
    return [r for r in roots if source_of(r) == want]


def clean(value: Any) -> Any:
    """JSON-safe numbers (NaN → None), recursively."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(out: Path, name: str, data: dict[str, Any], markdown: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(clean(data), indent=1))
    (out / f"{name}.md").write_text(markdown)


def fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def config_dict(cfg: EvalConfig) -> dict[str, Any]:
    return asdict(cfg)
