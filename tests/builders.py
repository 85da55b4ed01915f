"""Build tiny datasets in the real DeepSense 6G and MM-Fi on-disk layouts for the tests."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from airbind.geo import en_to_latlon

BS_LATLON = (33.420693, -111.929175)
FULL_HEADER = ["index", "unit1_rgb", "unit1_pwr_60ghz", "unit1_loc", "unit1_lidar", "unit1_lidar_SCR",
               "unit1_radar", "unit2_loc", "unit2_loc_cal", "", "unit1_beam_index", "seq_index",
               "time_stamp[UTC]", "blockage"]


def power_vector(best: int, rng: np.random.Generator, beams: int = 64) -> np.ndarray:
    p = rng.uniform(0.005, 0.02, beams)
    p[best] = 0.3
    return p


def write_lines(path: Path, values) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(f"{v:.18e}" for v in values) + "\n")


def jpeg(path: Path, rng: np.random.Generator, size=(48, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, format="JPEG")


def ply_binary(path: Path, pts: np.ndarray) -> None:
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(pts)}\nproperty float x\n"
              "property float y\nproperty float z\nproperty float intensity\nend_header\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.encode() + pts.astype("<f4").tobytes())


def radar_cube(rng: np.random.Generator, rng_m: float = 8.0, vel: float = 2.0, sin_theta: float = 0.2) -> np.ndarray:
    """A 4 x 256 x 128 complex FMCW cube with one point target (the default RadarConfig's chirp)."""
    from shards.radar import C, RadarConfig
    cfg = RadarConfig()
    n_rx, n_s, n_c = 4, 256, 128
    t = np.arange(n_s) / cfg.sample_rate_hz
    f_beat = 2 * cfg.slope_hz_per_s * rng_m / C
    f_dopp = 2 * vel / cfg.wavelength
    m = np.arange(n_rx)[:, None, None]
    phase = 2 * np.pi * (f_beat * t[None, :, None] + f_dopp * cfg.chirp_period_s * np.arange(n_c)[None, None, :]) \
        + np.pi * m * sin_theta
    noise = (rng.normal(size=(n_rx, n_s, n_c)) + 1j * rng.normal(size=(n_rx, n_s, n_c))) * 0.05
    return (np.exp(1j * phase) + noise).astype(np.complex64)


def deepsense_full(root: Path, seqs: int = 3, frames: int = 12, seed: int = 0, mismatch_row: int | None = None,
                   with_sensors: bool = True) -> Path:
    """``root/scenario7/scenario7.csv`` in the full-index layout, blockage column included."""
    rng = np.random.default_rng(seed)
    base = root / "scenario7"
    lat_bs, lon_bs = BS_LATLON
    write_lines(base / "unit1/GPS_data/gps_location.txt", [lat_bs, lon_bs])
    rows, idx = [], 0
    for seq in range(1, seqs + 1):
        for t in range(frames):
            idx += 1
            best = (5 * t + seq) % 64
            blocked = int(4 <= t < 7)
            pwr = power_vector(best, rng) * (0.03 if blocked else 1.0)
            write_lines(base / f"unit1/mmWave_data/mmWave_power_{idx - 1}.txt", pwr)
            lat, lon = en_to_latlon(np.array(-20.0 + 3.0 * t), np.array(15.0 + seq), lat_bs, lon_bs)
            write_lines(base / f"unit2/GPS_data/gps_location_{idx - 1}.txt", [float(lat), float(lon)])
            rgb = lidar = radar = ""
            if with_sensors:
                rgb = f"./unit1/camera_data/image_BS1_{idx}_10_00_{t:02d}.jpg"
                jpeg(base / rgb, rng)
                lidar = f"./unit1/lidar_data/lidar_{idx}.ply"
                ply_binary(base / lidar, rng.normal(size=(50 + t, 4)))
                radar = f"./unit1/radar_data/data_{idx}_10_00_{t:02d}.mat"
                (base / radar).parent.mkdir(parents=True, exist_ok=True)
                scipy.io.savemat(base / radar, {"data": radar_cube(rng, 5.0 + t)})
            label = best + 1 if idx != mismatch_row else (best + 2) % 64 + 1
            rows.append([idx, rgb, f"./unit1/mmWave_data/mmWave_power_{idx - 1}.txt",
                         "./unit1/GPS_data/gps_location.txt", lidar, "", radar,
                         f"./unit2/GPS_data/gps_location_{idx - 1}.txt", "", "", label, seq,
                         f"['10-00-{t:02d}-{100 * (t % 10):03d}']", blocked])
    with (base / "scenario7.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(FULL_HEADER)
        w.writerows(rows)
    return base


def deepsense_task(root: Path, n: int = 30, seed: int = 1) -> Path:
    """``scenario3_dev_{train,val,test}.csv`` task CSVs as in the real scenario-5 development set."""
    rng = np.random.default_rng(seed)
    base = root / "scenario3"
    write_lines(base / "unit1/GPS_data/gps_location.txt", list(BS_LATLON))
    numbers = rng.permutation(n)
    for split, part in zip(("train", "val", "test"), np.array_split(numbers, 3)):
        with (base / f"scenario3_dev_{split}.csv").open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["index", "unit2_loc_1", "unit1_pwr_1", "beam_index_1"])
            for i, num in enumerate(part, start=1):
                best = int(num) % 64
                write_lines(base / f"unit1/mmWave_data/mmWave_power_{num}.txt", power_vector(best, rng))
                lat, lon = en_to_latlon(np.array(float(num)), np.array(10.0), *BS_LATLON)
                write_lines(base / f"unit2/GPS_data/gps_location_{num}.txt", [float(lat), float(lon)])
                w.writerow([i, f"./unit2/GPS_data/gps_location_{num}.txt",
                            f"./unit1/mmWave_data/mmWave_power_{num}.txt", best + 1])
    return base


def deepsense_blockage(root: Path, n: int = 10, steps: int = 8, horizon: int = 3, seed: int = 2) -> Path:
    """Blockage series CSV: ``index, unit1_pwr_60ghz_1..8, blockage_1..K``."""
    rng = np.random.default_rng(seed)
    base = root / "scenario17"
    header = ["index"] + [f"unit1_pwr_60ghz_{k}" for k in range(1, steps + 1)] + \
        [f"blockage_{k}" for k in range(1, horizon + 1)]
    base.mkdir(parents=True, exist_ok=True)
    with (base / "scenario17_blockage_train.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for i in range(1, n + 1):
            paths = []
            for k in range(steps):
                num = i * 20 + k
                write_lines(base / f"unit1/mmWave_data/mmWave_power_{num}.txt", power_vector(k, rng))
                paths.append(f"./unit1/mmWave_data/mmWave_power_{num}.txt")
            # blocked at the last future step in odd rows, at the first one in every third row
            w.writerow([i, *paths, *[int((i % 2 and k == horizon) or (i % 3 == 0 and k == 1))
                                     for k in range(1, horizon + 1)]])
    return base


def mmfi(root: Path, envs=("E01", "E02"), subjects_per_env: int = 2, actions=("A01", "A02", "A17"),
         frames: int = 4, seed: int = 3, image_rgb: bool = True) -> Path:
    """The MM-Fi layout ``E0x/Sxx/Axx/{rgb,lidar,mmwave,wifi-csi}/frameNNN.*`` + ``ground_truth.npy``."""
    rng = np.random.default_rng(seed)
    for e, env in enumerate(envs):
        for s in range(subjects_per_env):
            subject = f"S{e * 10 + s + 1:02d}"
            for action in actions:
                d = root / env / subject / action
                for mod in ("rgb", "depth", "lidar", "mmwave", "wifi-csi"):
                    (d / mod).mkdir(parents=True, exist_ok=True)
                np.save(d / "ground_truth.npy", rng.normal(size=(frames, 17, 3)).astype(np.float64))
                for f in range(1, frames + 1):
                    name = f"frame{f:03d}"
                    if image_rgb:
                        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(d / "rgb" / f"{name}.png")
                    rng.normal(size=(20 + f, 3)).astype("<f8").tofile(d / "lidar" / f"{name}.bin")
                    rng.normal(size=(5 + f, 5)).astype("<f8").tofile(d / "mmwave" / f"{name}.bin")
                    scipy.io.savemat(d / "wifi-csi" / f"{name}.mat",
                                     {"CSIamp": rng.uniform(5, 40, (3, 114, 10)), "CSIphase": rng.normal(size=(3, 114, 10))})
    return root


def image_bytes(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()
