"""Point Transformer encoder for radar and LiDAR clouds (Zhao et al., ICCV 2021).

Vector self-attention over k-nearest-neighbour groups (Eq. 3 of the paper: y_i = sum_j softmax(gamma(
phi(x_i) - psi(x_j) + delta_ij)) * (alpha(x_j) + delta_ij), delta_ij = theta(p_i - p_j)), with transition-down
stages (farthest point sampling + kNN max pooling). Padding and empty clouds are handled with masks: padded
points are never neighbours, samples with no point give zero tokens.

Relative offsets p_i - p_j reach theta (and the transition-down MLP) twice: in ``coord_scale`` units and divided
by their RMS over the cloud's valid neighbourhoods (as PointNeXt divides them by the query radius, Qian et al.,
NeurIPS 2022). With only the first, a 1.7 m person at ``coord_scale`` 10 m gives offsets of ~0.005 and the
encoder could not even fit 128 human radar frames; the second puts local shape at unit scale for any scene.
For the same reason the point embedding reads the coordinates twice, in ``coord_scale`` units (where the cloud
is) and standardised over the cloud (its shape: centroid removed, divided by its RMS radius), since one encoder
serves street scenes tens of metres wide and a person within 2 m. With ``bands`` > 0 it also reads Fourier
features of the coordinates in metres (wavelengths ``min_wavelength`` x 2^k), which resolve a person standing
0.3 m further away (0.03 at ``coord_scale`` 10 m). Off by default (``BindingConfig.point_bands`` 0): with 8
bands, stage two's HAR and blockage read lower on the demo twin (docs/measurements.md, 2026-12-05).
"""
from __future__ import annotations

import torch
from torch import nn

from encoders.base import EncoderConfig, EncoderOutput, fourier_features, register, zero_absent
from encoders.fps import farthest_point_sampling


def knn(query: torch.Tensor, ref: torch.Tensor, ref_mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (B, M, k) of the k nearest valid reference points, and which of them are valid.

    Squared distances as ((dx² + dy²) + dz²) of the coordinate differences, the arithmetic of
    :func:`encoders.fps.fps_reference`: elementwise and exactly rounded, so an exported program (ONNX Runtime)
    computes the same bits and picks the same neighbours. The matmul form |q|² + |r|² - 2 q·r cancels
    catastrophically for near points, and two backends' matmuls round differently: on a twin LiDAR cloud a near
    tie at the k-th neighbour flipped, and the exported beam logits differed from eager by 2.4e-3.
    (``torch.cdist`` has no ONNX export.)"""
    d = None
    for c in range(3):  # one (B, M, N) difference at a time: a third of the memory of all three at once
        dc = query[:, :, c, None] - ref[:, None, :, c]
        d = dc * dc if d is None else d + dc * dc
    d = d.masked_fill(~ref_mask[:, None, :], float("inf"))
    k = min(k, ref.shape[1])
    dist, idx = d.topk(k, dim=-1, largest=False)
    return idx, torch.isfinite(dist)


def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, C), idx (B, M, k) → (B, M, k, C)."""
    b, m, k = idx.shape
    flat = idx.reshape(b, m * k, 1).expand(-1, -1, x.shape[-1])
    return x.gather(1, flat).reshape(b, m, k, x.shape[-1])


def normalise_offsets(rel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """rel (B, M, k, 3) → (B, M, k, 6): the offsets as given (``coord_scale`` units) and divided by the cloud's
    RMS offset length over its valid neighbours (a constant, no gradient; all-coincident points stay zero)."""
    sq = (rel.pow(2).sum(-1) * valid).sum((1, 2))
    rms = (sq / valid.sum((1, 2)).clamp(min=1)).sqrt().detach()
    return torch.cat([rel, rel / rms.clamp(min=1e-6)[:, None, None, None]], -1)


def standardise(p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """p (B, N, 3) → the points minus the cloud's (valid) centroid, divided by their RMS distance to it."""
    m = mask[..., None].float()
    count = m.sum(1, keepdim=True).clamp(min=1)
    centred = (p - (p * m).sum(1, keepdim=True) / count) * m
    rms = (centred.pow(2).sum(-1, keepdim=True).sum(1, keepdim=True) / count).sqrt()
    return centred / rms.clamp(min=1e-6)


class PointTransformerLayer(nn.Module):
    """Vector attention; as in the reference implementation, one attention weight is shared by a group of
    ``share`` channels (gamma outputs dim / share weights), which keeps the neighbourhood MLPs cheap."""

    def __init__(self, dim: int, k: int, share: int = 4):
        super().__init__()
        self.k, self.share = k, share
        self.phi, self.psi, self.alpha = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.theta = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, dim))
        self.gamma = nn.Sequential(nn.Linear(dim, dim // share), nn.ReLU(), nn.Linear(dim // share, dim // share))
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor, p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        idx, valid = knn(p, p, mask, self.k)
        delta = self.theta(normalise_offsets(p[:, :, None] - gather(p, idx), valid & mask[:, :, None]))
        logits = self.gamma(self.phi(x)[:, :, None] - gather(self.psi(x), idx) + delta)
        logits = logits.masked_fill(~valid[..., None], float("-inf"))
        w = torch.softmax(logits, dim=2).nan_to_num(0.0)  # rows with no valid neighbour → 0
        values = gather(self.alpha(x), idx) + delta  # (B, N, k, dim)
        b, n, k, dim = values.shape
        y = (w[..., None] * values.view(b, n, k, dim // self.share, self.share)).sum(2).reshape(b, n, dim)
        return (x + self.out(y)) * mask[..., None]


class TransitionDown(nn.Module):
    def __init__(self, d_in: int, d_out: int, k: int):
        super().__init__()
        self.k = k
        self.mlp = nn.Sequential(nn.Linear(d_in + 6, d_out), nn.LayerNorm(d_out), nn.ReLU())

    def forward(self, x, p, mask, m: int):
        idx, picked = farthest_point_sampling(p, mask, m)
        centres = p.gather(1, idx[..., None].expand(-1, -1, 3))
        nb, valid = knn(centres, p, mask, self.k)
        rel = normalise_offsets(gather(p, nb) - centres[:, :, None], valid & picked[..., None])
        feats = self.mlp(torch.cat([gather(x, nb), rel], -1))
        feats = feats.masked_fill(~valid[..., None], float("-inf")).amax(2)
        feats = torch.where(picked[..., None], feats, torch.zeros_like(feats))
        return feats, centres, picked


@register("radar", "lidar")
class PointTransformerEncoder(nn.Module):
    """options: ``in_channels`` (5 radar, 4 LiDAR), ``coord_scale`` (m), ``feature_scale`` (per extra
    channel), ``k`` (neighbours), ``mid_points`` (after the first down-sampling), ``bands`` and
    ``min_wavelength`` (m) of the coordinates' Fourier features (0 bands: none)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.modality = cfg.modality
        o = cfg.options
        self.in_channels = o.get("in_channels", 5 if cfg.modality == "radar" else 4)
        self.coord_scale = float(o.get("coord_scale", 10.0))
        default_feat = [5.0, 50.0] if cfg.modality == "radar" else [1.0]
        self.register_buffer("feature_scale", torch.tensor(o.get("feature_scale", default_feat), dtype=torch.float32))
        k, d = int(o.get("k", 8)), cfg.d
        self.mid_points, self.n_tokens = int(o.get("mid_points", 64)), cfg.n_tokens
        bands = int(o.get("bands", 0))
        wavelengths = float(o.get("min_wavelength", 0.25)) * 2.0 ** torch.arange(bands, dtype=torch.float32)
        self.register_buffer("freqs", 2 * torch.pi / wavelengths, persistent=False)  # from the config
        self.embed = nn.Sequential(nn.Linear(self.in_channels + 3 + 6 * bands, d // 2), nn.ReLU(),
                                   nn.Linear(d // 2, d // 2))
        self.block1 = PointTransformerLayer(d // 2, k)
        self.down1 = TransitionDown(d // 2, d, k)
        self.block2 = PointTransformerLayer(d, k)
        self.down2 = TransitionDown(d, d, k)
        self.block3 = PointTransformerLayer(d, min(k, cfg.n_tokens))
        self.norm = nn.LayerNorm(d)
        self.pool_proj = nn.Linear(2 * d, d)  # masked mean and max of the tokens

    def forward(self, batch: dict) -> EncoderOutput:
        pts, mask = batch[self.modality].float(), batch[self.modality + "_mask"]
        p = pts[..., :3] / self.coord_scale
        extra = pts[..., 3:self.in_channels] / self.feature_scale[: self.in_channels - 3]
        parts = [p, standardise(p, mask), extra]
        if len(self.freqs):
            parts.append(fourier_features(pts[..., :3], self.freqs))
        x = self.embed(torch.cat(parts, -1)) * mask[..., None]
        x = self.block1(x, p, mask)
        x, p, mask = self.down1(x, p, mask, self.mid_points)
        x = self.block2(x, p, mask)
        x, p, mask = self.down2(x, p, mask, self.n_tokens)
        tokens = self.norm(self.block3(x, p, mask)) * mask[..., None]
        count = mask.sum(1, keepdim=True).clamp(min=1)
        top = tokens.masked_fill(~mask[..., None], float("-inf")).amax(1)
        top = torch.where(mask.any(1, keepdim=True), top, torch.zeros_like(top))
        pooled = self.pool_proj(torch.cat([tokens.sum(1) / count, top], -1))
        present = batch["present"].get(self.modality)
        has_points = mask.any(1)
        present = has_points if present is None else present & has_points
        return zero_absent(EncoderOutput(tokens, pooled), present)
