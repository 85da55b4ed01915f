"""MM-Fi reader for the official layout ``E0x/Sxx/Axx/{rgb,depth,lidar,mmwave,wifi-csi}/frameNNN.*``.

Per action folder ``ground_truth.npy`` holds (frames x 17 x 3) keypoints in metres. LiDAR ``.bin`` is
float64 N x 3, mmWave ``.bin`` float64 N x 5 (x, y, z, doppler, intensity), WiFi ``.mat`` has ``CSIamp``
(3 x 114 x 10). Each frame with CSI also carries the CSI of up to ``past_wifi_frames`` previous frames of its
sequence (``past_wifi.npy``, oldest first, cut at the first missing one): one frame is 0.1 s of packets,
too short for the body's motion to show, and WiFi sensing reads windows of about a second. 0-byte frame
files are treated as a missing modality for that frame (and counted). RGB frames that are images
(``.png``/``.jpg``) become ``image.jpg``; the official release's ``rgb/*.npy`` (2-D keypoints, not pixels)
and ``depth`` have no schema key and are not written.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shards import fileio
from shards.errors import DataError
from shards.records import BadInput, Record
from shards.schema import NUM_ACTIVITIES, NUM_KEYPOINTS, WIFI_SHAPE, check_array, make_key

FRAME_RE = re.compile(r"frame(\d+)\.(\w+)$")
MODALITY_DIRS = ("rgb", "lidar", "mmwave", "wifi-csi")


@dataclass
class MMFiConfig:
    """Options of the MM-Fi reader."""

    frame_rate_hz: float = 10.0
    max_csi_repair_fraction: float = 0.2  # share of non-finite CSI values repaired before a frame is refused
    past_wifi_frames: int = 9  # previous frames' CSI stored with each frame (past_wifi.npy); 0: none


def repair_csi(amp: np.ndarray, path: Path, max_fraction: float) -> tuple[np.ndarray, int]:
    """Replace non-finite CSI amplitudes (real MM-Fi frames hold some -inf) by the mean over the frame's
    finite packets of that antenna/subcarrier; refuse frames where more than ``max_fraction`` is bad."""
    bad = ~np.isfinite(amp)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return amp, 0
    if n_bad > max_fraction * amp.size:
        raise DataError(path, f"{n_bad} of {amp.size} CSI amplitudes are NaN/Inf")
    clean = np.where(bad, np.nan, amp)
    with np.errstate(all="ignore"):
        fill = np.nanmean(clean, axis=-1, keepdims=True)
    fill = np.where(np.isfinite(fill), fill, np.nanmean(clean))
    return np.where(bad, np.broadcast_to(fill, amp.shape), amp), n_bad


class MMFiReader:
    """Index an MM-Fi root into :class:`Record` s (one per frame)."""

    source = "mmfi"

    def __init__(self, cfg: MMFiConfig = MMFiConfig(), bad: BadInput | None = None):
        self.cfg = cfg
        self.bad = bad or BadInput()
        self.empty_frames = 0

    def index(self, root: Path) -> list[Record]:
        root = Path(root)
        if not root.is_dir():
            raise DataError(root, "MM-Fi root folder not found")
        actions = sorted(root.glob("E[0-9]*/S[0-9]*/A[0-9]*"))
        if not actions:
            raise DataError(root, "no E0x/Sxx/Axx action folders found (MM-Fi layout)")
        records: list[Record] = []
        for action_dir in actions:
            try:
                records.extend(self._index_action(action_dir))
            except DataError as exc:
                self.bad(exc)
        return records

    def _index_action(self, action_dir: Path) -> list[Record]:
        env, subject, action = action_dir.parts[-3:]
        activity = int(action[1:]) - 1
        if not 0 <= activity < NUM_ACTIVITIES:
            raise DataError(action_dir, f"activity {action} outside A01-A{NUM_ACTIVITIES}")
        gt_path = action_dir / "ground_truth.npy"
        if not gt_path.is_file():
            raise DataError(gt_path, "file not found")
        try:
            gt = np.load(gt_path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(gt_path, f"not a plain .npy array ({exc})") from exc
        if gt.ndim != 3 or gt.shape[1:] != (NUM_KEYPOINTS, 3):
            raise DataError(gt_path, f"ground truth must be frames x 17 x 3, got {gt.shape}")
        frames: dict[int, dict[str, Path]] = {}
        for mod in MODALITY_DIRS:
            mod_dir = action_dir / mod
            if not mod_dir.is_dir():
                continue
            for f in mod_dir.iterdir():
                m = FRAME_RE.match(f.name)
                if not m:
                    continue
                if f.stat().st_size == 0:
                    self.empty_frames += 1
                    continue
                frames.setdefault(int(m.group(1)), {})[mod] = f
        seq = f"{subject}_{action}"
        records = []
        for number in sorted(frames):
            if not 1 <= number <= gt.shape[0]:
                self.bad(DataError(action_dir, f"frame{number:03d} has no ground-truth row ({gt.shape[0]} frames)"))
                continue
            kp = gt[number - 1]
            if not np.isfinite(kp).all():
                self.bad(DataError(gt_path, f"NaN/Inf keypoints in frame {number}"))
                continue
            meta = {"activity": activity, "keypoints": kp.astype(float).round(6).tolist(), "subject": subject,
                    "env": env, "seq": seq, "index": number, "time": (number - 1) / self.cfg.frame_rate_hz}
            past = []
            if "wifi-csi" in frames[number]:
                for prev in range(number - 1, max(0, number - self.cfg.past_wifi_frames - 1), -1):
                    if "wifi-csi" not in frames.get(prev, {}):
                        break
                    past.insert(0, frames[prev]["wifi-csi"])
            records.append(Record(key=make_key(self.source, env, seq, number), source=self.source, group=env,
                                  seq=seq, meta=meta, load=self._loader(frames[number], meta, past)))
        return records

    def _read_csi(self, path: Path) -> tuple[np.ndarray, int]:
        """``CSIamp`` of one frame file, checked and with non-finite values repaired (and their count)."""
        mat = fileio.read_mat(path)
        if "CSIamp" not in mat:
            raise DataError(path, f"no 'CSIamp' key (keys: {sorted(mat)})")
        amp = np.asarray(mat["CSIamp"], dtype=np.float64)
        if amp.shape != WIFI_SHAPE:
            raise DataError(path, f"CSIamp must be {WIFI_SHAPE}, got {amp.shape}")
        amp, repaired = repair_csi(amp, path, self.cfg.max_csi_repair_fraction)
        return check_array("wifi.npy", amp, str(path)), repaired

    def _loader(self, files: dict[str, Path], meta: dict[str, Any], past: list[Path]):
        def load() -> dict[str, Any]:
            sample: dict[str, Any] = {}
            meta_out = dict(meta)
            if "rgb" in files and files["rgb"].suffix.lower() in (".png", ".jpg", ".jpeg"):
                sample["image.jpg"] = fileio.read_jpeg_bytes(files["rgb"])
            if "lidar" in files:
                pts = fileio.read_float64_bin(files["lidar"], columns=3)
                sample["lidar.npy"] = check_array("lidar.npy", pts, str(files["lidar"]))
            if "mmwave" in files:
                pts = fileio.read_float64_bin(files["mmwave"], columns=5)
                sample["radar.npy"] = check_array("radar.npy", pts, str(files["mmwave"]))
            if "wifi-csi" in files:
                sample["wifi.npy"], repaired = self._read_csi(files["wifi-csi"])
                if repaired:
                    meta_out["wifi_repaired"] = repaired
            if past:
                amps, repaired = zip(*(self._read_csi(p) for p in past))
                if sum(repaired):
                    meta_out["past_wifi_repaired"] = sum(repaired)
                sample["past_wifi.npy"] = check_array("past_wifi.npy", np.stack(amps), str(past[-1]))
            sample["meta.json"] = meta_out
            return sample
        return load
