"""The binding model: encoders, a projection per modality into a shared space, and a learnable temperature
(CLIP: initialised at 1/0.07, clamped at 100)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from encoders import EncoderConfig, build_encoder

ANCHORS = ("auto", "beam", "wifi", "image", "joint")
LOGIT_SCALE_MAX = math.log(100.0)


@dataclass
class BindingConfig:
    modalities: list[str] = field(default_factory=lambda: ["image", "radar", "lidar", "gps", "past_beam", "beam", "wifi"])
    anchor: str = "auto"     # auto: beam where a sample has it, else WiFi CSI
    d: int = 128             # encoder token width
    n_tokens: int = 8        # tokens per modality (n_f)
    embed_dim: int = 128     # shared space
    image_arch: str = "resnet18"
    image_norm: str = "group"  # group | batch (batch: ImageNet checkpoints; SyncBatchNorm on multi-GPU)
    image_checkpoint: str | None = None
    coord_scale: float = 10.0
    point_bands: int = 0     # Fourier bands of the radar / LiDAR coordinates (0.25 m x 2^k wavelengths; 0: none)
    init_temperature: float = 0.07
    wifi_window: int = 9     # previous CSI frames the WiFi encoder reads with each frame (0: the frame alone)
    wifi_motion: str = "standardised"  # the window's CSI motion divided by its RMS (raw: as it is)
    # what a checkpoint's config written before a field existed was trained with (read by from_dict)
    LEGACY: ClassVar[dict] = {"wifi_window": 0, "point_bands": 0, "wifi_motion": "raw"}

    def encoder_configs(self) -> dict[str, EncoderConfig]:
        out = {}
        for m in self.modalities:
            opts: dict = {}
            if m == "image":
                opts = {"arch": self.image_arch, "norm": self.image_norm, "checkpoint": self.image_checkpoint}
            elif m in ("radar", "lidar"):
                opts = {"coord_scale": self.coord_scale, "bands": self.point_bands}
            elif m == "wifi":
                opts = {"window": self.wifi_window, "motion": self.wifi_motion}
            out[m] = EncoderConfig(m, self.d, self.n_tokens, opts)
        return out


def anchor_pairs(anchor: str, present: dict[str, torch.Tensor], modalities: list[str]) -> list[tuple[str, str, torch.Tensor]]:
    """(modality, anchor modality, valid rows) for every pair the loss uses.

    ``auto`` binds each sample to the anchor its source has (beam for vehicle scenes, WiFi for human
    scenes); ``joint`` binds to the beam and to the image anchors both (the WMLM comparison).
    """
    if anchor not in ANCHORS:
        raise ValueError(f"anchor must be one of {ANCHORS}")
    none = next(iter(present.values())).new_zeros(next(iter(present.values())).shape)
    get = lambda m: present.get(m, none)
    pairs = []
    if anchor == "auto":
        for a in ("beam", "wifi"):
            rows = get(a) if a == "beam" else get(a) & ~get("beam")
            pairs += [(m, a, get(m) & rows) for m in modalities if m not in ("beam", "wifi")]
    else:
        anchors = ("beam", "image") if anchor == "joint" else (anchor,)
        for a in anchors:
            pairs += [(m, a, get(m) & get(a)) for m in modalities if m != a]
    return [(m, a, v) for m, a, v in pairs if m in modalities and a in modalities]


class BindingModel(nn.Module):
    def __init__(self, cfg: BindingConfig):
        super().__init__()
        self.cfg = cfg
        self.encoders = nn.ModuleDict({m: build_encoder(c) for m, c in cfg.encoder_configs().items()})
        self.proj = nn.ModuleDict({m: nn.Linear(cfg.d, cfg.embed_dim) for m in cfg.modalities})
        # shape (1,): DeepSpeed cannot broadcast 0-dim parameters
        self.logit_scale = nn.Parameter(torch.tensor([math.log(1.0 / cfg.init_temperature)]))

    def embed(self, batch: dict, modalities: list[str] | None = None) -> dict[str, torch.Tensor]:
        """L2-normalised shared-space embeddings of the modalities a batch holds (zeros where absent)."""
        out = {}
        for m in modalities or self.cfg.modalities:
            if m not in batch:
                continue
            z = F.normalize(self.proj[m](self.encoders[m](batch).pooled), dim=-1)
            out[m] = z * batch["present"][m][:, None].to(z.dtype)
        return out

    def clamp_temperature(self) -> None:
        """CLIP's clamp: the logit scale never exceeds 100."""
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)

    def forward(self, batch: dict, loss_fn) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean InfoNCE over the (modality, anchor) pairs with at least two valid rows in the global batch."""
        z = self.embed(batch)
        present = {m: batch["present"][m] for m in z}
        scale = self.logit_scale.exp().clamp(max=100.0)
        total, used, logs = 0.0, 0, {}
        for m, a, valid in anchor_pairs(self.cfg.anchor, present, list(z)):
            loss, n = loss_fn(z[m], z[a], valid, scale)
            if n >= 2:
                total = total + loss
                used += 1
                logs[f"loss/{m}->{a}"] = float(loss.detach())
        if used == 0:
            total = sum(p.sum() for p in z.values()) * 0.0 + self.logit_scale * 0.0
        else:
            total = total / used
        logs["temperature"] = float(1.0 / scale.detach())
        return total, logs
