"""A 17-joint human body: anthropometric segment lengths and forward kinematics from joint angles.

Joint order (Human3.6M / MM-Fi): 0 pelvis, 1 right hip, 2 right knee, 3 right ankle, 4 left hip, 5 left knee,
6 left ankle, 7 spine, 8 thorax, 9 neck/nose, 10 head, 11 left shoulder, 12 left elbow, 13 left wrist,
14 right shoulder, 15 right elbow, 16 right wrist.

World frame: metres, z up, floor at z = 0. The body frame has x to the subject's right, y forward.
Segment lengths follow Winter's ratios of body height H (thigh 0.245 H, shank 0.246 H, upper arm 0.186 H,
forearm 0.146 H, shoulder width 0.259 H).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

JOINT_NAMES = ("pelvis", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "spine", "thorax",
               "neck", "head", "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow", "r_wrist")
BONES = ((0, 1), (1, 2), (2, 3), (0, 4), (4, 5), (5, 6), (0, 7), (7, 8), (8, 9), (9, 10), (8, 11), (11, 12),
         (12, 13), (8, 14), (14, 15), (15, 16))
# capsule radius of each bone as a fraction of body height (for LiDAR surfaces, radar RCS and the camera)
BONE_RADIUS = (0.035, 0.045, 0.033, 0.035, 0.045, 0.033, 0.08, 0.085, 0.03, 0.055, 0.03, 0.027, 0.022,
               0.03, 0.027, 0.022)

PARAMS = ("root_x", "root_y", "root_yaw", "jump", "trunk_pitch", "trunk_roll", "trunk_yaw",
          "l_sh_flex", "l_sh_abd", "l_elbow", "l_lift", "r_sh_flex", "r_sh_abd", "r_elbow", "r_lift",
          "l_hip_flex", "l_hip_abd", "l_knee", "r_hip_flex", "r_hip_abd", "r_knee")


@dataclass(frozen=True)
class Body:
    """Per-subject body size."""

    height: float = 1.72
    shoulder_scale: float = 1.0
    leg_scale: float = 1.0

    @property
    def thigh(self) -> float:
        return 0.245 * self.height * self.leg_scale

    @property
    def shank(self) -> float:
        return 0.246 * self.height * self.leg_scale

    @property
    def ankle_h(self) -> float:
        return 0.039 * self.height


def _rx(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def _ry(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def _rz(a: np.ndarray) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def _apply(r: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.einsum("tij,tj->ti", r, v)


def _limb(flex, abd, side: float, lift=None) -> np.ndarray:
    """Unit direction of a limb segment hanging down (0, 0, -1), flexed forward about x by ``flex`` and
    raised sideways (outwards for ``side`` = +1 right / -1 left) about y by ``abd`` (+ ``lift``)."""
    down = np.broadcast_to(np.array([0.0, 0.0, -1.0]), (len(flex), 3))
    v = _apply(_rx(flex), down)  # Rx(f)(0,0,-1) = (0, sin f, -cos f): swings forward
    total = abd if lift is None else abd + lift
    return _apply(_ry(-side * total), v)  # Ry(-a)(0,0,-1) = (sin a, 0, -cos a): swings to +x


def forward_kinematics(body: Body, p: dict[str, np.ndarray]) -> np.ndarray:
    """Joint angles (radians) and root pose per frame → (T, 17, 3) joint positions in the world frame.

    The pelvis height keeps the lower foot on the floor; ``jump`` lifts the whole body.
    """
    h = body.height
    t = len(p["root_x"])
    j = np.zeros((t, 17, 3))
    legs = {}
    for side_name, side, hip_i in (("r", 1.0, 1), ("l", -1.0, 4)):
        thigh = _limb(p[f"{side_name}_hip_flex"], p[f"{side_name}_hip_abd"], side) * body.thigh
        shank = _limb(p[f"{side_name}_hip_flex"] - p[f"{side_name}_knee"], p[f"{side_name}_hip_abd"], side) * body.shank
        legs[side_name] = (hip_i, side, thigh, shank)
    reach = np.max([-(th[:, 2] + sh[:, 2]) for _, _, th, sh in legs.values()], axis=0)
    pelvis = np.stack([np.zeros(t), np.zeros(t), reach + body.ankle_h + p["jump"]], -1)
    j[:, 0] = pelvis
    for hip_i, side, thigh, shank in legs.values():
        hip = pelvis + np.array([side * 0.06 * h, 0.0, 0.0])
        j[:, hip_i] = hip
        j[:, hip_i + 1] = hip + thigh
        j[:, hip_i + 2] = hip + thigh + shank
    # pitch > 0 bends forward, roll > 0 bends to the right, yaw > 0 twists to the left
    r_trunk = _rz(p["trunk_yaw"]) @ _rx(-p["trunk_pitch"]) @ _ry(p["trunk_roll"])
    up = lambda v: pelvis + _apply(r_trunk, np.broadcast_to(np.asarray(v, float), (t, 3)))
    j[:, 7] = up([0, 0, 0.144 * h])
    j[:, 8] = up([0, 0, 0.288 * h])
    j[:, 9] = up([0, 0.015 * h, 0.35 * h])
    j[:, 10] = up([0, 0.01 * h, 0.42 * h])
    sw = 0.1295 * h * body.shoulder_scale
    for side_name, side, sh_i in (("l", -1.0, 11), ("r", 1.0, 14)):
        shoulder = up([side * sw, 0, 0.27 * h])
        upper = _limb(p[f"{side_name}_sh_flex"], p[f"{side_name}_sh_abd"], side)
        fore = _limb(p[f"{side_name}_sh_flex"] + p[f"{side_name}_elbow"], p[f"{side_name}_sh_abd"], side,
                     p[f"{side_name}_lift"])
        j[:, sh_i] = shoulder
        j[:, sh_i + 1] = shoulder + _apply(r_trunk, upper) * 0.186 * h
        j[:, sh_i + 2] = j[:, sh_i + 1] + _apply(r_trunk, fore) * 0.146 * h
    # root pose: rotate about the vertical through the pelvis and translate
    r_root = _rz(p["root_yaw"])
    j = np.einsum("tij,tkj->tki", r_root, j)
    j[..., 0] += p["root_x"][:, None]
    j[..., 1] += p["root_y"][:, None]
    return j
