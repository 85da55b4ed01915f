"""Encoder interface and registry.

Every encoder maps its modality in a collated batch (``shards.stream.collate``) to ``n_f`` tokens of width
``d`` (the token sequence that stage two gates and fuses, Eqs. 7-9) and a pooled embedding (what stage one
projects into the shared space). Rows whose modality is absent come out as zeros; callers mask them with
``batch["present"][modality]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


@dataclass
class EncoderConfig:
    """What every encoder needs; modality-specific options go in ``options``."""

    modality: str
    d: int = 128
    n_tokens: int = 8
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class EncoderOutput:
    tokens: torch.Tensor   # (B, n_f, d)
    pooled: torch.Tensor   # (B, d)


_REGISTRY: dict[str, Callable[[EncoderConfig], nn.Module]] = {}


def register(*names: str):
    def wrap(cls):
        for n in names:
            _REGISTRY[n] = cls
        return cls
    return wrap


def registered() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def build_encoder(cfg: EncoderConfig) -> nn.Module:
    """The encoder registered for ``cfg.modality``."""
    _load_all()
    if cfg.modality not in _REGISTRY:
        raise KeyError(f"no encoder for modality {cfg.modality!r}; have {sorted(_REGISTRY)}")
    return _REGISTRY[cfg.modality](cfg)


def _load_all() -> None:
    from encoders import image, points, signals  # noqa: F401  (registration side effects)


def fourier_features(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """x (..., c) → (..., 2 c F): sin then cos of every coordinate times each angular frequency (Tancik et al.,
    NeurIPS 2020: a linear layer can then resolve changes far below the input's own scale)."""
    ang = x[..., None] * freqs
    return torch.cat([ang.sin().flatten(-2), ang.cos().flatten(-2)], -1)


def zero_absent(out: EncoderOutput, present: torch.Tensor | None) -> EncoderOutput:
    """Zero the tokens and pooled vector of rows whose modality is absent."""
    if present is None:
        return out
    m = present.to(out.pooled.dtype)
    return EncoderOutput(out.tokens * m[:, None, None], out.pooled * m[:, None])
