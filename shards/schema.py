"""The sample schema of DESIGN.md: keys, dtypes, checks, and safe (pickle-free) encode/decode.

A sample in memory is a dict ``{"__key__": str, "image.jpg": bytes, "radar.npy": ndarray, ...,
"meta.json": dict}``; only the modalities its source has are present.
"""
from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np

from shards.errors import DataError

MODALITY_KEYS: dict[str, str] = {
    "image": "image.jpg",
    "radar": "radar.npy",
    "lidar": "lidar.npy",
    "gps": "gps.npy",
    "beam": "beam.npy",
    "wifi": "wifi.npy",
    "past_beam": "past_beam.npy",
    "past_wifi": "past_wifi.npy",
}
META_KEY = "meta.json"
ALLOWED_KEYS = frozenset(MODALITY_KEYS.values()) | {META_KEY, "__key__"}
NUM_ACTIVITIES = 27
NUM_KEYPOINTS = 17
WIFI_SHAPE = (3, 114, 10)


def make_key(source: str, group: str, seq: Any, index: Any) -> str:
    """``{source}/{scenario_or_env}/{seq}/{index}``; dots are not allowed (WebDataset splits on them)."""
    key = f"{source}/{group}/{seq}/{index}"
    if "." in key:
        raise ValueError(f"sample key {key!r} must not contain '.'")
    return key


def check_array(name: str, arr: np.ndarray, path: str) -> np.ndarray:
    """Validate the shape/dtype of one schema array and reject NaN/Inf; return it in the schema dtype."""
    if name == "radar.npy":
        if arr.ndim != 2 or arr.shape[1] != 5:
            raise DataError(path, f"radar points must be N x 5, got shape {arr.shape}")
        arr = arr.astype("<f4")
    elif name == "lidar.npy":
        if arr.ndim != 2 or arr.shape[1] not in (3, 4):
            raise DataError(path, f"LiDAR points must be N x 3 or N x 4, got shape {arr.shape}")
        arr = arr.astype("<f4")
    elif name == "gps.npy":
        if arr.shape != (4,):
            raise DataError(path, f"gps must hold 4 values (east, north, lat, lon), got shape {arr.shape}")
        arr = arr.astype("<f8")
    elif name == "beam.npy":
        if arr.ndim != 1 or arr.size < 2:
            raise DataError(path, f"beam power must be a vector, got shape {arr.shape}")
        arr = arr.astype("<f4")
    elif name == "past_beam.npy":
        if arr.ndim != 2:
            raise DataError(path, f"past beam powers must be T x B, got shape {arr.shape}")
        arr = arr.astype("<f4")
    elif name == "wifi.npy":
        if arr.shape != WIFI_SHAPE:
            raise DataError(path, f"WiFi CSI amplitude must be {WIFI_SHAPE}, got shape {arr.shape}")
        arr = arr.astype("<f4")
    elif name == "past_wifi.npy":
        if arr.ndim != 4 or arr.shape[0] < 1 or arr.shape[1:] != WIFI_SHAPE:
            raise DataError(path, f"past WiFi CSI must be T x {' x '.join(map(str, WIFI_SHAPE))} (T >= 1), "
                                  f"got shape {arr.shape}")
        arr = arr.astype("<f4")
    else:
        raise DataError(path, f"unknown array key {name!r}")
    finite = np.isfinite(arr[..., :2] if name == "gps.npy" else arr)
    if not finite.all():
        raise DataError(path, f"{np.size(finite) - int(finite.sum())} NaN/Inf value(s) in {name}")
    return arr


def encode_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}


def decode_npy(data: bytes, where: str = "<bytes>") -> np.ndarray:
    """Load a ``.npy`` payload; object arrays (which would need pickle) are refused.

    Shards repeat a handful of headers (one per array kind and shape), so a version-1.0 header is parsed once
    by numpy and remembered: the streaming reader then spends its time on the data, not on ``literal_eval``.
    """
    if data[:8] == b"\x93NUMPY\x01\x00" and len(data) >= 10:
        end = 10 + int.from_bytes(data[8:10], "little")
        header = data[10:end]
        known = _NPY_HEADERS.get(header)
        if known is None:
            arr = decode_npy_numpy(data, where)
            if len(_NPY_HEADERS) < 4096:
                _NPY_HEADERS[header] = (arr.dtype, arr.shape, bool(np.isfortran(arr) and arr.ndim > 1))
            return arr
        dtype, shape, fortran = known
        count = math.prod(shape)  # 1 for a 0-d array
        if len(data) - end != count * dtype.itemsize:
            raise DataError(where, f"not a plain .npy array (payload of {len(data) - end} bytes for shape {shape})")
        flat = np.frombuffer(data, dtype=dtype, count=count, offset=end).copy()  # writable, like np.load
        return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
    return decode_npy_numpy(data, where)


def decode_npy_numpy(data: bytes, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise DataError(where, f"not a plain .npy array ({exc})") from exc


def encode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Turn an in-memory sample into the byte payloads written to the tar."""
    out: dict[str, Any] = {"__key__": sample["__key__"]}
    for name, value in sample.items():
        if name == "__key__":
            continue
        if name not in ALLOWED_KEYS:
            raise ValueError(f"key {name!r} is not part of the sample schema")
        if name.endswith(".npy"):
            out[name] = encode_npy(value)
        elif name == META_KEY:
            out[name] = json.dumps(value, sort_keys=True).encode()
        else:  # image.jpg: already JPEG bytes
            out[name] = bytes(value)
    return out
