"""Readers for the individual files of DeepSense 6G and MM-Fi folders, with errors that name the file."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from shards.errors import DataError


def _need(path: Path) -> None:
    if not path.is_file():
        raise DataError(path, "file not found")


def read_vector(path: Path, expected: int | None = None) -> np.ndarray:
    """A text file with one number per line (DeepSense power files: 64 lines, linear power)."""
    _need(path)
    try:
        values = np.loadtxt(path, dtype=np.float64, ndmin=1)
    except ValueError as exc:
        raise DataError(path, f"not a column of numbers ({exc})") from exc
    values = values.reshape(-1)
    if expected is not None and values.size != expected:
        raise DataError(path, f"expected {expected} numbers, found {values.size}")
    if not np.isfinite(values).all():
        raise DataError(path, "holds NaN/Inf values")
    return values


def read_latlon(path: Path) -> tuple[float, float]:
    """DeepSense GPS file: two lines, latitude then longitude (degrees)."""
    values = read_vector(path, expected=2)
    lat, lon = float(values[0]), float(values[1])
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise DataError(path, f"latitude/longitude out of range: {lat}, {lon}")
    return lat, lon


def read_jpeg_bytes(path: Path) -> bytes:
    """Bytes of a camera frame, verified to decode as an RGB image; PNGs are re-encoded as JPEG."""
    _need(path)
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            fmt = img.format
            if fmt == "JPEG" and img.mode == "RGB":
                return data
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="JPEG", quality=95)
            return buf.getvalue()
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(path, f"corrupt or unreadable image ({exc})") from exc


def read_mat(path: Path) -> dict[str, np.ndarray]:
    """A MATLAB v5 ``.mat`` file (scipy; no pickle). v7.3 (HDF5) files get a clear error."""
    _need(path)
    try:
        content = scipy.io.loadmat(path)
    except NotImplementedError as exc:
        raise DataError(path, "MATLAB v7.3 (HDF5) .mat files are not supported; re-save with -v7") from exc
    except (ValueError, TypeError, OSError) as exc:
        raise DataError(path, f"corrupt .mat file ({exc})") from exc
    return {k: v for k, v in content.items() if not k.startswith("__")}


def _numeric_array(mat: dict[str, np.ndarray], path: Path, preferred: tuple[str, ...]) -> np.ndarray:
    for key in preferred:
        if key in mat:
            return np.asarray(mat[key])
    arrays = [v for v in mat.values() if isinstance(v, np.ndarray) and v.dtype.kind in "fciu" and v.size > 0]
    if not arrays:
        raise DataError(path, f"no numeric array among keys {sorted(mat)}")
    return max(arrays, key=lambda a: a.size)


def read_lidar(path: Path) -> np.ndarray:
    """LiDAR points as N x 3 or N x 4 float32 from ``.ply``, ``.mat``, ``.npy`` or MM-Fi ``.bin``.

    2-D scans stored as N x 2 (some DeepSense scenarios) get z = 0.
    """
    suffix = path.suffix.lower()
    if suffix == ".ply":
        pts = read_ply(path)
    elif suffix == ".mat":
        pts = _numeric_array(read_mat(path), path, ("data", "points", "lidar", "pc"))
    elif suffix == ".npy":
        _need(path)
        try:
            pts = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise DataError(path, f"not a plain .npy array ({exc})") from exc
    elif suffix == ".bin":
        pts = read_float64_bin(path, columns=3)
    else:
        raise DataError(path, f"unsupported LiDAR file type {suffix!r}")
    pts = np.asarray(pts, dtype=np.float64)
    if pts.ndim == 2 and pts.shape[1] not in (2, 3, 4) and pts.shape[0] in (2, 3, 4):
        pts = pts.T
    if pts.ndim != 2 or pts.shape[1] not in (2, 3, 4):
        raise DataError(path, f"LiDAR points must be N x 2/3/4, got shape {pts.shape}")
    if pts.shape[1] == 2:
        pts = np.concatenate([pts, np.zeros((pts.shape[0], 1))], axis=1)
    if not np.isfinite(pts).all():
        raise DataError(path, "LiDAR points hold NaN/Inf values")
    return pts.astype(np.float32)


def read_float64_bin(path: Path, columns: int) -> np.ndarray:
    """MM-Fi point-cloud ``.bin``: raw little-endian float64, reshaped to N x columns."""
    _need(path)
    raw = np.fromfile(path, dtype="<f8")
    if raw.size % columns:
        raise DataError(path, f"{raw.size} float64 values are not a multiple of {columns} columns")
    return raw.reshape(-1, columns)


_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


def read_ply(path: Path) -> np.ndarray:
    """Vertices of a PLY file (ascii or binary): x, y, z and intensity when present."""
    _need(path)
    data = path.read_bytes()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise DataError(path, "not a PLY file (missing 'ply' magic or 'end_header')")
    header = data[:end].decode("ascii", errors="replace").splitlines()
    body = data[end + len(b"end_header"):]
    body = body[1:] if body.startswith(b"\n") else body[2:] if body.startswith(b"\r\n") else body
    fmt, count, props, in_vertex = None, 0, [], False
    for line in header:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "format":
            fmt = parts[1]
        elif parts[0] == "element":
            in_vertex = parts[1] == "vertex"
            if in_vertex:
                count = int(parts[2])
        elif parts[0] == "property" and in_vertex:
            if parts[1] == "list" or parts[1] not in _PLY_TYPES:
                raise DataError(path, f"unsupported PLY vertex property {line!r}")
            props.append((parts[2], _PLY_TYPES[parts[1]]))
    names = [p[0] for p in props]
    if not {"x", "y", "z"} <= set(names):
        raise DataError(path, f"PLY vertices lack x/y/z (have {names})")
    if fmt == "ascii":
        rows = body.decode("ascii", errors="replace").split("\n")[:count]
        try:
            table = np.array([[float(v) for v in r.split()[: len(props)]] for r in rows], dtype=np.float64)
        except ValueError as exc:
            raise DataError(path, f"malformed ASCII PLY vertex row ({exc})") from exc
        if table.shape != (count, len(props)):
            raise DataError(path, f"expected {count} vertices of {len(props)} values, got {table.shape}")
        cols = {n: table[:, i] for i, n in enumerate(names)}
    elif fmt in ("binary_little_endian", "binary_big_endian"):
        order = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(n, order + t) for n, t in props])
        if len(body) < dtype.itemsize * count:
            raise DataError(path, f"truncated PLY: {len(body)} bytes for {count} vertices")
        table = np.frombuffer(body, dtype=dtype, count=count)
        cols = {n: table[n].astype(np.float64) for n in names}
    else:
        raise DataError(path, f"unknown PLY format {fmt!r}")
    keep = ["x", "y", "z"] + [n for n in ("intensity", "reflectivity", "scalar_intensity") if n in cols][:1]
    return np.stack([cols[n] for n in keep], axis=1)
