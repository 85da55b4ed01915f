"""Symmetric InfoNCE between a modality and its anchor, over the pairs where both exist.

L = 1/2 [ CE(tau * z_m z_a^T, I) + CE(tau * z_a z_m^T, I) ]   (CLIP / ImageBind, Eq. 1 of ImageBind)

computed on the *global* batch: embeddings of every rank are gathered with open_clip's ``gather_features``
(with gradients, as ``ClipLoss(gather_with_grad=True)`` does), so 2 ranks of B samples give the loss of one
rank with 2B samples. Rows where either side is missing are dropped after the gather.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from open_clip.loss import ClipLoss, gather_features


class MaskedClipLoss(ClipLoss):
    """open_clip's ClipLoss restricted to valid pairs."""

    def __init__(self, rank: int = 0, world_size: int = 1):
        super().__init__(local_loss=False, gather_with_grad=True, cache_labels=False, rank=rank,
                         world_size=world_size)

    def forward(self, z_m: torch.Tensor, z_a: torch.Tensor, valid: torch.Tensor,
                logit_scale: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Loss over valid pairs (z_* already L2-normalised) and the number of pairs it used."""
        z_m = z_m * valid[:, None].to(z_m.dtype)
        z_a = z_a * valid[:, None].to(z_a.dtype)
        if self.world_size > 1:
            z_m, z_a = gather_features(z_m, z_a, local_loss=False, gather_with_grad=True, rank=self.rank,
                                       world_size=self.world_size)
            masks = [torch.zeros_like(valid) for _ in range(self.world_size)]
            dist.all_gather(masks, valid.contiguous())
            valid = torch.cat(masks)
        idx = valid.nonzero().squeeze(1)
        n = int(idx.numel())
        if n < 2:  # no negatives: nothing to contrast (keeps the graph connected)
            return (z_m.sum() + z_a.sum()) * 0.0, n
        a, b = z_m[idx], z_a[idx]
        logits = logit_scale * a @ b.T
        labels = torch.arange(n, device=logits.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)), n
