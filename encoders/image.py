"""Camera encoder: a ResNet (timm) from scratch or from a user-given checkpoint; the final feature map is
pooled to a grid of ``n_tokens`` cells, each projected to ``d``.

Normalisation defaults to GroupNorm: with BatchNorm the result of a step depends on how the global batch
is split over ranks (a 2-rank run would not equal a 1-rank run); ``norm="batch"`` keeps timm's BatchNorm
(e.g. to load ImageNet weights) and is converted to SyncBatchNorm for multi-GPU runs by the trainer.
"""
from __future__ import annotations

import math

import timm
from timm.layers import GroupNorm
import torch
from torch import nn

from encoders.base import EncoderConfig, EncoderOutput, register, zero_absent

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@register("image")
class ImageEncoder(nn.Module):
    """options: ``arch`` (timm name, default resnet18), ``norm`` (group | batch), ``checkpoint`` (a
    .safetensors state dict of the timm model, e.g. ImageNet weights you have locally, with norm=batch)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        arch = cfg.options.get("arch", "resnet18")
        norm = cfg.options.get("norm", "group")
        kw = {"norm_layer": GroupNorm} if norm == "group" else {}  # timm GroupNorm: 32 groups
        self.backbone = timm.create_model(arch, pretrained=False, num_classes=0, global_pool="", **kw)
        ckpt = cfg.options.get("checkpoint")
        if ckpt:
            from safetensors.torch import load_file
            missing, unexpected = self.backbone.load_state_dict(load_file(ckpt), strict=False)
            if len(missing) > len(self.backbone.state_dict()) // 2:
                raise ValueError(f"{ckpt}: does not look like a {arch} checkpoint ({len(missing)} missing keys)")
        side = max(f for f in range(1, int(math.isqrt(cfg.n_tokens)) + 1) if cfg.n_tokens % f == 0)
        self.grid = (side, cfg.n_tokens // side)  # exactly n_tokens cells, as square as n_tokens allows
        self.pool = nn.AdaptiveAvgPool2d(self.grid)
        self.proj = nn.Linear(self.backbone.num_features, cfg.d)
        self.norm = nn.LayerNorm(cfg.d)
        # pooled from the whole grid, not its mean: where the vehicle is in the frame is what the beam needs
        self.pool_proj = nn.Linear(cfg.n_tokens * cfg.d, cfg.d)
        # on the model's device (a per-call host-to-device copy would also break CUDA-graph capture)
        self.register_buffer("mean", MEAN.clone(), persistent=False)
        self.register_buffer("std", STD.clone(), persistent=False)

    def forward(self, batch: dict) -> EncoderOutput:
        x = batch["image"].float().div(255.0)
        x = (x - self.mean) / self.std
        fmap = self.pool(self.backbone.forward_features(x.contiguous(memory_format=torch.channels_last)))
        tokens = self.norm(self.proj(fmap.flatten(2).transpose(1, 2)))
        return zero_absent(EncoderOutput(tokens, self.pool_proj(tokens.flatten(1))), batch["present"].get("image"))
