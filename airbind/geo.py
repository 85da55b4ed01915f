"""Latitude/longitude to local metres east/north of a reference point (WGS84 local tangent plane)."""
from __future__ import annotations

import numpy as np

WGS84_A = 6378137.0
WGS84_E2 = 6.69437999014e-3


def latlon_to_en(lat: np.ndarray, lon: np.ndarray, lat0: float, lon0: float) -> tuple[np.ndarray, np.ndarray]:
    """East/north metres of (lat, lon) relative to (lat0, lon0).

    Uses the meridional radius M and prime-vertical radius N at lat0; exact to centimetres over the few
    hundred metres of a DeepSense scene.
    """
    phi0 = np.deg2rad(lat0)
    s2 = np.sin(phi0) ** 2
    n_radius = WGS84_A / np.sqrt(1.0 - WGS84_E2 * s2)
    m_radius = WGS84_A * (1.0 - WGS84_E2) / (1.0 - WGS84_E2 * s2) ** 1.5
    east = np.deg2rad(np.asarray(lon, dtype=np.float64) - lon0) * n_radius * np.cos(phi0)
    north = np.deg2rad(np.asarray(lat, dtype=np.float64) - lat0) * m_radius
    return east, north


def en_to_latlon(east: np.ndarray, north: np.ndarray, lat0: float, lon0: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`latlon_to_en` (used by the digital twin to write GPS files)."""
    phi0 = np.deg2rad(lat0)
    s2 = np.sin(phi0) ** 2
    n_radius = WGS84_A / np.sqrt(1.0 - WGS84_E2 * s2)
    m_radius = WGS84_A * (1.0 - WGS84_E2) / (1.0 - WGS84_E2 * s2) ** 1.5
    lat = lat0 + np.rad2deg(np.asarray(north, dtype=np.float64) / m_radius)
    lon = lon0 + np.rad2deg(np.asarray(east, dtype=np.float64) / (n_radius * np.cos(phi0)))
    return lat, lon
