"""FMCW radar cube → point cloud: range FFT, Doppler FFT, CA-CFAR detection, angle FFT.

DeepSense 6G stores one radar frame as a complex cube ``rx x samples x chirps`` (4 x 256 x 128). The
defaults of :class:`RadarConfig` describe a 77 GHz TI-style sensor of that shape; pass the values of your
sensor when they differ (range and velocity scale with them, detections do not).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter, uniform_filter

from airbind.fmcw import (CHIRP_PERIOD_S, SAMPLE_RATE_HZ, SLOPE_HZ_PER_S, START_FREQ_HZ,
                          SPEED_OF_LIGHT as C)


@dataclass(frozen=True)
class RadarConfig:
    """FMCW chirp parameters and detector settings."""

    start_freq_hz: float = START_FREQ_HZ
    slope_hz_per_s: float = SLOPE_HZ_PER_S
    sample_rate_hz: float = SAMPLE_RATE_HZ
    chirp_period_s: float = CHIRP_PERIOD_S
    angle_fft: int = 64
    guard: tuple[int, int] = (2, 2)
    train: tuple[int, int] = (8, 4)
    pfa: float = 1e-4
    max_points: int = 256
    remove_static: bool = False
    complex_iq: bool = True  # complex (IQ) ADC samples: every range bin is valid; real ADC: the lower half

    @property
    def wavelength(self) -> float:
        return C / self.start_freq_hz

    def range_axis(self, n_samples: int) -> np.ndarray:
        """Metres per range bin: beat frequency k * fs / N  →  R = f_b c / (2 S)."""
        return np.arange(n_samples) * self.sample_rate_hz / n_samples * C / (2.0 * self.slope_hz_per_s)

    def velocity_axis(self, n_chirps: int) -> np.ndarray:
        """Radial velocity (m/s, positive = receding) per Doppler bin after fftshift."""
        return np.fft.fftshift(np.fft.fftfreq(n_chirps, d=self.chirp_period_s)) * self.wavelength / 2.0


def ca_cfar_2d(power: np.ndarray, guard: tuple[int, int], train: tuple[int, int], pfa: float) -> np.ndarray:
    """Cell-averaging CFAR on a (range, Doppler) power map; Doppler wraps around, range does not."""
    outer = (2 * (guard[0] + train[0]) + 1, 2 * (guard[1] + train[1]) + 1)
    inner = (2 * guard[0] + 1, 2 * guard[1] + 1)
    mode = ("nearest", "wrap")
    sum_outer = uniform_filter(power, size=outer, mode=mode) * (outer[0] * outer[1])
    sum_inner = uniform_filter(power, size=inner, mode=mode) * (inner[0] * inner[1])
    n_train = outer[0] * outer[1] - inner[0] * inner[1]
    noise = (sum_outer - sum_inner) / n_train
    alpha = n_train * (pfa ** (-1.0 / n_train) - 1.0)
    peaks = power == maximum_filter(power, size=3, mode=mode)
    return (power > alpha * noise) & peaks


def cube_to_points(cube: np.ndarray, cfg: RadarConfig = RadarConfig()) -> np.ndarray:
    """Radar cube (rx, samples, chirps) complex → N x 5 float32 points (x, y, z, doppler, intensity dB).

    x is across the boresight, y along it (metres); z = 0 since a linear array has no elevation.
    """
    cube = np.asarray(cube)
    if cube.ndim != 3:
        raise ValueError(f"radar cube must be 3-D (rx, samples, chirps), got shape {cube.shape}")
    n_rx, n_samples, n_chirps = cube.shape
    data = cube.astype(np.complex64)
    if cfg.remove_static:
        data = data - data.mean(axis=2, keepdims=True)
    win_r = np.hanning(n_samples).astype(np.float32)[None, :, None]
    win_d = np.hanning(n_chirps).astype(np.float32)[None, None, :]
    rd = np.fft.fft(data * win_r, axis=1)
    rd = np.fft.fftshift(np.fft.fft(rd * win_d, axis=2), axes=2)
    power = (np.abs(rd) ** 2).sum(axis=0)
    if not cfg.complex_iq:
        half = n_samples // 2  # real-sampled IF: the upper half mirrors the lower one
        power, rd = power[:half], rd[:, :half]
    detections = ca_cfar_2d(power, cfg.guard, cfg.train, cfg.pfa)
    detections[0, :] = False  # DC / antenna leakage bin
    r_idx, d_idx = np.nonzero(detections)
    if r_idx.size == 0:
        return np.zeros((0, 5), np.float32)
    strength = power[r_idx, d_idx]
    order = np.argsort(strength)[::-1][: cfg.max_points]
    r_idx, d_idx, strength = r_idx[order], d_idx[order], strength[order]
    spectrum = np.fft.fftshift(np.fft.fft(rd[:, r_idx, d_idx], n=cfg.angle_fft, axis=0), axes=0)
    a_idx = np.abs(spectrum).argmax(axis=0)
    sin_theta = np.clip((a_idx - cfg.angle_fft // 2) * 2.0 / cfg.angle_fft, -1.0, 1.0)
    rng = cfg.range_axis(n_samples)[r_idx]
    vel = cfg.velocity_axis(n_chirps)[d_idx]
    x = rng * sin_theta
    y = rng * np.sqrt(1.0 - sin_theta**2)
    points = np.stack([x, y, np.zeros_like(x), vel, 10.0 * np.log10(strength + 1e-12)], axis=1)
    return points.astype(np.float32)
