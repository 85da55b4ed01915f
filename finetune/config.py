"""Stage-two configuration (every field is a ``finetune/run.py`` option) and JSON round trip."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, ClassVar

from finetune.backbone import BackboneConfig
from finetune.model import ModelConfig
from pretrain.model import BindingConfig


@dataclass
class FinetuneConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: list[str] = field(default_factory=list)
    out: str = "runs/finetune"
    encoders: str | None = None        # stage-one checkpoint directory (or its run folder: uses latest)
    freeze_encoders: bool = False
    fraction: float = 1.0              # share of training labels used (few-shot fine-tuning)
    epochs: int = 3
    steps_per_epoch: int = 60
    batch_size: int = 16
    lr: float = 3e-4
    head_lr_scale: float = 1.0         # lr multiplier of the task-specific modules (gating, task attention, heads)
    encoder_lr_scale: float = 0.3      # lr multiplier of the stage-one encoders (0 < scale; --freeze-encoders: none)
    head_init: str = "probe"           # probe: heads fitted by a linear probe before the first step (LP-FT) | none
    head_init_samples: int = 8192      # most training samples the probe reads, each once (over all ranks)
    weight_decay: float = 0.01
    warmup_steps: int = 10
    image_size: int = 64
    max_points: int = 256
    workers: int = 1
    shuffle_buffer: int = 300
    seed: int = 0
    scene_shift: float = 0.3           # m: human training scenes (points + pose) moved by up to this in x, y
    resume: str | None = None
    save_optimizer: bool = True        # False: checkpoints without optimizer state (not resumable; evaluation's runs)
    val_max_samples: int = 1000     # per validation dataset (shards.stream.capped_batches)
    log_every: int = 10
    stop_after_steps: int | None = None
    engine: str = "auto"               # auto (DeepSpeed under its launcher, else plain) | plain | deepspeed
    ds_config: str = "ds_config.json"  # DeepSpeed settings (ZeRO stage, optimizer betas); batch/lr come from here
    zero_stage: int = 2
    bf16: str = "auto"                 # auto: bf16 on GPU (DeepSpeed engine), fp32 on CPU; on / off
    progress: bool = True

    # runs written before the probe initialisation existed trained their heads from random weights; runs
    # written before the encoders had their own learning rate trained them at the full one; and before the
    # scene shift, without it
    LEGACY: ClassVar[dict[str, Any]] = {"head_init": "none", "encoder_lr_scale": 1.0, "scene_shift": 0.0}


PRESETS: dict[str, dict[str, Any]] = {
    "small": dict(epochs=1, steps_per_epoch=4, batch_size=8, image_size=32, max_points=64, workers=0,
                  val_max_samples=64, shuffle_buffer=32, warmup_steps=1, head_init_samples=32,
                  model=dict(backbone=dict(layers=2), binding=dict(d=64, embed_dim=64, n_tokens=4))),
    "demo": dict(epochs=3, steps_per_epoch=50, batch_size=16, image_size=48, max_points=128, workers=1,
                 val_max_samples=800, lr=5e-4, model=dict(backbone=dict(layers=4))),
}


def from_dict(cls, data: dict[str, Any]):
    """Rebuild a (nested) dataclass from ``asdict`` output, ignoring unknown keys; fields the data lacks take the
    class's ``LEGACY`` value where it has one (the value before the field existed), else their default."""
    kwargs = {}
    data = {**getattr(cls, "LEGACY", {}), **data}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        sub = {"model": ModelConfig, "binding": BindingConfig, "backbone": BackboneConfig}.get(f.name)
        kwargs[f.name] = from_dict(sub, value) if sub is not None and isinstance(value, dict) else value
    return cls(**kwargs)


def merge(obj, overrides: dict[str, Any]):
    """A copy of dataclass ``obj`` with (nested) ``overrides`` applied."""
    data = asdict(obj)

    def deep(d, o):
        for k, v in o.items():
            if isinstance(v, dict) and isinstance(d.get(k), dict):
                deep(d[k], v)
            else:
                d[k] = v
    deep(data, overrides)
    return from_dict(type(obj), data)


assert is_dataclass(FinetuneConfig)
