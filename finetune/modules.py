"""The stage-two building blocks, each citing its equation of the MMSense paper."""
from __future__ import annotations

import torch
from torch import nn

from encoders.base import EncoderOutput


class FeatureStandardizer(nn.Module):
    """Per-channel standardisation of one modality's encoder outputs (tokens and pooled vector, each with its
    own mean and spread over the rows that have the modality), before gating and fusion (Eqs. 8-9).

    Contrastively trained embeddings fill a narrow cone (the "modality gap" of Liang et al., NeurIPS 2022): on
    the demo's stage-one encoders the mean pooled image feature of human frames has norm 18 while frames
    deviate from it by 0.55, so gating and fusion see nearly the same input for every sample. The statistics
    come from the first training batch holding the modality (summed over ranks by the caller, so every rank
    keeps the same buffers) and stay fixed; before that the map is the identity. A channel's spread is floored
    at a tenth of the modality's typical one. Absent rows stay zero."""

    def __init__(self, d: int):
        super().__init__()
        self.d = d
        self.register_buffer("ready", torch.tensor(False))
        self.register_buffer("mean", torch.zeros(2, d))  # row 0: tokens, row 1: pooled
        self.register_buffer("std", torch.ones(2, d))

    @property
    def width(self) -> int:
        """Length of the :meth:`moments` vector."""
        return 2 + 4 * self.d

    def moments(self, out: EncoderOutput, present: torch.Tensor) -> torch.Tensor:
        """[rows, tokens, Σ tokens, Σ tokens², Σ pooled, Σ pooled²] over the present rows (2 + 4 d values), in
        float64: the spread is Σx²/n - mean², and with means far larger than the spreads (the cone) float32 sums
        lose the spread to rounding, differently for each way of splitting the batch over ranks."""
        m = present.double()
        t, p = out.tokens.detach().double(), out.pooled.detach().double()
        tok = (t * m[:, None, None]).flatten(0, 1)
        pool = p * m[:, None]
        n = m.sum()[None]
        return torch.cat([n, n * t.shape[1], tok.sum(0), tok.pow(2).sum(0), pool.sum(0), pool.pow(2).sum(0)])

    @torch.no_grad()
    def observe(self, stats: torch.Tensor) -> None:
        """Fix the statistics from :meth:`moments` (summed over ranks) unless they are already set."""
        if bool(self.ready) or float(stats[0]) == 0:
            return
        sums = stats[2:].view(4, self.d)
        for i, n in enumerate((stats[1], stats[0])):  # tokens, pooled
            mean = sums[2 * i] / n
            var = (sums[2 * i + 1] / n - mean.pow(2)).clamp(min=0)
            # a channel that hardly varies is scaled up at most 10 x relative to the typical one: dividing by a
            # near-zero spread would blow up rounding noise (and make ranks disagree on it)
            floor = (0.1 * var.mean().sqrt()).clamp(min=1e-6)
            self.mean[i].copy_(mean)
            self.std[i].copy_(var.sqrt().clamp(min=floor))
        self.ready.fill_(True)

    def forward(self, out: EncoderOutput, present: torch.Tensor) -> EncoderOutput:
        m = present.to(out.pooled.dtype)
        mean, std = self.mean.to(out.pooled.dtype), self.std.to(out.pooled.dtype)
        return EncoderOutput((out.tokens - mean[0]) / std[0] * m[:, None, None], (out.pooled - mean[1]) / std[1] * m[:, None])


class ModalityGating(nn.Module):
    """Eq. 8, modality gating: w_m = softmax_m(v^T tanh(W LN(p_m))) over the modalities a sample has, from
    their pooled features p_m; an absent modality gets weight 0 and the others renormalise. With
    ``enabled=False`` (ablation) present modalities get equal weights.

    The gate reads p_m through a stop-gradient and a LayerNorm, so only its own weights decide the
    weights. Otherwise the encoders, shared by all tasks and trained at the backbone's rate, move the
    logits far faster than the gate does. Each task's training then reshapes the pooled features, and
    every other task's gate collapses onto whichever modality grows. On the demo run the beam gate ended
    at 0.90 on LiDAR, the modality with the weakest beam retrieval, and beam top-1 equalled the majority
    class. Its own weights had hardly moved (|W| 6.57 → 6.58)."""

    def __init__(self, d: int, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        self.norm = nn.LayerNorm(d)
        self.score = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1))

    def forward(self, pooled: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """pooled (B, M, d), present (B, M) bool → weights (B, M)."""
        if self.enabled:
            logits = self.score(self.norm(pooled.detach())).squeeze(-1)
        else:
            logits = torch.zeros(present.shape, device=pooled.device)
        logits = logits.masked_fill(~present, float("-inf"))
        return torch.softmax(logits, dim=-1).nan_to_num(0.0)


class CrossModalFusion(nn.Module):
    """Eqs. 9-11, cross-modal attention: the gated tokens of all modalities (plus a modality embedding) are
    concatenated and attend to each other (multi-head attention + feed-forward, pre-norm), then are
    projected to the backbone's hidden size. Tokens of absent modalities are masked out as keys."""

    def __init__(self, d: int, n_modalities: int, hidden: int, heads: int = 4, layers: int = 1):
        super().__init__()
        self.modality_embed = nn.Parameter(torch.randn(n_modalities, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.attn = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden))

    def forward(self, tokens: torch.Tensor, weights: torch.Tensor, present: torch.Tensor,
                slots: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, M, n_f, d), weights (B, M), present (B, M) → (B, M*n_f, hidden). ``slots`` (M,): which
        modality (row of the modality embedding) each of the M inputs is; default all, in order."""
        b, m, n, d = tokens.shape
        embed = self.modality_embed if slots is None else self.modality_embed.index_select(0, slots)
        x = tokens * weights[..., None, None] + embed[None, :, None, :]
        x = x.reshape(b, m * n, d)
        pad = ~present[:, :, None].expand(b, m, n).reshape(b, m * n)
        return self.out(self.attn(x, src_key_padding_mask=pad))


class TaskLayerAttention(nn.Module):
    """Eqs. 12-13, task-specific sequential attention over intermediate layers: at each chosen layer l_k a
    two-layer MLP scores every token from [h_{l_k,t}; s_{k-1}] and s_k is the score-weighted sum of
    h_{l_k}; s_{k-1} is thus concatenated with the next layer's states. The task feature is s_K.
    With ``enabled=False`` (ablation) the feature is the final hidden state of the last token."""

    def __init__(self, hidden: int, layers: list[int], enabled: bool = True):
        super().__init__()
        self.layers, self.enabled = layers, enabled
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(2 * hidden, hidden // 4), nn.Tanh(),
                                                nn.Linear(hidden // 4, 1)) for _ in layers)

    def forward(self, hidden_states: tuple[torch.Tensor, ...], mask: torch.Tensor) -> torch.Tensor:
        """hidden_states: the backbone's (embeddings, layer 1, ..., layer L), each (B, T, H); mask (B, T)."""
        if not self.enabled:  # the last real token; absent modalities leave masked tokens before it
            t = mask.shape[1]
            last = (mask.long() * torch.arange(1, t + 1, device=mask.device)).argmax(1)
            return hidden_states[-1][torch.arange(len(last), device=last.device), last]
        s = torch.zeros_like(hidden_states[0][:, 0])
        for layer, mlp in zip(self.layers, self.mlps):
            h = hidden_states[layer]
            scores = mlp(torch.cat([h, s[:, None].expand_as(h)], -1)).squeeze(-1)
            alpha = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
            s = (alpha[..., None] * h).sum(1)
        return s


class UncertaintyLoss(nn.Module):
    """Eq. 14, uncertainty-weighted multi-task loss (Kendall et al.): L = sum_t exp(-s_t) L_t + s_t with a
    learnable log-variance s_t per task."""

    def __init__(self, tasks: list[str]):
        super().__init__()
        self.log_vars = nn.ParameterDict({t: nn.Parameter(torch.zeros(1)) for t in tasks})

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for t, loss in losses.items():
            s = self.log_vars[t].squeeze(0)
            total = total + torch.exp(-s) * loss + s
        return total
