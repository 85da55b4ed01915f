"""Training-time augmentation of human scenes: the whole point-cloud scene and the pose label shifted together.

With a few subjects per room, a pose model can place a person from the room alone (its walls and furniture in
the LiDAR and radar clouds, its colours in the camera) instead of from where the body's points are. Moving the
radar and LiDAR clouds, background included, and the 3-D keypoints by one random horizontal offset (x, y in
the rig frame, as if the sensor rig had stood elsewhere; the random global translation of point-cloud pose
estimators, e.g. P4Transformer, Fan et al., CVPR 2021) makes the room uninformative of the position, so the
model must read it from the body. Camera frames and WiFi CSI are left as they are; vehicle scenes (no
keypoints) are untouched.
"""
from __future__ import annotations

import torch

POINT_MODALITIES = ("radar", "lidar")


def shift_human_scenes(batch: dict, max_shift_m: float, generator: torch.Generator) -> dict:
    """A copy of ``batch`` whose samples with keypoints have their valid radar / LiDAR points and keypoints
    moved by one offset per sample, uniform in [-max_shift_m, max_shift_m] in x and y (metres)."""
    rows = batch.get("has_keypoints")
    if max_shift_m <= 0 or rows is None or not bool(rows.any()):
        return batch
    n = len(rows)
    offset = (torch.rand(n, 2, generator=generator) * 2 - 1) * max_shift_m
    offset = offset * rows[:, None].float()  # zero for samples without a pose
    out = dict(batch)
    kp = batch["keypoints"].clone()
    kp[..., :2] += offset[:, None, :].to(kp.dtype)
    out["keypoints"] = kp
    for m in POINT_MODALITIES:
        if m not in batch:
            continue
        pts, mask = batch[m].clone(), batch[m + "_mask"]
        pts[..., :2] += offset[:, None, :].to(pts.dtype) * mask[..., None].to(pts.dtype)  # padding stays put
        out[m] = pts
    return out
