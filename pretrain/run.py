"""Stage one: ``deepspeed pretrain/run.py`` (or ``python pretrain/run.py``) binds the modality encoders to
the wireless anchor with InfoNCE. With no arguments it trains on the built-in digital twin."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, replace
from pathlib import Path

if __package__ in (None, ""):  # `python pretrain/run.py` from a checkout without the editable install
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from airbind.cli import OptionParser, given as given_options  # noqa: E402
from pretrain.config import PRESETS, PretrainConfig  # noqa: E402
from pretrain.model import ANCHORS, BindingConfig  # noqa: E402

BINDING_FLAGS = {f.name for f in fields(BindingConfig)}


HELP = {
    "epochs": "training epochs", "steps_per_epoch": "optimizer steps per epoch (resampled shards)",
    "batch_size": "global batch over all ranks", "lr": "peak learning rate (AdamW)",
    "weight_decay": "AdamW weight decay", "warmup_steps": "linear warm-up steps before cosine decay",
    "image_size": "camera frames are resized to this square size", "max_points": "points kept per cloud",
    "workers": "DataLoader workers per rank", "shuffle_buffer": "samples in the shuffle buffer",
    "seed": "seed of model init and data order", "ds_config": "DeepSpeed JSON config (batch, lr, ZeRO and "
    "bf16 are set from these options)", "zero_stage": "DeepSpeed ZeRO stage", "bf16": "auto | on | off",
    "checkpoint_every": "steps between checkpoints (0: every epoch end)",
    "resume": "'latest' or a checkpoint directory", "val_max_samples": "validation samples for retrieval, per dataset",
    "log_every": "steps between log lines", "stop_after_steps": "stop after this many steps (as if interrupted)",
}


def build_parser(suppress: bool = False) -> argparse.ArgumentParser:
    """All options with their defaults; with ``suppress`` only the options given appear in the result."""
    p = OptionParser(prog="pretrain/run.py", description=__doc__, suppress=suppress)
    d, b = PretrainConfig(), BindingConfig()
    add = p.option
    add("--preset", None, choices=sorted(PRESETS), help="small: tests; demo: make demo")
    add("--data", d.data, nargs="*", help="shard roots written by shards.write (with train/ and val/); "
        "none = built-in twin")
    add("--out", d.out, help="run folder: checkpoints/, metrics.jsonl, tb/")
    add("--anchor", b.anchor, choices=ANCHORS, help="auto: beam for vehicle scenes, WiFi CSI for human scenes; "
        "joint: beam and image")
    add("--modalities", b.modalities, nargs="+", help="encoders to train")
    add("--d", b.d, type=int, help="encoder token width")
    add("--n-tokens", b.n_tokens, type=int, help="tokens per modality (n_f)")
    add("--embed-dim", b.embed_dim, type=int, help="shared embedding size")
    add("--image-arch", b.image_arch, help="timm model name")
    add("--image-norm", b.image_norm, choices=["group", "batch"], help="normalisation layers of the ResNet")
    add("--image-checkpoint", b.image_checkpoint, help="safetensors weights for the image model (norm=batch)")
    add("--coord-scale", b.coord_scale, type=float, help="metres per unit for point clouds")
    add("--point-bands", b.point_bands, type=int, help="Fourier bands of the radar and LiDAR coordinates "
        "(wavelengths 0.25 m x 2^k; 0: none)")
    add("--wifi-window", b.wifi_window, type=int, help="previous CSI frames the WiFi encoder reads with each "
        "frame (0: the frame alone)")
    add("--wifi-motion", b.wifi_motion, choices=["standardised", "raw"], help="the CSI window's motion divided by "
        "its RMS over the sample, with log10 of the RMS as an extra input channel (standardised), or as it is")
    p.dataclass_options(PretrainConfig, skip=("data", "out", "binding", "progress"), help_texts=HELP,
                        int_fields=("stop_after_steps",))
    add("--no-progress", False, action="store_true", help="no progress bar")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def parse_config(argv: list[str] | None = None) -> PretrainConfig:
    """Options given on the command line override the preset, which overrides the defaults."""
    a = build_parser().parse_args(argv)
    given = given_options(build_parser, argv)
    base = PretrainConfig()
    if a.preset:
        preset = dict(PRESETS[a.preset])
        base = replace(base, **{k: v for k, v in preset.items() if k != "binding"},
                       binding=replace(base.binding, **preset.get("binding", {})))
    binding = replace(base.binding, **{k: getattr(a, k) for k in BINDING_FLAGS if k in given})
    top = {f.name: getattr(a, f.name) for f in fields(PretrainConfig)
           if f.name not in ("binding", "progress") and f.name in given}
    return replace(base, **top, binding=binding, progress=not a.no_progress)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(argv)
    from pretrain.train import train
    result = train(cfg)
    if result["rank"] == 0:
        summary = {"step": result["step"], "checkpoint": result["checkpoint"], **result["metrics"]}
        (Path(cfg.out) / "result.json").write_text(json.dumps(summary, indent=1))
        print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
