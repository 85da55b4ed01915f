"""Stage two: ``python finetune/run.py --tasks all`` (or ``deepspeed finetune/run.py --tasks all``) fine-tunes
the gated-fusion + GPT-style backbone model on beam prediction, HAR, pose estimation and blockage prediction.
With no other arguments it uses the built-in twin and SmolLM2-135M-Instruct with LoRA."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from airbind.cli import OptionParser, given as given_options  # noqa: E402
from finetune.config import PRESETS, FinetuneConfig, merge  # noqa: E402
from finetune.model import TASKS  # noqa: E402

TOP_HELP = {
    "epochs": "training epochs", "steps_per_epoch": "optimizer steps per epoch", "batch_size": "samples per step",
    "lr": "peak learning rate (AdamW)",
    "head_lr_scale": "learning-rate multiplier of the task-specific modules (gating, task attention, heads), which "
                     "start from scratch while the encoders and the backbone start trained",
    "encoder_lr_scale": "learning-rate multiplier of the modality encoders (trained at stage one), so that "
                        "fine-tuning moves them less than the modules that start at stage two (LP-FT)",
    "head_init": "probe: before the first step, fit each task head by a linear probe on its inputs over "
                 "--head-init-samples training samples (LP-FT); none: heads start at random",
    "head_init_samples": "most training samples the head-initialising probe reads (each at most once)",
    "weight_decay": "AdamW weight decay", "warmup_steps": "linear warm-up steps",
    "image_size": "camera frames resized to this square size", "max_points": "points kept per cloud",
    "workers": "DataLoader workers", "shuffle_buffer": "samples in the shuffle buffer", "seed": "random seed",
    "resume": "'latest' or a checkpoint directory", "val_max_samples": "validation samples per epoch, per dataset",
    "log_every": "steps between log lines", "stop_after_steps": "stop after this many steps (as if interrupted)",
    "scene_shift": "metres: each human training sample's radar and LiDAR clouds and pose label are moved by one "
                   "random x, y offset up to this (finetune/augment.py); 0: none",
    "fraction": "share of training labels used (0.1 = few-shot fine-tuning on 10 %%)",
    "encoders": "stage-one checkpoint (or run folder) to initialise the encoders; none = from scratch",
    "engine": "auto: DeepSpeed when started by its launcher, else the plain loop; plain; deepspeed",
    "ds_config": "DeepSpeed JSON (ZeRO, AdamW betas/eps, clipping; both engines read the optimizer settings)",
    "zero_stage": "ZeRO stage (DeepSpeed engine)", "bf16": "auto (on GPU under DeepSpeed) / on / off",
}


def build_parser(suppress: bool = False) -> argparse.ArgumentParser:
    p = OptionParser(prog="finetune/run.py", description=__doc__, suppress=suppress)
    d = FinetuneConfig()
    add = p.option
    add("--preset", None, choices=sorted(PRESETS), help="small: tests; demo: make demo")
    add("--tasks", ["all"], nargs="+", help=f"all or some of {list(TASKS)}")
    add("--data", d.data, nargs="*", help="shard roots written by shards.write; none = built-in twin")
    add("--out", d.out, help="run folder: checkpoints/, metrics.jsonl, tb/")
    add("--backbone", d.model.backbone.name, help="smollm2-135m (packaged), a Hugging Face id or a local path")
    add("--backbone-layers", d.model.backbone.layers, type=int, help="keep only the first K decoder layers")
    add("--tune", d.model.backbone.tune, choices=["freeze", "lora", "full"], help="how the backbone is trained")
    add("--lora-rank", d.model.backbone.lora_rank, type=int, help="LoRA rank")
    add("--lora-alpha", d.model.backbone.lora_alpha, type=int, help="LoRA alpha")
    add("--task-layers", d.model.task_layers, type=int, nargs="+", help="hidden-state indices read by the task "
        "attention (default: three evenly spaced)")
    add("--no-gating", False, action="store_true", help="ablation: equal modality weights (no Eq. 8)")
    add("--no-task-attention", False, action="store_true", help="ablation: final hidden state only (no Eqs. 12-13)")
    add("--no-backbone", False, action="store_true", help="ablation: fusion straight to the heads")
    add("--no-feature-norm", False, action="store_true", help="feed the encoder outputs to gating and fusion "
        "without standardising them (finetune/modules.py FeatureStandardizer)")
    add("--body", d.model.body, choices=["llm", "mlp", "cnn", "transformer"], help="llm: the full model; mlp / cnn "
        "/ transformer: a small baseline on the task's modality tokens (no gating, fusion or backbone)")
    add("--modality-dropout", d.model.modality_dropout, type=float, help="training only: hide each present input "
        "modality of a (sample, task) with this probability (ModDrop), so that no task leans on one modality")
    add("--pose-anchor", d.model.pose_anchor, choices=["points", "none"], help="points: the pose head predicts "
        "the pelvis x, y relative to the median of the LiDAR (else radar) points; none: from the features alone")
    add("--blockage-beams", d.model.blockage_beams, choices=["current", "past"], help="current: the blockage task "
        "reads frame t's beam powers besides the previous T (the observations up to the frame before the predicted "
        "ones); past: only the previous T (past_beam.npy)")
    add("--no-head-skip", False, action="store_true", help="the task heads read the task attention's readout "
        "only, not also the gated pooled embedding sum_m w_m p_m (Eq. 8's weights on the encoders' pooled outputs)")
    add("--no-blockage-state", False, action="store_true", help="the blockage head outputs the label's log-odds "
        "alone (trained with the positives weighted) instead of frame t's state and the label given it, trained "
        "on both where the shards record frame t's state")
    add("--no-blockage-joint", False, action="store_true", help="the state blockage head's loss where the state is "
        "recorded: the label under the mixture plus the state (runs before 2026-12-08), not the joint likelihood "
        "-log p(state) - log p(label | state)")
    add("--freeze-encoders", False, action="store_true", help="keep the stage-one encoders fixed")
    p.dataclass_options(FinetuneConfig, skip=("model", "data", "out", "freeze_encoders", "progress", "save_optimizer"),
                        help_texts=TOP_HELP, int_fields=("stop_after_steps",))
    add("--no-progress", False, action="store_true", help="no progress bar")
    add("--no-optimizer-state", False, action="store_true", help="checkpoints without the optimizer state (about "
        "two thirds of their size); such a run cannot be resumed")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # launcher's
    return p


def parse_config(argv: list[str] | None = None) -> FinetuneConfig:
    a = build_parser().parse_args(argv)
    given = given_options(build_parser, argv)
    cfg = FinetuneConfig()
    if a.preset:
        cfg = merge(cfg, PRESETS[a.preset])
    top = {f.name: getattr(a, f.name) for f in fields(FinetuneConfig)
           if f.name not in ("model", "progress") and f.name in given}
    if "no_optimizer_state" in given:
        top["save_optimizer"] = not a.no_optimizer_state
    model: dict = {}
    if "tasks" in given:
        model["tasks"] = list(TASKS) if a.tasks == ["all"] else a.tasks
    backbone = {k: getattr(a, src) for k, src in (("name", "backbone"), ("layers", "backbone_layers"), ("tune", "tune"),
                                                  ("lora_rank", "lora_rank"), ("lora_alpha", "lora_alpha")) if src in given}
    if backbone:
        model["backbone"] = backbone
    for flag, key in (("no_gating", "gating"), ("no_task_attention", "task_attention"), ("no_backbone", "use_backbone"),
                      ("no_feature_norm", "feature_norm"), ("no_head_skip", "head_skip"),
                      ("no_blockage_state", "blockage_state"), ("no_blockage_joint", "blockage_joint")):
        if flag in given:
            model[key] = not getattr(a, flag)
    for key in ("body", "task_layers", "modality_dropout", "pose_anchor", "blockage_beams"):  # same name on both
        if key in given:
            model[key] = getattr(a, key)
    unknown = [t for t in model.get("tasks", []) if t not in TASKS]
    if unknown:
        raise SystemExit(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
    return merge(cfg, {**top, **({"model": model} if model else {}), "progress": not a.no_progress})


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    from finetune.train import train
    result = train(cfg)
    if result["rank"] != 0:
        return 0
    summary = {"step": result["step"], "checkpoint": result["checkpoint"], **result["metrics"]}
    (Path(cfg.out) / "result.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
