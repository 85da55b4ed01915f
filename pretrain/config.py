"""Stage-one configuration (every field is a ``pretrain/run.py`` option)."""
from __future__ import annotations

from dataclasses import dataclass, field

from pretrain.model import BindingConfig


@dataclass
class PretrainConfig:
    data: list[str] = field(default_factory=list)   # shard roots with train/ and val/; empty = built-in twin
    out: str = "runs/pretrain"
    binding: BindingConfig = field(default_factory=BindingConfig)
    epochs: int = 4
    steps_per_epoch: int = 60
    batch_size: int = 32            # global batch (all ranks); each rank gets batch_size / world_size
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_steps: int = 20
    image_size: int = 64
    max_points: int = 256
    workers: int = 2                # DataLoader workers per rank
    shuffle_buffer: int = 300
    seed: int = 0
    ds_config: str = "ds_config.json"
    zero_stage: int = 2
    bf16: str = "auto"              # auto: bf16 on GPU, fp32 on CPU; on / off
    checkpoint_every: int = 0       # steps between checkpoints; 0 = at the end of every epoch
    resume: str | None = None       # "latest" or a checkpoint directory
    val_max_samples: int = 1500     # per validation dataset (shards.stream.capped_batches)
    log_every: int = 10
    stop_after_steps: int | None = None  # stop early (as if interrupted) after this many steps
    progress: bool = True


PRESETS: dict[str, dict] = {
    "small": dict(epochs=2, steps_per_epoch=6, batch_size=16, image_size=32, max_points=96, workers=0,
                  val_max_samples=160, shuffle_buffer=40, warmup_steps=2,
                  binding=dict(d=64, embed_dim=64, n_tokens=4)),
    "demo": dict(epochs=4, steps_per_epoch=50, batch_size=32, image_size=48, max_points=128, workers=1,
                 val_max_samples=600, shuffle_buffer=200, warmup_steps=10, lr=1e-3),
}
