"""Human activity scenes written in the MM-Fi layout: ``E0x/Sxx/Axx/{rgb,depth,lidar,mmwave,wifi-csi}``.

Subjects S01-S10 are in E01, S11-S20 in E02 and so on (as in MM-Fi); each performs the 27 activities of
:mod:`twin.activities`, every action a recording of its own for which the subject takes a spot anew: the
subject's habitual spot (``Subject.offset``) plus up to ``ACTION_SPOT_M`` in x and y. The body is simulated at
100 Hz; sensor frames and ``ground_truth.npy`` (frames x 17 x 3, metres, rig frame) are at 10 Hz and the 10
WiFi packets of a frame fall at the 100 Hz steps within it. Deterministic for a seed: every action folder draws from its own seed sequence.
"""
from __future__ import annotations

import io
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image
from tqdm import tqdm

from twin.activities import ACTIVITY_NAMES, trajectory
from twin.human_sensors import ROOMS, CameraModel, lidar_points, radar_points, render, to_rig, wifi_csi
from twin.skeleton import BONES, JOINT_NAMES, Body, forward_kinematics

SIM_HZ = 100
FRAME_HZ = 10
# how far (m, uniform in x and y) a subject stands from their habitual spot in one action's recording; with
# one spot per subject, the pose model could place a person from the room alone (6 training spots)
ACTION_SPOT_M = 0.2


@dataclass
class HumanTwinConfig:
    """Size and randomness of the human twin."""

    envs: int = 4
    subjects: int = 40          # in total, spread evenly over the environments
    frames: int = 60            # frames per action sequence (MM-Fi has 297)
    activities: int = 27
    image_width: int = 64
    image_height: int = 48
    seed: int = 0
    workers: int = 0            # 0 = all CPU cores

    def check(self) -> None:
        if not 1 <= self.envs <= len(ROOMS):
            raise ValueError(f"envs must be 1..{len(ROOMS)}")
        if self.subjects < self.envs or self.subjects % self.envs:
            raise ValueError("subjects must be a positive multiple of envs")
        if not 1 <= self.activities <= 27 or self.frames < 1:
            raise ValueError("activities must be 1..27 and frames >= 1")


SMALL = dict(envs=2, subjects=4, frames=8, activities=27)


@dataclass(frozen=True)
class Subject:
    number: int
    env: int
    body: Body
    speed: float
    style: float
    offset: tuple[float, float]
    colors: tuple[tuple[int, int, int], ...]


def make_subject(number: int, env: int, seed: int) -> Subject:
    rng = np.random.default_rng([seed, 1000 + number])
    body = Body(float(np.clip(rng.normal(1.70, 0.08), 1.50, 1.95)), float(rng.normal(1, 0.04)),
                float(rng.normal(1, 0.03)))
    shirt, trousers, skin = (tuple(int(v) for v in rng.integers(30, 230, 3)) for _ in range(3))
    colors = tuple(trousers if b < 6 else skin if b in (8, 9, 12, 15) else shirt for b in range(len(BONES)))
    return Subject(number, env, body, float(rng.uniform(0.8, 1.25)), float(rng.uniform(0.8, 1.15)),
                   (float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.3, 0.3))), colors)


def simulate_action(subject: Subject, activity: int, frames: int, seed: int) -> np.ndarray:
    """Joint positions at 100 Hz, world frame: (frames * 10, 17, 3)."""
    rng = np.random.default_rng([seed, subject.number, activity])
    times = np.arange(frames * (SIM_HZ // FRAME_HZ)) / SIM_HZ
    p = trajectory(activity, times, subject.speed, subject.style, rng)
    spot = np.random.default_rng([seed, subject.number, activity, 11]).uniform(-ACTION_SPOT_M, ACTION_SPOT_M, 2)
    p["root_x"] = p["root_x"] + subject.offset[0] + spot[0]
    p["root_y"] = p["root_y"] + subject.offset[1] + spot[1]
    p["root_yaw"] = p["root_yaw"] + np.pi + rng.normal(0, 8 * np.pi / 180)  # facing the sensor rig
    return forward_kinematics(subject.body, p)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_action(out: Path, subject: Subject, activity: int, cfg: HumanTwinConfig) -> int:
    """Simulate one (subject, activity) sequence and write its MM-Fi action folder; returns frames written."""
    room = ROOMS[subject.env]
    rng = np.random.default_rng([cfg.seed, subject.number, activity, 7])
    fine = to_rig(simulate_action(subject, activity, cfg.frames, cfg.seed), room)
    vel = np.gradient(fine, 1.0 / SIM_HZ, axis=0)
    step = SIM_HZ // FRAME_HZ
    folder = out / room.name / f"S{subject.number:02d}" / f"A{activity + 1:02d}"
    for mod in ("rgb", "depth", "lidar", "mmwave", "wifi-csi"):
        (folder / mod).mkdir(parents=True, exist_ok=True)
    cam = CameraModel(cfg.image_width, cfg.image_height, tilt=room.camera_tilt)
    colors = np.array(subject.colors)
    h = subject.body.height
    for f in range(cfg.frames):
        joints, name = fine[f * step], f"frame{f + 1:03d}"
        rgb, depth = render(joints, h, room, cam, colors, rng)
        (folder / "rgb" / f"{name}.png").write_bytes(_png(rgb))
        (folder / "depth" / f"{name}.png").write_bytes(_png(depth))
        lidar_points(joints, h, room, rng).astype("<f8").tofile(folder / "lidar" / f"{name}.bin")
        radar_points(joints, vel[f * step], h, room, rng).astype("<f8").tofile(folder / "mmwave" / f"{name}.bin")
        csi = wifi_csi(fine[f * step: f * step + step], room, h, rng)
        scipy.io.savemat(folder / "wifi-csi" / f"{name}.mat", {"CSIamp": np.abs(csi), "CSIphase": np.angle(csi)})
    np.save(folder / "ground_truth.npy", fine[::step][: cfg.frames].astype(np.float64))
    return cfg.frames


def _job(args: tuple[str, Subject, int, HumanTwinConfig]) -> int:
    out, subject, activity, cfg = args
    return write_action(Path(out), subject, activity, cfg)


def generate(out: Path, cfg: HumanTwinConfig, progress: bool = True) -> dict:
    """Write the whole MM-Fi-format dataset under ``out`` and a ``twin_info.json`` beside it."""
    cfg.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per_env = cfg.subjects // cfg.envs
    # MM-Fi numbering: environment e holds subjects 10 e + 1 .. 10 e + per_env
    subjects = [make_subject(10 * e + s + 1, e, cfg.seed) for e in range(cfg.envs) for s in range(per_env)]
    jobs = [(str(out), subj, a, cfg) for subj in subjects for a in range(cfg.activities)]
    workers = cfg.workers or os.cpu_count() or 1
    total = 0
    bar = tqdm(total=len(jobs) * cfg.frames, desc="human twin", unit="frame", disable=None if progress else True)
    if workers == 1:
        for job in jobs:
            n = _job(job)
            total += n
            bar.update(n)
    else:
        with ProcessPoolExecutor(workers) as pool:
            for n in pool.map(_job, jobs, chunksize=4):
                total += n
                bar.update(n)
    bar.close()
    info = {"kind": "humans", "config": asdict(cfg), "frames_written": total, "joint_order": JOINT_NAMES,
            "activities": {f"A{i + 1:02d}": n for i, n in enumerate(ACTIVITY_NAMES[: cfg.activities])},
            "environments": [ROOMS[e].name for e in range(cfg.envs)],
            "subjects": {f"S{s.number:02d}": {"env": ROOMS[s.env].name, "height_m": round(s.body.height, 3),
                                              "speed": round(s.speed, 3), "style": round(s.style, 3)}
                         for s in subjects},
            "frame_rate_hz": FRAME_HZ, "coordinates": "sensor rig frame: x right, y away from the sensors, z up"}
    (out / "twin_info.json").write_text(json.dumps(info, indent=1))
    return info
