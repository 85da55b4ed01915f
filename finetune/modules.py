"""The stage-two building blocks, each citing its equation of the MMSense paper."""
from __future__ import annotations

import torch
from torch import nn


class ModalityGating(nn.Module):
    """Eq. 8, modality gating: w_m = softmax_m(v^T tanh(W p_m)) over the modalities a sample has, from
    their pooled features p_m; an absent modality gets weight 0 and the others renormalise. With
    ``enabled=False`` (ablation) present modalities get equal weights."""

    def __init__(self, d: int, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        self.score = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1))

    def forward(self, pooled: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """pooled (B, M, d), present (B, M) bool → weights (B, M)."""
        logits = self.score(pooled).squeeze(-1) if self.enabled else torch.zeros(present.shape, device=pooled.device)
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

    def forward(self, tokens: torch.Tensor, weights: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """tokens (B, M, n_f, d), weights (B, M), present (B, M) → (B, M*n_f, hidden)."""
        b, m, n, d = tokens.shape
        x = tokens * weights[..., None, None] + self.modality_embed[None, :, None, :]
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
        if not self.enabled:
            last = mask.long().sum(1) - 1
            return hidden_states[-1][torch.arange(len(last)), last]
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
