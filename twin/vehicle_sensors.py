"""Sensor models of the vehicle twin that work on ray-tracer outputs (numpy arrays).

- 64-beam received power: the coherent sum over paths of the 16-element array response, per subcarrier,
  through each codebook beam, averaged over subcarriers, plus receiver noise with a measured-like floor.
- FMCW radar cube: monostatic scatterers (from ray casting) → complex ADC samples, rx x samples x chirps.
- LiDAR: hit points in the base station's frame, intensity from the incidence angle.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from airbind.fmcw import (CHIRP_PERIOD_S, SAMPLE_RATE_HZ, SLOPE_HZ_PER_S, START_FREQ_HZ,
                          SPEED_OF_LIGHT as C)


@dataclass(frozen=True)
class BeamConfig:
    """The BS phased array and its codebook.

    64 beams steered uniformly over +-42 deg (the measured DeepSense 60 GHz codebook sweeps ~135 deg → ~53 deg
    of its 0-180 deg pattern scan), weights quantised to ``phase_bits`` as in a phase-shifter array.
    """

    n_antennas: int = 16
    n_beams: int = 64
    max_angle_deg: float = 42.0
    phase_bits: int = 3
    carrier_hz: float = 60e9
    bandwidth_hz: float = 500e6
    n_subcarriers: int = 16
    snr_db_at_30m: float = -3.0    # best-beam LoS SNR at 30 m: sets the noise floor (scenario-5-like dynamic range)
    noise_looks: int = 40          # averaging of the power measurement: floor fluctuates ~1/sqrt(looks)
    floor_units: float = 0.07      # the noise floor in the file's units (as in the measured scenario 5)

    def frequencies(self) -> np.ndarray:
        return self.carrier_hz + np.linspace(-self.bandwidth_hz / 2, self.bandwidth_hz / 2, self.n_subcarriers)

    def angles(self) -> np.ndarray:
        """Steering angle of each beam (radians, positive to the right): beam 0 is the left-most, so the index
        grows with the clockwise bearing of the vehicle, as in the measured scenario 5."""
        return np.deg2rad(np.linspace(-self.max_angle_deg, self.max_angle_deg, self.n_beams))

    def codebook(self, element_positions: np.ndarray, frame: np.ndarray) -> np.ndarray:
        """(n_beams, n_antennas) unit-norm weights steering to the beam azimuths.

        ``element_positions``: (n_antennas, 3) world offsets of the array elements (m); ``frame``: rows x
        (right), y (boresight), z (up) of the BS in world coordinates. Beam b steers to azimuth angles()[b],
        positive to the right; phases are quantised to ``phase_bits``.
        """
        ang = self.angles()
        local = np.stack([np.sin(ang), np.cos(ang), np.zeros_like(ang)], 1)
        k = 2 * np.pi * self.carrier_hz / C * (local @ frame)  # (beams, 3) wave vectors
        phase = k @ element_positions.T
        step = 2 * np.pi / 2 ** self.phase_bits
        phase = np.round(phase / step) * step
        return np.exp(1j * phase) / np.sqrt(len(element_positions))

    def noise_power(self) -> float:
        """Noise power (same units as |w^H h|^2) from the SNR of a boresight LoS link at 30 m."""
        lam = C / self.carrier_hz
        return self.n_antennas * (lam / (4 * np.pi * 30.0)) ** 2 / 10 ** (self.snr_db_at_30m / 10)


def beam_power(h: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Noise-free received power per beam: mean over subcarriers of |w_b^H h(f)|^2.

    ``h``: (..., n_antennas, n_subcarriers) channel frequency response; returns (..., n_beams).
    """
    y = np.einsum("bm,...mf->...bf", weights.conj(), h)
    return (np.abs(y) ** 2).mean(axis=-1)


def measured_power(signal: np.ndarray, cfg: BeamConfig, rng: np.random.Generator) -> np.ndarray:
    """Signal power + a noise floor that fluctuates like an averaged measurement, in file units."""
    noise = cfg.noise_power()
    floor = rng.gamma(cfg.noise_looks, 1.0 / cfg.noise_looks, signal.shape) * noise
    return (signal + floor) / noise * cfg.floor_units


@dataclass(frozen=True)
class FMCWConfig:
    """Chirp of the twin's radar (defaults from airbind.fmcw, shared with shards' RadarConfig)."""

    start_freq_hz: float = START_FREQ_HZ
    slope_hz_per_s: float = SLOPE_HZ_PER_S
    sample_rate_hz: float = SAMPLE_RATE_HZ
    chirp_period_s: float = CHIRP_PERIOD_S
    n_rx: int = 4
    n_samples: int = 128
    n_chirps: int = 64
    noise_std: float = 0.02

    @property
    def max_range(self) -> float:
        return self.sample_rate_hz * C / (2 * self.slope_hz_per_s)


def radar_cube(ranges: np.ndarray, sin_az: np.ndarray, v_r: np.ndarray, amp: np.ndarray, cfg: FMCWConfig,
               rng: np.random.Generator) -> np.ndarray:
    """Complex IQ cube (rx, samples, chirps) of point scatterers: beat frequency 2 S R / c, Doppler phase
    4 pi v T_c / lambda per chirp, half-wavelength receive array phase pi m sin(az)."""
    keep = ranges < cfg.max_range * 0.95
    ranges, sin_az, v_r, amp = ranges[keep], sin_az[keep], v_r[keep], amp[keep]
    lam = C / cfg.start_freq_hz
    n = np.arange(cfg.n_samples)
    c = np.arange(cfg.n_chirps)
    m = np.arange(cfg.n_rx)
    f_beat = 2 * cfg.slope_hz_per_s * ranges / C
    fast = np.exp(2j * np.pi * np.outer(f_beat / cfg.sample_rate_hz, n))         # (k, samples)
    slow = np.exp(4j * np.pi * np.outer(v_r * cfg.chirp_period_s / lam, c))     # (k, chirps)
    space = np.exp(1j * np.pi * np.outer(sin_az, m))                           # (k, rx)
    a = (amp[:, None, None] * space[:, :, None] * fast[:, None, :]).reshape(len(amp), -1)  # (k, rx*samples)
    cube = (a.T @ slow).reshape(cfg.n_rx, cfg.n_samples, cfg.n_chirps)
    noise = rng.normal(size=cube.shape) + 1j * rng.normal(size=cube.shape)
    return (cube + cfg.noise_std * noise).astype(np.complex64)
