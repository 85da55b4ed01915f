"""Farthest point sampling (the down-sampling of PointNet++, Qi et al., NeurIPS 2017, used by Point Transformer).

FPS is sequential: pick ``i`` needs the distances to picks ``0..i-1``. In PyTorch every pick is six small kernels
(gather, sub, square, sum, minimum, argmax), 432 launches for the 64 + 8 picks of one point encoder: 864 of
the beam predictor's 2,244 GPU kernels at batch 1. On a CUDA tensor (with Triton installed, and outside
torch.export, whose programs must stay portable) the whole loop runs as one Triton kernel instead: one program
per cloud keeps the running minimum distance in registers, as the CUDA kernel of PointNet++ does in shared
memory. Both paths do the same float32 arithmetic ((dx² + dy²) + dz², first index on ties), so they make the
same picks. Under torch.compile Dynamo answers ``is_exporting()`` with True, so compiled graphs trace the PyTorch
loop; inductor then fuses each call into one kernel by itself (measured on an H100: 4 launches per forward).
"""
from __future__ import annotations

import torch

try:  # Triton ships with the CUDA builds of torch; without it FPS stays in PyTorch
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installed torch build
    triton = None


def fps_reference(p: torch.Tensor, mask: torch.Tensor, m: int) -> torch.Tensor:
    """Indices (B, m) of the farthest-point picks among the valid points, in PyTorch (any device)."""
    b, n, _ = p.shape
    # padded points start at -1 and stay there (every distance is >= 0), so they are never the farthest
    best = torch.full((b, n), float("inf"), device=p.device).masked_fill(~mask, -1.0)
    current = mask.float().argmax(dim=1, keepdim=True)  # (B, 1): first valid point (0 if none)
    picks = []
    for _ in range(m):
        picks.append(current)
        centre = p.gather(1, current[..., None].expand(-1, -1, p.shape[-1]))  # (B, 1, 3)
        best = torch.minimum(best, (p - centre).pow(2).sum(-1))
        current = best.argmax(dim=1, keepdim=True)
    return torch.cat(picks, 1)


if triton is not None:
    @triton.jit
    def _fps_kernel(p_ptr, mask_ptr, out_ptr, n, stride_pb, stride_pn, stride_mb, stride_ob,
                    M: tl.constexpr, BLOCK: tl.constexpr):
        b = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        inside = offs < n
        base = p_ptr + b * stride_pb
        x = tl.load(base + offs * stride_pn, mask=inside, other=0.0)
        y = tl.load(base + offs * stride_pn + 1, mask=inside, other=0.0)
        z = tl.load(base + offs * stride_pn + 2, mask=inside, other=0.0)
        valid = tl.load(mask_ptr + b * stride_mb + offs, mask=inside, other=0) != 0
        # as the reference: valid points start at +inf, padding at -1; lanes past n can never win
        best = tl.where(valid, float("inf"), -1.0)
        best = tl.where(inside, best, float("-inf"))
        current = tl.argmax(tl.where(valid, 1.0, 0.0), axis=0, tie_break_left=True)
        for i in range(M):
            tl.store(out_ptr + b * stride_ob + i, current.to(tl.int64))
            cx = tl.load(base + current * stride_pn)
            cy = tl.load(base + current * stride_pn + 1)
            cz = tl.load(base + current * stride_pn + 2)
            dx, dy, dz = x - cx, y - cy, z - cz
            d = (dx * dx + dy * dy) + dz * dz  # launched without FP fusion: no FMA, the reference's roundings
            best = tl.minimum(best, d)  # lanes past n stay at -inf
            current = tl.argmax(best, axis=0, tie_break_left=True)


def fps_triton(p: torch.Tensor, mask: torch.Tensor, m: int) -> torch.Tensor:
    """:func:`fps_reference` as one Triton kernel launch (CUDA tensors, or CPU ones under TRITON_INTERPRET=1)."""
    if triton is None:
        raise RuntimeError("farthest point sampling in Triton needs the triton package")
    b, n, _ = p.shape
    p = p.float().contiguous()
    mask = mask.to(torch.int8).contiguous()
    out = torch.empty((b, m), dtype=torch.int64, device=p.device)
    if b and m:
        _fps_kernel[(b,)](p, mask, out, n, p.stride(0), p.stride(1), mask.stride(0), out.stride(0), M=m,
                          BLOCK=max(16, triton.next_power_of_2(n)), enable_fp_fusion=False)
    return out


def farthest_point_sampling(p: torch.Tensor, mask: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (B, m) of farthest-point samples among valid points; the mask marks real picks
    (a cloud with n < m valid points has n real picks)."""
    use_triton = triton is not None and p.is_cuda and not torch.compiler.is_exporting()
    idx = fps_triton(p, mask, m) if use_triton else fps_reference(p, mask, m)
    picked = torch.arange(m, device=p.device)[None] < mask.sum(1, keepdim=True)
    return idx, picked
