"""The vehicle twin report's reading of its blockage column: passes in time order, and how predictable the
future-blockage label is (majority, persistence, run lengths), and the radar bearing error, by hand."""
from __future__ import annotations

import numpy as np
import pytest

from twin.vehicle_report import bearing_error, blockage_predictability, blockage_series


def test_blockage_series_are_passes_in_time_order(tmp_path):
    base = tmp_path / "scenario1"
    base.mkdir()
    rows = [(3, 1, 1), (1, 1, 0), (2, 1, 1), (5, 2, 0), (4, 2, 1)]  # index, seq_index, blockage; out of order
    (base / "scenario1.csv").write_text("index,seq_index,blockage\n" + "".join(f"{i},{q},{b}\n" for i, q, b in rows))
    series = blockage_series(tmp_path)
    assert [s.tolist() for s in series] == [[0, 1, 1], [1, 0]]


def test_blockage_predictability_by_hand():
    series = [np.array([0, 0, 1, 1, 0, 0, 0, 0]), np.array([1, 1, 1]), np.array([0, 1])]  # the last: too short
    got = blockage_predictability(series, horizon=2, kind="at")
    # labels: s[2:] of the first two passes = [1, 1, 0, 0, 0, 0] + [1]; frame t's state: [0, 0, 1, 1, 0, 0] + [1]
    assert got["labels"] == 7 and got["positive_rate"] == pytest.approx(3 / 7)
    assert got["majority_accuracy"] == pytest.approx(4 / 7)
    assert got["persistence_accuracy"] == pytest.approx(3 / 7)
    assert got["blocked_run_median_frames"] == pytest.approx(2.0)  # runs of 2, 3 and 1 frames


def test_blockage_predictability_within_the_horizon_by_hand():
    series = [np.array([0, 0, 1, 1, 0, 0, 0, 0]), np.array([1, 1, 1]), np.array([0, 1])]
    got = blockage_predictability(series, horizon=2)
    # any of frames t+1, t+2 blocked: [1,1,1,0,0,0] for the first pass (t = 0..5), [1] for the second
    assert got["labels"] == 7 and got["positive_rate"] == pytest.approx(4 / 7)
    assert got["majority_accuracy"] == pytest.approx(4 / 7)
    # frame t's state: [0,0,1,1,0,0] + [1] against [1,1,1,0,0,0] + [1]
    assert got["persistence_accuracy"] == pytest.approx(4 / 7)


def test_radar_bearing_error_takes_the_nearest_moving_point_by_hand():
    # x across the boresight, y along it: azimuths 45, -45 and 0 deg; the 0-deg point is static (Doppler 0.1)
    points = np.array([[10, 10, 0, 3.0, 20], [-5, 5, 0, -1.0, 30], [0, 8, 0, 0.1, 40]], np.float32)
    assert bearing_error(points, 40.0) == pytest.approx(5.0, abs=1e-4)
    assert bearing_error(points, -30.0) == pytest.approx(-15.0, abs=1e-4)
    assert abs(bearing_error(points, 0.0)) == pytest.approx(45.0, abs=1e-4)  # the static point does not count
    assert np.isnan(bearing_error(points[2:], 0.0)) and np.isnan(bearing_error(np.zeros((0, 5)), 0.0))


def test_radar_bearing_names_a_bad_cube(tmp_path):
    from twin.vehicle_report import radar_bearing
    base = tmp_path / "scenario1"
    (base / "unit1").mkdir(parents=True)
    np.save(base / "unit1" / "radar_0.npy", np.zeros((4, 8), np.complex64))  # 2-D: not rx x samples x chirps
    (base / "scenario1.csv").write_text("index,unit1_radar\n1,./unit1/radar_0.npy\n")
    (base / "twin_truth.csv").write_text("index,los_angle_deg,blocked\n1,10.0,0\n")
    with pytest.raises(ValueError, match="radar_0.npy: not a radar cube"):
        radar_bearing(tmp_path, max_angle_deg=42.0, stride=1)
