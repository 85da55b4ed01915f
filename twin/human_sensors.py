"""Sensors of the human twin, all driven by the same body geometry (joint positions over time).

- mmWave radar: scatterers on the body's capsules, radial velocity from the joints' motion, detection
  probability rising with motion and falling with range (MM-Fi point clouds come after static-clutter
  removal), range/angle/Doppler quantisation, ghost points from multipath clutter: N x 5 (x, y, z, doppler,
  intensity).
- LiDAR: points on the sensor-facing body surface plus the room (floor, back wall, furniture), N x 3.
- Camera: a small pinhole RGB image and a depth image, bones drawn as shaded capsules by depth.
- WiFi CSI: amplitude over 114 subcarriers x 3 antennas x 10 packets of a multipath channel (static room
  paths + one path per body scatterer whose length follows the motion).

Points and images are in the sensor rig's frame: x right, y away from the sensor (depth), z up.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from twin.skeleton import BONE_RADIUS, BONES

from airbind.fmcw import SPEED_OF_LIGHT as C


@dataclass(frozen=True)
class Room:
    """One environment: room size, where the sensors stand, the clutter, and the WiFi link."""

    name: str
    width: float            # x extent (m), centred on the subject area
    depth: float            # distance from the sensor rig to the back wall (m)
    sensor_distance: float  # sensor rig → subject (m)
    sensor_height: float
    camera_tilt: float      # radians, downwards
    wall_rgb: tuple[int, int, int]
    floor_rgb: tuple[int, int, int]
    furniture: tuple[tuple[float, float, float, float, float], ...] = ()  # (x, y, w, d, h) boxes, rig frame
    wifi_tx: tuple[float, float, float] = (-1.5, 1.0, 1.0)
    wifi_rx: tuple[float, float, float] = (1.5, 4.0, 1.0)
    wall_reflection: float = 0.35
    radar_ghosts: float = 3.0  # mean multipath ghost points per frame


ROOMS = (
    Room("E01", 5.0, 6.0, 3.0, 1.0, 0.10, (200, 190, 170), (120, 100, 80), ((-1.8, 4.5, 0.8, 0.6, 0.8),),
         (-1.6, 1.0, 1.1), (1.6, 4.2, 1.1), 0.30, 2.0),
    Room("E02", 4.0, 5.0, 2.6, 1.2, 0.18, (150, 170, 190), (90, 90, 100), ((1.4, 3.8, 0.6, 0.6, 1.2),
         (-1.5, 2.0, 0.4, 1.0, 0.5)), (-1.2, 0.5, 0.9), (1.3, 3.6, 1.3), 0.45, 4.0),
    Room("E03", 7.0, 8.0, 3.5, 0.9, 0.05, (180, 180, 180), (60, 70, 60), ((2.5, 6.0, 1.5, 0.8, 1.0),),
         (-2.0, 1.5, 1.0), (2.2, 5.0, 0.9), 0.25, 1.5),
    Room("E04", 4.5, 5.5, 2.8, 1.4, 0.25, (210, 200, 215), (140, 120, 110), ((-1.6, 3.5, 0.7, 0.7, 0.9),
         (1.5, 4.5, 0.5, 0.5, 1.6)), (1.4, 0.8, 1.2), (-1.5, 3.9, 1.0), 0.55, 5.0),
)


def to_rig(joints: np.ndarray, room: Room) -> np.ndarray:
    """World (subject at origin, floor z = 0) → rig frame (sensor at origin, y towards the subject)."""
    out = joints.copy()
    out[..., 1] = joints[..., 1] + room.sensor_distance
    out[..., 2] = joints[..., 2] - room.sensor_height
    return out


_BONE_A = np.array([i for i, _ in BONES])
_BONE_B = np.array([k for _, k in BONES])
_RADIUS = np.array(BONE_RADIUS)


def body_surface(joints: np.ndarray, height: float, n_per_bone: int, rng: np.random.Generator,
                 towards: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points on the bone capsules of one frame: positions, outward normals, and their bone index."""
    a, axis = joints[_BONE_A], joints[_BONE_B] - joints[_BONE_A]  # (16, 3)
    u = axis / (np.linalg.norm(axis, axis=1, keepdims=True) + 1e-9)
    helper = np.where(np.abs(u[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
    e1 = np.cross(u, helper)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(u, e1)
    s = rng.uniform(0, 1, (len(BONES), n_per_bone, 1))
    ang = rng.uniform(0, 2 * np.pi, (len(BONES), n_per_bone, 1))
    normal = np.cos(ang) * e1[:, None] + np.sin(ang) * e2[:, None]  # (16, n, 3)
    pts = a[:, None] + s * axis[:, None] + normal * (_RADIUS * height)[:, None, None]
    p, n = pts.reshape(-1, 3), normal.reshape(-1, 3)
    bi = np.repeat(np.arange(len(BONES)), n_per_bone)
    if towards is not None:  # keep the surface the sensor sees
        facing = np.einsum("ij,ij->i", n, towards - p) > 0
        p, n, bi = p[facing], n[facing], bi[facing]
    return p, n, bi


def radar_points(joints: np.ndarray, velocity: np.ndarray, height: float, room: Room,
                 rng: np.random.Generator) -> np.ndarray:
    """One radar frame (rig frame) → N x 5 float64 (x, y, z, doppler m/s, intensity dB)."""
    origin = np.zeros(3)
    p, _, bone = body_surface(joints, height, 12, rng, towards=origin)
    v = 0.5 * (velocity[_BONE_A[bone]] + velocity[_BONE_B[bone]])
    rng_m = np.linalg.norm(p, axis=1)
    v_r = np.einsum("ij,ij->i", v, p) / rng_m
    rcs = _RADIUS[bone] / 0.05
    p_det = (0.04 + 0.9 * (1 - np.exp(-np.abs(v_r) / 0.12))) * np.clip((3.0 / rng_m) ** 2, 0.2, 1.0)
    keep = rng.uniform(size=len(p)) < p_det
    p, v_r, rng_m, rcs = p[keep], v_r[keep], rng_m[keep], rcs[keep]
    # measurement: range 4 cm bins, angles +-2 deg noise, Doppler 0.04 m/s bins
    az = np.arctan2(p[:, 0], p[:, 1]) + rng.normal(0, 2 * np.pi / 180, len(p))
    el = np.arcsin(p[:, 2] / rng_m) + rng.normal(0, 4 * np.pi / 180, len(p))
    r_q = np.round(rng_m / 0.04) * 0.04
    xyz = np.stack([r_q * np.cos(el) * np.sin(az), r_q * np.cos(el) * np.cos(az), r_q * np.sin(el)], 1)
    dop = np.round(v_r / 0.04) * 0.04
    inten = 10 * np.log10(rcs / rng_m**4 + 1e-12) + 60 + rng.normal(0, 2, len(p))
    n_ghost = rng.poisson(room.radar_ghosts)
    ghosts = np.stack([rng.uniform(-room.width / 2, room.width / 2, n_ghost), rng.uniform(1.0, room.depth, n_ghost),
                       rng.uniform(-room.sensor_height, 1.0, n_ghost), rng.normal(0, 0.3, n_ghost),
                       rng.normal(2, 3, n_ghost)], 1)
    return np.concatenate([np.concatenate([xyz, dop[:, None], inten[:, None]], 1), ghosts])


def lidar_points(joints: np.ndarray, height: float, room: Room, rng: np.random.Generator) -> np.ndarray:
    """One LiDAR frame (rig frame) → N x 3 float64: body surface, floor, back wall, furniture, 1.5 cm noise."""
    body, _, _ = body_surface(joints, height, 40, rng, towards=np.zeros(3))
    parts = [body]
    n_floor = 300
    fx = rng.uniform(-room.width / 2, room.width / 2, n_floor)
    fy = rng.uniform(0.8, room.depth, n_floor) ** 1.0
    parts.append(np.stack([fx, fy, np.full(n_floor, -room.sensor_height)], 1))
    n_wall = 200
    parts.append(np.stack([rng.uniform(-room.width / 2, room.width / 2, n_wall), np.full(n_wall, room.depth),
                           rng.uniform(-room.sensor_height, 2.5 - room.sensor_height, n_wall)], 1))
    for (x, y, w, d, h) in room.furniture:
        n = 60
        parts.append(np.stack([x + rng.uniform(-w / 2, w / 2, n), np.full(n, y - d / 2),
                               rng.uniform(-room.sensor_height, h - room.sensor_height, n)], 1))
    room_pts = np.concatenate(parts[1:])
    room_pts = room_pts[~_behind_body(room_pts, joints, height)]  # the body shadows what is behind it
    pts = np.concatenate([body, room_pts])
    return pts + rng.normal(0, 0.015, pts.shape)


def _behind_body(pts: np.ndarray, joints: np.ndarray, height: float) -> np.ndarray:
    """Mask of ``pts`` whose ray from the sensor (origin) passes within a bone's radius before reaching them."""
    t = np.linspace(0, 1, 4)[None, :, None]
    centres = (joints[_BONE_A][:, None] * (1 - t) + joints[_BONE_B][:, None] * t).reshape(-1, 3)  # (64, 3)
    radius = np.repeat(_RADIUS * height * 1.2, 4)
    dist_pts = np.linalg.norm(pts, axis=1)
    d = pts / dist_pts[:, None]
    proj = d @ centres.T  # (N, 64)
    off = np.linalg.norm(centres[None] - proj[..., None] * d[:, None], axis=2)
    return ((off < radius) & (proj > 0) & (proj < dist_pts[:, None])).any(axis=1)


@dataclass
class CameraModel:
    """Pinhole camera on the rig, tilted down, for small RGB and depth frames."""

    width: int = 64
    height: int = 48
    fov_deg: float = 70.0
    tilt: float = 0.1
    extra: dict = field(default_factory=dict)

    def project(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, s = np.cos(self.tilt), np.sin(self.tilt)
        depth = pts[:, 1] * c - pts[:, 2] * s
        up = pts[:, 1] * s + pts[:, 2] * c
        f = self.width / 2 / np.tan(np.deg2rad(self.fov_deg) / 2)
        u = self.width / 2 + f * pts[:, 0] / np.maximum(depth, 1e-3)
        v = self.height / 2 - f * up / np.maximum(depth, 1e-3)
        return np.stack([u, v], 1), depth

    @property
    def focal(self) -> float:
        return self.width / 2 / np.tan(np.deg2rad(self.fov_deg) / 2)


def render(joints: np.ndarray, height: float, room: Room, cam: CameraModel, colors: np.ndarray,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """RGB (H x W x 3 uint8) and depth (H x W uint16, millimetres) of one frame."""
    w, h = cam.width, cam.height
    rgb = Image.new("RGB", (w, h), room.wall_rgb)
    dep = Image.new("I", (w, h), int(room.depth * 1000))
    d_rgb, d_dep = ImageDraw.Draw(rgb), ImageDraw.Draw(dep)
    horizon, _ = cam.project(np.array([[0.0, room.depth, -room.sensor_height]]))
    hz = float(np.clip(horizon[0, 1], 0, h))
    d_rgb.rectangle([0, hz, w, h], fill=room.floor_rgb)
    for row in range(int(hz), h):  # floor depth grows towards the horizon
        ang = (row - h / 2) / cam.focal + cam.tilt
        dist = room.sensor_height / max(np.tan(ang), 1e-3) if ang > 0 else room.depth
        d_dep.line([0, row, w, row], fill=int(min(dist, room.depth) * 1000))
    for (x, y, bw, bd, bh) in room.furniture:
        corners = np.array([[x - bw / 2, y - bd / 2, -room.sensor_height], [x + bw / 2, y - bd / 2, bh - room.sensor_height]])
        uv, z = cam.project(corners)
        box = [min(uv[:, 0]), min(uv[:, 1]), max(uv[:, 0]), max(uv[:, 1])]
        d_rgb.rectangle(box, fill=tuple(int(c * 0.6) for c in room.wall_rgb))
        d_dep.rectangle(box, fill=int(z.mean() * 1000))
    uv, z = cam.project(joints)
    order = np.argsort([-(z[i] + z[k]) for i, k in BONES])
    for b in order:
        i, k = BONES[b]
        zz = 0.5 * (z[i] + z[k])
        width = max(1, int(round(2 * BONE_RADIUS[b] * height * cam.focal / max(zz, 0.3))))
        shade = np.clip(1.25 - 0.12 * zz, 0.6, 1.1)
        col = tuple(int(np.clip(c * shade, 0, 255)) for c in colors[b])
        seg = [float(uv[i, 0]), float(uv[i, 1]), float(uv[k, 0]), float(uv[k, 1])]
        d_rgb.line(seg, fill=col, width=width)
        d_dep.line(seg, fill=int(zz * 1000), width=width)
    img = np.asarray(rgb, dtype=np.float32) + rng.normal(0, 3, (h, w, 3))
    return img.clip(0, 255).astype(np.uint8), np.asarray(dep, dtype=np.int64).clip(0, 65535).astype(np.uint16)


def wifi_csi(joint_frames: np.ndarray, room: Room, height: float, rng: np.random.Generator,
             n_packets: int = 10, f_c: float = 5.32e9, bandwidth: float = 40e6) -> np.ndarray:
    """Complex CSI (3 antennas x 114 subcarriers x n_packets) over one frame interval.

    ``joint_frames``: (n_packets, 17, 3) joint positions (rig frame) at the packet times. H is the sum of
    the LoS, four wall/floor image paths and one scattering path per joint (bistatic length
    |tx - p| + |p - rx|, gain ~ scatterer size / (d1 d2)); antennas are a half-wavelength linear array.
    """
    tx, rx = np.array(room.wifi_tx), np.array(room.wifi_rx)
    lam = C / f_c
    ants = rx[None] + np.outer(np.arange(3) - 1, np.array([lam / 2, 0, 0]))
    freqs = f_c + np.linspace(-bandwidth / 2, bandwidth / 2, 114)
    k = 2 * np.pi * freqs / C  # (114,)
    half_w = room.width / 2
    images = [tx, tx * [1, 1, -1] + [0, 0, -2 * room.sensor_height]]  # LoS and floor bounce
    images += [tx * [-1, 1, 1] + [2 * half_w, 0, 0], tx * [-1, 1, 1] - [2 * half_w, 0, 0],
               tx * [1, -1, 1] + [0, 2 * room.depth, 0]]
    gains = [1.0] + [room.wall_reflection] * 4
    static = np.zeros((3, 114), complex)
    for img, g in zip(images, gains):
        d = np.linalg.norm(ants - img, axis=1)  # (3,)
        static += g / d[:, None] * np.exp(-1j * np.outer(d, k))
    size = np.array([0.12, 0.06, 0.05, 0.04, 0.06, 0.05, 0.04, 0.12, 0.12, 0.05, 0.06, 0.05, 0.04, 0.04,
                     0.05, 0.04, 0.04]) * height / 1.72
    out = np.zeros((3, 114, n_packets), complex)
    for n in range(n_packets):
        p = joint_frames[n]
        d1 = np.linalg.norm(p - tx, axis=1)  # (17,)
        d2 = np.linalg.norm(ants[:, None] - p[None], axis=2)  # (3, 17)
        total = d1[None] + d2
        amp = size[None] * 1.5 / (d1[None] * d2)
        h = static + np.einsum("aj,ajf->af", amp, np.exp(-1j * total[..., None] * k[None, None]))
        agc = rng.normal(1.0, 0.02)
        noise = (rng.normal(size=h.shape) + 1j * rng.normal(size=h.shape)) * 0.004
        out[:, :, n] = (h + noise) * agc * 60.0
    return out
