"""``python evaluation/run.py [all|table|zeroshot|fewshot|real|plots]``: evaluates the latest stage-one and
stage-two checkpoints (of ``make demo`` or of runs/pretrain, runs/finetune) on the built-in twin, prints the
tables and writes ``reports/`` (Markdown, JSON, PNG). Every trained row of the tables gets the same budget;
runs of an identical recipe under ``--work`` are reused, so a later subcommand retrains nothing."""
from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from airbind.cli import OptionParser  # noqa: E402
from evaluation.common import EvalConfig  # noqa: E402

PARTS = ("table", "zeroshot", "fewshot", "real", "plots")
HELP = {
    "pretrain": "stage-one checkpoint or run folder (default: newest of runs/demo/pretrain, runs/pretrain)",
    "finetune": "stage-two checkpoint or run folder; its recipe is the one every table row starts from "
                "(default: newest of runs/demo/finetune, runs/finetune)",
    "out": "report folder", "work": "folder of the evaluation's own training runs",
    "split": "split the tables and probes report on", "epochs": "training epochs of every trained row",
    "steps_per_epoch": "optimizer steps per epoch of every trained row", "batch_size": "samples per step",
    "backbone_layers": "backbone layers kept in the LLM rows",
    "max_eval_samples": "samples evaluated per split, per dataset",
    "seed": "random seed", "real_steps": "training steps of the GPS-only models on real scenario 5",
}


def build_parser() -> OptionParser:
    p = OptionParser(prog="evaluation/run.py", description=__doc__)
    p.add_argument("part", nargs="?", default="all", choices=("all",) + PARTS, help="what to evaluate")
    p.option("--data", [], nargs="*", help="shard roots written by shards.write; none = the built-in twin")
    p.option("--fractions", EvalConfig().fractions, type=float, nargs="+", help="label shares of the probes")
    p.option("--shots", EvalConfig().shots, type=int, nargs="+", help="labels per class of the k-shot probes")
    p.option("--scenario5", None, help="real DeepSense scenario 5 folder (default: ../shared/data/deepsense/scenario5)")
    p.option("--no-finetune-fraction", False, action="store_true", help="fewshot: skip the 10 %% fine-tuning run")
    p.dataclass_options(EvalConfig, skip=("data", "fractions", "shots", "progress", "pretrain", "finetune"),
                        help_texts=HELP)
    p.option("--pretrain", None, help=HELP["pretrain"])
    p.option("--finetune", None, help=HELP["finetune"])
    p.option("--no-progress", False, action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    ev = EvalConfig(**{f.name: getattr(a, f.name) for f in fields(EvalConfig) if f.name != "progress"},
                    progress=not a.no_progress)
    from airbind.paths import configure_tool_caches
    configure_tool_caches()
    parts = PARTS if a.part == "all" else (a.part,)
    out = Path(ev.out)
    for part in parts:
        print(f"== {part}", flush=True)
        if part == "table":
            from evaluation.table import run_table
            run_table(ev)
        elif part == "zeroshot":
            from evaluation.zeroshot import run_zeroshot
            run_zeroshot(ev)
        elif part == "fewshot":
            from evaluation.fewshot import run_fewshot
            run_fewshot(ev, finetune_fraction=not a.no_finetune_fraction)
        elif part == "real":
            from evaluation.real import run_real
            run_real(ev, Path(a.scenario5) if a.scenario5 else None)
        else:
            from evaluation.plots import run_plots
            for path in run_plots(ev):
                print(path)
            continue
        name = {"table": "tables", "real": "real_scenario5"}.get(part, part)
        if (out / f"{name}.md").is_file():
            print((out / f"{name}.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
