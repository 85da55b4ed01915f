"""Small single-task baselines for the comparison table (MMSense Table I rows MLP / CNN / Transformer): the
task's modality tokens, concatenated (absent modalities zero and masked), through a small body instead of
gating + fusion + the GPT-style backbone."""
from __future__ import annotations

import torch
from torch import nn

BODIES = ("mlp", "cnn", "transformer")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, L, C), mask (B, L) bool → (B, C), mean over the unmasked positions."""
    m = mask[..., None].to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class SmallBody(nn.Module):
    """``kind``: mlp (flattened tokens → 2-layer MLP), cnn (two 1-D convolutions along the token sequence,
    masked mean), transformer (2 encoder layers with a modality embedding, masked mean). Output width
    ``width``."""

    def __init__(self, kind: str, d: int, n_modalities: int, n_tokens: int, width: int = 256):
        super().__init__()
        if kind not in BODIES:
            raise ValueError(f"unknown body {kind!r}; choose from {BODIES}")
        self.kind, self.width = kind, width
        seq = n_modalities * n_tokens
        if kind == "mlp":
            self.net = nn.Sequential(nn.Linear(seq * d, width), nn.GELU(), nn.Linear(width, width), nn.GELU())
        elif kind == "cnn":
            self.net = nn.Sequential(nn.Conv1d(d, width, 3, padding=1), nn.GELU(),
                                     nn.Conv1d(width, width, 3, padding=1), nn.GELU())
        else:
            self.modality_embed = nn.Parameter(torch.randn(n_modalities, 1, d) * 0.02)
            layer = nn.TransformerEncoderLayer(d, 4, dim_feedforward=2 * d, dropout=0.0, batch_first=True,
                                               norm_first=True)
            self.net = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.out = nn.Linear(d, width)

    def forward(self, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """tokens (B, M, n_f, d) (zero where absent), present (B, M) → (B, width)."""
        b, m, n, d = tokens.shape
        mask = present[:, :, None].expand(b, m, n).reshape(b, m * n)
        if self.kind == "mlp":
            return self.net(tokens.reshape(b, -1))
        if self.kind == "cnn":
            return masked_mean(self.net(tokens.reshape(b, m * n, d).transpose(1, 2)).transpose(1, 2), mask)
        x = (tokens + self.modality_embed[None]).reshape(b, m * n, d)
        return self.out(masked_mean(self.net(x, src_key_padding_mask=~mask), mask))
