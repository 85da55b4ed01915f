"""The 27 activities of the human twin as joint-angle trajectories (MM-Fi's 14 daily + 13 rehabilitation).

Each activity maps the movement phase (cycles, float array) and a per-repetition amplitude scale to the
joint-angle parameters of :mod:`twin.skeleton`. Left/right mirrors and similar movements (raising vs waving
a hand, squatting vs picking up, front vs side lunges, marching vs leg raises) are deliberately close, so
that, as in MM-Fi, they are confusable for a classifier.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from twin.skeleton import PARAMS

D = np.pi / 180.0
Traj = dict[str, np.ndarray]


def pulse(phase: np.ndarray) -> np.ndarray:
    """0 → 1 → 0 once per cycle (raised cosine)."""
    return 0.5 - 0.5 * np.cos(2 * np.pi * phase)


def sway(phase: np.ndarray, k: float = 1.0) -> np.ndarray:
    return np.sin(2 * np.pi * k * phase)


def _wave(side: str, lift_amp: float) -> Callable[[np.ndarray, float], Traj]:
    def f(ph, a):
        return {f"{side}_sh_abd": 80 * D + 0 * ph, f"{side}_elbow": 20 * D + 0 * ph,
                f"{side}_lift": 70 * D + lift_amp * a * D * sway(ph, 3)}
    return f


def _raise(side: str) -> Callable[[np.ndarray, float], Traj]:
    return lambda ph, a: {f"{side}_sh_flex": 160 * a * D * pulse(ph), f"{side}_elbow": 10 * D * pulse(ph)}


def _upper_ext(sides: str) -> Callable[[np.ndarray, float], Traj]:
    def f(ph, a):
        out: Traj = {}
        for s in sides:
            out[f"{s}_sh_flex"] = 90 * a * D * pulse(ph)
            out[f"{s}_elbow"] = 100 * D * (1 - pulse(ph)) * pulse(ph) * 2
        return out
    return f


def _front_lunge(side: str) -> Callable[[np.ndarray, float], Traj]:
    other = "r" if side == "l" else "l"
    return lambda ph, a: {f"{side}_hip_flex": 60 * a * D * pulse(ph), f"{side}_knee": 70 * a * D * pulse(ph),
                          f"{other}_hip_flex": -25 * a * D * pulse(ph), f"{other}_knee": 40 * a * D * pulse(ph),
                          "trunk_pitch": 5 * D * pulse(ph)}


def _side_lunge(side: str) -> Callable[[np.ndarray, float], Traj]:
    other = "r" if side == "l" else "l"
    return lambda ph, a: {f"{side}_hip_abd": 35 * a * D * pulse(ph), f"{side}_knee": 60 * a * D * pulse(ph),
                          f"{side}_hip_flex": 30 * a * D * pulse(ph), f"{other}_hip_abd": 10 * D * pulse(ph),
                          "trunk_roll": (8 if side == "r" else -8) * D * pulse(ph)}


def _leg_abd(side: str) -> Callable[[np.ndarray, float], Traj]:
    return lambda ph, a: {f"{side}_hip_abd": 40 * a * D * pulse(ph),
                          "trunk_roll": (-6 if side == "r" else 6) * D * pulse(ph)}


def _leg_raise(side: str) -> Callable[[np.ndarray, float], Traj]:
    return lambda ph, a: {f"{side}_hip_flex": 55 * a * D * pulse(ph), f"{side}_knee": 10 * D * pulse(ph)}


def _body_ext(side: str) -> Callable[[np.ndarray, float], Traj]:
    sign = 1 if side == "l" else -1  # bending away from the raised arm
    return lambda ph, a: {f"{side}_sh_abd": 160 * a * D * pulse(ph), "trunk_roll": sign * 25 * a * D * pulse(ph)}


def _twist(sign: float) -> Callable[[np.ndarray, float], Traj]:
    return lambda ph, a: {"trunk_yaw": sign * 45 * a * D * pulse(ph), "l_elbow": 60 * D + 0 * ph,
                          "r_elbow": 60 * D + 0 * ph, "l_sh_flex": 30 * D + 0 * ph, "r_sh_flex": 30 * D + 0 * ph}


def walking(ph, a):
    swing = sway(ph)
    return {"root_y": 0.6 * a * np.sin(np.pi * ph / 2.0), "l_hip_flex": 28 * a * D * swing,
            "r_hip_flex": -28 * a * D * swing, "l_knee": 30 * D * np.clip(-swing, 0, None) + 5 * D,
            "r_knee": 30 * D * np.clip(swing, 0, None) + 5 * D, "l_sh_flex": -20 * a * D * swing,
            "r_sh_flex": 20 * a * D * swing, "l_elbow": 15 * D + 0 * ph, "r_elbow": 15 * D + 0 * ph}


def marching(ph, a):
    up_l = np.clip(sway(ph), 0, None)
    up_r = np.clip(-sway(ph), 0, None)
    return {"l_hip_flex": 60 * a * D * up_l, "l_knee": 70 * a * D * up_l, "r_hip_flex": 60 * a * D * up_r,
            "r_knee": 70 * a * D * up_r, "l_sh_flex": 25 * D * (up_r - up_l), "r_sh_flex": 25 * D * (up_l - up_r)}


def squat(ph, a):
    k = pulse(ph)
    return {"l_hip_flex": 85 * a * D * k, "r_hip_flex": 85 * a * D * k, "l_knee": 110 * a * D * k,
            "r_knee": 110 * a * D * k, "trunk_pitch": 25 * a * D * k, "l_sh_flex": 70 * D * k,
            "r_sh_flex": 70 * D * k}


def jump(ph, a):
    crouch = np.clip(np.sin(2 * np.pi * ph), 0, None)
    air = np.clip(-np.sin(2 * np.pi * ph), 0, None)
    return {"jump": 0.25 * a * air, "l_hip_flex": 40 * D * crouch, "r_hip_flex": 40 * D * crouch,
            "l_knee": 60 * D * crouch, "r_knee": 60 * D * crouch, "l_sh_flex": 120 * D * air,
            "r_sh_flex": 120 * D * air}


def bow(ph, a):
    return {"trunk_pitch": 55 * a * D * pulse(ph), "l_sh_flex": 15 * D * pulse(ph), "r_sh_flex": 15 * D * pulse(ph)}


def pick_up(ph, a):
    k = pulse(ph)
    return {"trunk_pitch": 60 * a * D * k, "l_hip_flex": 40 * D * k, "r_hip_flex": 40 * D * k,
            "l_knee": 55 * D * k, "r_knee": 55 * D * k, "r_sh_flex": 75 * a * D * k}


def chest_horizontal(ph, a):
    k = pulse(ph)
    return {"l_sh_flex": 90 * D + 0 * ph, "r_sh_flex": 90 * D + 0 * ph, "l_sh_abd": 80 * a * D * k,
            "r_sh_abd": 80 * a * D * k, "l_elbow": 10 * D + 0 * ph, "r_elbow": 10 * D + 0 * ph}


def chest_vertical(ph, a):
    k = pulse(ph)
    return {"l_sh_flex": 170 * a * D * k, "r_sh_flex": 170 * a * D * k, "trunk_pitch": -8 * D * k}


ACTIVITIES: list[tuple[str, Callable[[np.ndarray, float], Traj]]] = [
    # A01-A14: daily activities
    ("walking", walking), ("marching in place", marching), ("waving left hand", _wave("l", 25)),
    ("waving right hand", _wave("r", 25)), ("raising left hand", _raise("l")), ("raising right hand", _raise("r")),
    ("squatting", squat), ("jumping up", jump), ("bowing", bow), ("picking up things", pick_up),
    ("chest expansion (horizontal)", chest_horizontal), ("chest expansion (vertical)", chest_vertical),
    ("twisting left", _twist(1.0)), ("twisting right", _twist(-1.0)),
    # A15-A27: rehabilitation exercises
    ("left upper limb extension", _upper_ext("l")), ("right upper limb extension", _upper_ext("r")),
    ("both upper limbs extension", _upper_ext("lr")), ("left front lunge", _front_lunge("l")),
    ("right front lunge", _front_lunge("r")), ("left side lunge", _side_lunge("l")),
    ("right side lunge", _side_lunge("r")), ("left limb extension (leg sideways)", _leg_abd("l")),
    ("right limb extension (leg sideways)", _leg_abd("r")), ("left leg raise", _leg_raise("l")),
    ("right leg raise", _leg_raise("r")), ("left body extension", _body_ext("l")),
    ("right body extension", _body_ext("r")),
]
assert len(ACTIVITIES) == 27
ACTIVITY_NAMES = tuple(name for name, _ in ACTIVITIES)
# cycle period in seconds at speed 1 (walking/marching steps are quicker than rehabilitation holds)
PERIOD_S = np.array([2.0, 1.2, 1.0, 1.0, 2.5, 2.5, 3.0, 1.6, 3.0, 3.5, 3.0, 3.0, 3.0, 3.0,
                     3.5, 3.5, 3.5, 3.5, 3.5, 3.5, 3.5, 3.0, 3.0, 3.0, 3.0, 4.0, 4.0])


def trajectory(activity: int, times: np.ndarray, speed: float, style: float, rng: np.random.Generator) -> Traj:
    """Joint-angle parameters over ``times`` (s) for one performance of ``activity`` (0-based).

    ``speed`` scales the cycle rate, ``style`` the subject's typical amplitude; each repetition gets its own
    amplitude, tempo jitter and a small posture offset.
    """
    period = PERIOD_S[activity] / speed * rng.uniform(0.9, 1.1)
    phase = times / period + rng.uniform(0, 0.2)
    n_reps = int(np.ceil(phase.max())) + 1
    rep_amp = style * rng.normal(1.0, 0.12, n_reps).clip(0.6, 1.4)
    # amplitude changes smoothly from one repetition to the next
    amp = np.interp(phase, np.arange(n_reps), rep_amp)
    traj = {k: np.zeros_like(times) for k in PARAMS}
    for key, value in ACTIVITIES[activity][1](phase, 1.0).items():
        traj[key] = traj[key] + value * (amp if key not in ("root_y",) else 1.0)
    for key in PARAMS:  # posture offsets and slow sway, as real people never stand perfectly still
        if key.startswith(("root", "jump")):
            continue
        traj[key] = traj[key] + rng.normal(0, 2.5 * D) + 1.5 * D * np.sin(2 * np.pi * times / rng.uniform(3, 7))
    return traj
