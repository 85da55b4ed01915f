"""Vehicle street scenes ray-traced with Sionna RT, written as DeepSense 6G full-format scenario folders.

``scenarioK/scenarioK.csv`` with the real column names, ``unit1/mmWave_data/mmWave_power_*.txt`` (64 lines),
``unit1/GPS_data/gps_location.txt``, ``unit2/GPS_data{,_calibrated}/gps_location_*.txt`` (lat, lon),
``unit1/camera_data/*.jpg``, ``unit1/lidar_data/*.ply``, ``unit1/radar_data/*.npy`` (complex FMCW cube), a
1-based ``unit1_beam_index``, ``seq_index`` (one pass of the equipped vehicle), time stamps, and a per-frame
``blockage`` column (1 when the line of sight from the BS to unit2 is blocked).

Each pass of unit2 (a car with the receiver on its roof) is one sequence; cars and trucks drive in the lanes
between it and the BS and block the line of sight, so blockage labels come from the geometry.
"""
from __future__ import annotations

import csv
import json
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter
from tqdm import tqdm

from airbind.fmcw import SPEED_OF_LIGHT as C
from airbind.geo import en_to_latlon
from twin.street import Mover, StreetScenario, scenario, traffic
from twin.vehicle_sensors import BeamConfig, FMCWConfig, beam_power, measured_power, radar_cube

# ITU-R P.2040 materials that Sionna defines only below 60 GHz, with their 60 GHz values
# (eps_r = a f^b, sigma = c f^d, f in GHz): brick a=3.91, c=0.0238, d=0.16; marble a=7.074, c=0.0055, d=0.9262.
MATERIALS_60GHZ = {"brick": (3.91, 0.046), "marble": (7.07, 0.244)}
CAR_HALF = np.array([2.2, 0.9, 0.775])    # half extents of sionna's low_poly_car (x along the car)
TRUCK_SCALE = np.array([1.6, 1.35, 2.2])
VEHICLE_RGB = (0.22, 0.22, 0.254)  # the 'metal' colour of Sionna's street scenes


@dataclass
class VehicleTwinConfig:
    """Size, sensors and ray-tracing effort of the vehicle twin."""

    scenarios: int = 4
    samples_per_scenario: int = 200
    rate_hz: float = 10.0
    seed: int = 0
    image_size: tuple[int, int] = (128, 72)
    image_spp: int = 32
    lidar_channels: int = 16
    lidar_azimuths: int = 256
    max_depth: int = 2
    ray_samples: int = 100_000
    diffraction: bool = True
    beam: BeamConfig = field(default_factory=BeamConfig)
    radar: FMCWConfig = field(default_factory=FMCWConfig)
    workers: int = 1


SMALL = dict(scenarios=1, samples_per_scenario=16, image_size=(64, 36), image_spp=4, lidar_channels=8,
             lidar_azimuths=128, ray_samples=20_000, max_depth=2)


class StreetSim:
    """One loaded Sionna scene with the BS, unit2 (car + receiver) and the traffic as movable objects."""

    def __init__(self, sc: StreetScenario, cfg: VehicleTwinConfig, movers: list[Mover]):
        import mitsuba as mi
        import sionna.rt as rt

        self.mi, self.rt, self.sc, self.cfg, self.movers = mi, rt, sc, cfg, movers
        scene = rt.load_scene(getattr(rt.scene, sc.scene), merge_shapes=False)
        replaced = {}
        for obj in scene.objects.values():
            name = obj.radio_material.name
            if name in MATERIALS_60GHZ:
                if name not in replaced:
                    eps, sigma = MATERIALS_60GHZ[name]
                    # the original's colour: a material made without one gets a random colour from numpy's
                    # global state, and the camera frames would differ from run to run
                    replaced[name] = rt.RadioMaterial(name=f"{name}_60ghz", relative_permittivity=eps, conductivity=sigma,
                                                      color=obj.radio_material.color)
                obj.radio_material = replaced[name]
        for name in replaced:
            scene.remove(name)
        scene.frequency = cfg.beam.carrier_hz
        scene.tx_array = rt.PlanarArray(num_rows=1, num_cols=cfg.beam.n_antennas, vertical_spacing=0.5,
                                        horizontal_spacing=0.5, pattern="iso", polarization="V")
        scene.rx_array = rt.PlanarArray(num_rows=1, num_cols=1, vertical_spacing=0.5, horizontal_spacing=0.5,
                                        pattern="iso", polarization="V")
        metal = rt.ITURadioMaterial(name="vehicle_metal", itu_type="metal", thickness=0.01, color=VEHICLE_RGB)
        self.cars = []
        for i in range(len(movers) + 1):  # index 0 is unit2
            car = rt.SceneObject(fname=rt.scene.low_poly_car, name=f"vehicle_{i}", radio_material=metal)
            self.cars.append(car)
        scene.edit(add=self.cars)
        for car, m in zip(self.cars[1:], movers):
            if m.truck:
                car.scaling = mi.Vector3f(*(float(v) for v in TRUCK_SCALE))
        self.bs = np.array([*sc.bs_xy, sc.bs_height])
        look = np.array([*sc.ground_point(sc.ue_lane, 0.0), 1.5])
        scene.add(rt.Transmitter(name="bs", position=self._p(self.bs), look_at=self._p(look)))
        self.rx = rt.Receiver(name="unit2", position=self._p(self.bs + [0, 0, 50]))
        scene.add(self.rx)
        self.scene, self.solver = scene, rt.PathSolver()
        lam = C / cfg.beam.carrier_hz
        tx = scene.get("bs")
        elements = np.array(scene.tx_array.rotate(lam, tx.orientation)).reshape(3, -1).T
        self.weights = cfg.beam.codebook(elements, self.local_frame())
        self.ids = {int(np.array(c.object_id)): i for i, c in enumerate(self.cars)}
        self.velocities = np.zeros((len(self.cars), 3))

    def _p(self, v) -> Any:
        return self.mi.Point3f(float(v[0]), float(v[1]), float(v[2]))

    def place(self, k: int, xy: np.ndarray, yaw: float, velocity: np.ndarray, half: np.ndarray) -> None:
        car = self.cars[k]
        car.position = self._p([xy[0], xy[1], half[2]])
        car.orientation = self._p([yaw, 0.0, 0.0])
        self.velocities[k] = velocity

    def set_time(self, t: float, ue_s: float, ue_speed: float) -> np.ndarray:
        """Move the traffic to time ``t`` and unit2 to ``ue_s``; returns unit2's receiver position."""
        sc = self.sc
        for k, m in enumerate(self.movers, start=1):
            s = m.s(t)
            yaw = sc.heading + (0.0 if m.speed >= 0 else np.pi)
            half = CAR_HALF * (TRUCK_SCALE if m.truck else 1.0)
            self.place(k, sc.ground_point(m.lane, s), yaw, np.r_[m.speed * sc.axis, 0.0], half)
        yaw = sc.heading + (0.0 if ue_speed >= 0 else np.pi)
        ue_xy = sc.ground_point(sc.ue_lane, ue_s)
        self.place(0, ue_xy, yaw, np.r_[ue_speed * sc.axis, 0.0], CAR_HALF)
        rx = np.array([ue_xy[0], ue_xy[1], 2 * CAR_HALF[2] + 0.12])
        self.rx.position = self._p(rx)
        return rx

    def clear_traffic(self) -> None:
        """Park every other vehicle far down the street (for the 'same position, unblocked' reference)."""
        for k in range(1, len(self.cars)):
            self.place(k, self.sc.ground_point(self.sc.ue_lane, 400.0 + 12.0 * k), self.sc.heading,
                       np.zeros(3), CAR_HALF)

    def los_angle(self, rx: np.ndarray) -> float:
        """Azimuth of unit2 seen from the BS (degrees, 0 = boresight, positive to the right)."""
        d = (rx - self.bs) @ self.local_frame().T
        return float(np.degrees(np.arctan2(d[0], d[1])))

    def beam_signal(self) -> np.ndarray:
        """Noise-free power of each codebook beam at unit2 (ray-traced channel, coherent over paths).

        Dr.Jit runs single-threaded here: with several threads the solver's paths come out in a different
        order from run to run and their coherent sum differs in the last bits (up to 0.02 dB on the default
        twin), so two builds of the same twin were not identical. One thread costs about 20 % of this call.
        """
        import drjit as dr
        cfg = self.cfg
        threads = dr.thread_count()
        dr.set_thread_count(1)
        try:
            paths = self.solver(self.scene, max_depth=cfg.max_depth, samples_per_src=cfg.ray_samples,
                                synthetic_array=True, diffraction=cfg.diffraction, edge_diffraction=cfg.diffraction)
            h = np.asarray(paths.cfr(frequencies=self.mi.Float(cfg.beam.frequencies()), normalize_delays=False,
                                     out_type="numpy"))[0, 0, 0, :, 0, :]
        finally:
            dr.set_thread_count(threads)
        return beam_power(h, self.weights)

    def cast(self, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Ray casting from ``origin``: distance (inf for misses), hit normals, hit object ids."""
        mi, dr = self.mi, __import__("drjit")
        o = self._p(origin)
        dr.make_opaque(o)
        ray = mi.Ray3f(o, mi.Vector3f(dirs[:, 0], dirs[:, 1], dirs[:, 2]))
        si = self.scene.mi_scene.ray_intersect(ray)
        shape_ids = dr.reinterpret_array(mi.UInt32, si.shape)
        valid_m = si.is_valid()
        dr.eval(si.t, si.n, shape_ids, valid_m)  # one kernel launch for all outputs
        valid = np.array(valid_m)
        dist = np.where(valid, np.array(si.t), np.inf)
        normals = np.array(si.n).reshape(3, -1).T
        ids = np.array(shape_ids)
        return dist, normals, ids, valid

    def los_blocked(self, rx: np.ndarray, clearance: float = 0.15) -> bool:
        """LoS blockage: the direct ray and four parallel rays offset by ``clearance`` (about the first Fresnel
        radius at 60 GHz over these distances) are all obstructed. A ray that only grazes an edge loses a few
        dB to diffraction and is not counted as blocked."""
        d = rx - self.bs
        length = np.linalg.norm(d)
        u = d / length
        side = np.cross(u, [0.0, 0.0, 1.0])
        side /= np.linalg.norm(side)
        up = np.cross(side, u)
        offsets = clearance * np.array([[0, 0, 0], side, -side, up, -up])
        for off in offsets:
            dist, _, _, _ = self.cast(self.bs + off, u[None])
            if not dist[0] < length - 0.05:
                return False
        return True

    def local_frame(self) -> np.ndarray:
        """Rows: the BS's x (right), y (boresight, across the street), z (up) axes in world coordinates."""
        f = np.r_[np.asarray(self.sc.facing, float), 0.0]
        up = np.array([0.0, 0.0, 1.0])
        return np.stack([np.cross(f, up), f, up])

    def lidar(self, rng: np.random.Generator) -> np.ndarray:
        """N x 4 (x, y, z, intensity) in the BS frame, from a spinning-LiDAR-like ray grid over +-80 deg."""
        cfg = self.cfg
        az = np.deg2rad(np.linspace(-80, 80, cfg.lidar_azimuths))
        el = np.deg2rad(np.linspace(-15, 5, cfg.lidar_channels))
        return self._scan(az, el, max_range=80.0, rng=rng, noise=0.02)[0]

    def _scan(self, az, el, max_range, rng, noise):
        """Cast a grid of rays from the BS: (points x,y,z,cos-incidence in the BS frame, ids, dirs, ranges)."""
        frame = self.local_frame()
        a, e = np.meshgrid(az, el)
        local = np.stack([np.cos(e) * np.sin(a), np.cos(e) * np.cos(a), np.sin(e)], -1).reshape(-1, 3)
        dirs = local @ frame
        dist, normals, ids, valid = self.cast(self.bs, dirs)
        hit = valid & (dist < max_range)
        r = dist[hit] + rng.normal(0, noise, hit.sum())
        cos_inc = np.abs(np.einsum("ij,ij->i", normals[hit], dirs[hit]))
        pts = local[hit] * r[:, None]
        return np.concatenate([pts, cos_inc[:, None]], 1), ids[hit], dirs[hit], r

    def radar(self, rng: np.random.Generator) -> np.ndarray:
        """Monostatic FMCW cube from ray-cast scatterers: moving vehicles carry their velocity (Doppler)."""
        az = np.deg2rad(np.linspace(-60, 60, 241))
        el = np.deg2rad(np.linspace(-12, 6, 7))
        pts, ids, dirs, r = self._scan(az, el, max_range=self.cfg.radar.max_range, rng=rng, noise=0.0)
        vel = np.array([self.velocities[self.ids[i]] if i in self.ids else np.zeros(3) for i in ids]).reshape(-1, 3)
        v_r = np.einsum("ij,ij->i", vel, dirs)
        metal = np.array([i in self.ids for i in ids], float)
        amp = 50.0 * (0.3 + 0.7 * metal) * np.sqrt(pts[:, 3]) / np.maximum(r, 1.0) ** 2
        sin_az = pts[:, 0] / np.maximum(np.linalg.norm(pts[:, :3], axis=1), 1e-6)
        return radar_cube(r, sin_az, v_r, amp, self.cfg.radar, rng)

    def snapshot(self) -> list[np.ndarray]:
        """Vertex positions of every vehicle now (for :meth:`render_frames`)."""
        return [np.array(car.mi_mesh.vertex_positions_buffer()) for car in self.cars]

    def render_frames(self, snapshots: list[list[np.ndarray]], seeds: list[int]) -> list[np.ndarray]:
        """RGB frames from the BS viewpoint for recorded vehicle snapshots, path-traced with Mitsuba.

        The visual scene is built once from the radio scene (Sionna's own conversion); each frame only copies
        the vehicles' vertices. Switching Mitsuba to its RGB variant reloads modules (~0.5 s), so all frames
        of a pass are rendered inside one switch. Returns H x W x 3 uint8 arrays; devices are not drawn.
        """
        mi, frames = self.mi, []
        with mi.util.scoped_set_variant("llvm_ad_rgb"):
            if getattr(self, "_visual", None) is None:
                from sionna.rt.renderer import visual_scene_from_wireless_scene
                from sionna.rt.utils.render import make_render_sensor
                f = np.r_[np.asarray(self.sc.facing, float), 0.0]
                cam = self.rt.Camera(position=self._p(self.bs + [0, 0, 0.2]),
                                     look_at=self._p(self.bs + 20 * f - [0, 0, 1.5]))
                sensor = make_render_sensor(self.scene, camera=cam, resolution=tuple(self.cfg.image_size), fov=90)
                self._visual = mi.load_dict(visual_scene_from_wireless_scene(self.scene, sensor=sensor, max_depth=8))
                self._params = mi.traverse(self._visual)
                keys = list(self._params.keys())
                self._vertex_keys = [next(k for k in keys if k.endswith(f"-{car.name}.vertex_positions"))
                                     for car in self.cars]
            for snap, seed in zip(snapshots, seeds):
                for key, vertices in zip(self._vertex_keys, snap):
                    self._params[key] = mi.Float(vertices)
                self._params.update()
                linear = np.clip(np.array(mi.render(self._visual, spp=self.cfg.image_spp, seed=seed))[..., :3], 0, 1)
                srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
                img = Image.fromarray((srgb * 255 + 0.5).astype(np.uint8))
                # a 3x3 median filter takes out most of the path tracer's noise at few samples per pixel
                frames.append(np.array(img.filter(ImageFilter.MedianFilter(3))))
        return frames

    def camera(self, seed: int = 0) -> np.ndarray:
        """One RGB frame of the current state (see :meth:`render_frames`)."""
        return self.render_frames([self.snapshot()], [seed])[0]


def _ply(points: np.ndarray) -> bytes:
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(points)}\nproperty float x\n"
              "property float y\nproperty float z\nproperty float intensity\nend_header\n")
    return header.encode() + points.astype("<f4").tobytes()


def _write_lines(path: Path, values) -> None:
    path.write_text("".join(f"{v:.18e}\n" for v in values))


HEADER = ["index", "unit1_rgb", "unit1_pwr_60ghz", "unit1_loc", "unit1_lidar", "unit1_lidar_SCR", "unit1_radar",
          "unit2_loc", "unit2_loc_cal", "", "unit1_beam_index", "seq_index", "time_stamp[UTC]", "blockage"]


def write_scenario(out: Path, k: int, cfg: VehicleTwinConfig, progress: bool = True) -> dict[str, Any]:
    """Simulate scenario ``k`` and write ``out/scenario{k+1}``; returns its statistics."""
    name = f"scenario{k + 1}"
    sc = scenario(k, cfg.seed)
    rng = np.random.default_rng([cfg.seed, k])
    movers = traffic(sc, rng)
    sim = StreetSim(sc, cfg, movers)
    base = out / name
    for sub in ("unit1/mmWave_data", "unit1/GPS_data", "unit1/camera_data", "unit1/lidar_data", "unit1/radar_data",
                "unit2/GPS_data", "unit2/GPS_data_calibrated"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    _write_lines(base / "unit1/GPS_data/gps_location.txt", sc.bs_latlon)
    dt = 1.0 / cfg.rate_hz
    rows, truth, blocked_flags, seq, t_clock = [], [], [], 0, 0.0
    pending: list = []  # (vehicle snapshot, seed, image path) of the pass being simulated
    bar = tqdm(total=cfg.samples_per_scenario, desc=name, unit="sample", disable=None if progress else True)
    start_s = 12 * 3600 + 3600 * rng.uniform(0, 6)
    while len(rows) < cfg.samples_per_scenario:
        seq += 1
        speed = float(rng.uniform(*sc.ue_speed)) * sc.ue_direction
        lo, hi = sc.segment
        s = lo if speed > 0 else hi
        while lo <= s <= hi and len(rows) < cfg.samples_per_scenario:
            n = len(rows)
            rx = sim.set_time(t_clock, s, speed)
            signal = sim.beam_signal()
            power = measured_power(signal, cfg.beam, rng)
            blocked = sim.los_blocked(rx)
            e, nth = rx[0] - sim.bs[0], rx[1] - sim.bs[1]
            cal = en_to_latlon(np.array(e + rng.normal(0, 0.3)), np.array(nth + rng.normal(0, 0.3)), *sc.bs_latlon)
            raw = en_to_latlon(np.array(e + rng.normal(0, 1.5)), np.array(nth + rng.normal(0, 1.5)), *sc.bs_latlon)
            clock = start_s + t_clock
            hh, mm, ss, ms = int(clock // 3600), int(clock % 3600 // 60), int(clock % 60), int(clock % 1 * 1000)
            img_name = f"unit1/camera_data/image_BS1_{n}_{hh:02d}_{mm:02d}_{ss:02d}.jpg"
            pending.append((sim.snapshot(), n, base / img_name))
            (base / f"unit1/lidar_data/lidar_{n}.ply").write_bytes(_ply(sim.lidar(rng)))
            np.save(base / f"unit1/radar_data/data_{n}_{hh:02d}_{mm:02d}_{ss:02d}.npy", sim.radar(rng), allow_pickle=False)
            _write_lines(base / f"unit1/mmWave_data/mmWave_power_{n}.txt", power)
            _write_lines(base / f"unit2/GPS_data/gps_location_{n}.txt", [float(raw[0]), float(raw[1])])
            _write_lines(base / f"unit2/GPS_data_calibrated/gps_location_{n}.txt", [float(cal[0]), float(cal[1])])
            rows.append([n + 1, f"./{img_name}", f"./unit1/mmWave_data/mmWave_power_{n}.txt",
                         "./unit1/GPS_data/gps_location.txt", f"./unit1/lidar_data/lidar_{n}.ply", "",
                         f"./unit1/radar_data/data_{n}_{hh:02d}_{mm:02d}_{ss:02d}.npy",
                         f"./unit2/GPS_data/gps_location_{n}.txt", f"./unit2/GPS_data_calibrated/gps_location_{n}.txt",
                         "", int(np.argmax(power)) + 1, seq, f"['{hh:02d}-{mm:02d}-{ss:02d}-{ms:03d}']", int(blocked)])
            truth.append([n + 1, seq, round(sim.los_angle(rx), 3), int(blocked),
                          round(10 * np.log10(signal.max() + 1e-30), 3), int(np.argmax(signal)) + 1])
            if blocked:  # the same position with the traffic gone: how much did the blocker take away?
                sim.clear_traffic()
                truth[-1].append(round(10 * np.log10(sim.beam_signal().max() + 1e-30), 3))
            else:
                truth[-1].append(truth[-1][4])
            blocked_flags.append(blocked)
            s += speed * dt
            t_clock += dt
            bar.update(1)
        # camera frames of this pass, rendered in one go (see StreetSim.render_frames)
        frames = sim.render_frames([p[0] for p in pending], [p[1] for p in pending])
        for (_, _, path), img in zip(pending, frames):
            Image.fromarray(img).save(path, format="JPEG", quality=90)
        pending.clear()
        t_clock += float(rng.uniform(2.0, 6.0))  # gap between passes: the traffic keeps moving
    bar.close()
    with (base / f"{name}.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        w.writerows(rows)
    # ground truth of the twin (not part of the DeepSense format; readers ignore it)
    with (base / "twin_truth.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "seq_index", "los_angle_deg", "blocked", "signal_db", "signal_best_beam",
                    "unblocked_signal_db"])
        w.writerows(truth)
    return {"scenario": name, "scene": sc.scene, "samples": len(rows), "sequences": seq,
            "blockage_rate": float(np.mean(blocked_flags)), "bs": asdict(sc)}


def _job(args) -> dict[str, Any]:
    out, k, cfg, progress = args
    return write_scenario(Path(out), k, cfg, progress)


def generate(out: Path, cfg: VehicleTwinConfig, progress: bool = True) -> dict[str, Any]:
    """Write all scenarios under ``out`` plus ``twin_info.json``."""
    from airbind.paths import configure_tool_caches
    configure_tool_caches()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    jobs = [(str(out), k, cfg, progress) for k in range(cfg.scenarios)]
    if cfg.workers > 1:
        with ProcessPoolExecutor(cfg.workers) as pool:
            stats = list(pool.map(_job, jobs))
    else:
        stats = [_job(j) for j in jobs]
    seconds = time.perf_counter() - t0
    info = {"kind": "vehicles", "config": json.loads(json.dumps(asdict(cfg), default=str)), "scenarios": stats,
            "seconds": round(seconds, 1),
            "seconds_per_sample": round(seconds / max(1, sum(s["samples"] for s in stats)), 3)}
    (out / "twin_info.json").write_text(json.dumps(info, indent=1))
    return info
