"""The human twin: MM-Fi layout, determinism, physical consistency, and reading back through shards/."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import scipy.io

from shards.mmfi import MMFiReader
from shards.records import BadInput
from twin.__main__ import main as twin_main
from twin.activities import ACTIVITY_NAMES
from twin.humans import HumanTwinConfig, generate
from twin.skeleton import BONES


def _tiny(path, **kw):
    cfg = HumanTwinConfig(**{**dict(envs=1, subjects=1, frames=6, activities=3, workers=1, seed=5), **kw})
    generate(path, cfg, progress=False)
    return path


def test_layout_and_reading_back(tmp_path):
    root = _tiny(tmp_path / "h", envs=2, subjects=2, activities=4)
    assert sorted(p.name for p in root.glob("E*")) == ["E01", "E02"]
    assert (root / "E02/S11/A04/wifi-csi/frame006.mat").is_file()  # MM-Fi numbering: S11.. in E02
    gt = np.load(root / "E01/S01/A01/ground_truth.npy")
    assert gt.shape == (6, 17, 3) and gt.dtype == np.float64
    bad = BadInput(skip_bad=False)
    records = MMFiReader(bad=bad).index(root)
    assert len(records) == 2 * 4 * 6
    for r in records:
        s = r.load()
        assert {"image.jpg", "lidar.npy", "radar.npy", "wifi.npy", "meta.json"} <= set(s)
        assert s["wifi.npy"].shape == (3, 114, 10) and np.isfinite(s["wifi.npy"]).all()
    info = json.loads((root / "twin_info.json").read_text())
    assert info["activities"]["A01"] == ACTIVITY_NAMES[0] and info["frames_written"] == 48


def test_deterministic_for_a_seed(tmp_path):
    a, b = _tiny(tmp_path / "a"), _tiny(tmp_path / "b")
    for f in sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "twin_info.json"):
        if f.suffix == ".mat":  # MAT headers carry a creation time: compare the arrays
            ma, mb = scipy.io.loadmat(a / f), scipy.io.loadmat(b / f)
            assert all(np.array_equal(ma[k], mb[k]) for k in ("CSIamp", "CSIphase")), f
        else:
            assert (a / f).read_bytes() == (b / f).read_bytes(), f
    c = _tiny(tmp_path / "c", seed=6)
    assert (a / "E01/S01/A01/ground_truth.npy").read_bytes() != (c / "E01/S01/A01/ground_truth.npy").read_bytes()


def test_bodies_are_rigid_and_sensors_follow_the_body(tmp_path):
    root = _tiny(tmp_path / "h", activities=8, frames=20)  # A08: jumping up
    gt = np.load(root / "E01/S01/A08/ground_truth.npy")
    lengths = np.linalg.norm(gt[:, [a for a, _ in BONES]] - gt[:, [b for _, b in BONES]], axis=2)
    assert np.ptp(lengths, axis=0).max() < 1e-6  # bone lengths constant over time
    assert np.ptp(gt[:, 10, 2]) > 0.15  # the head moves up and down by the jump
    # LiDAR points cluster on the body: many lie within 15 cm of a bone
    pts = np.fromfile(root / "E01/S01/A08/lidar/frame010.bin", "<f8").reshape(-1, 3)
    seg_a, seg_b = gt[9, [a for a, _ in BONES]], gt[9, [b for _, b in BONES]]
    t = np.clip(np.einsum("nkj,kj->nk", pts[:, None] - seg_a, seg_b - seg_a) / np.sum((seg_b - seg_a) ** 2, 1), 0, 1)
    dist = np.linalg.norm(pts[:, None] - (seg_a + t[..., None] * (seg_b - seg_a)), axis=2).min(1)
    assert (dist < 0.15).sum() > 100
    # radar Doppler: a jumping body gives moving points, a standing one far fewer
    moving = [np.fromfile(p, "<f8").reshape(-1, 5) for p in sorted((root / "E01/S01/A08/mmwave").glob("*.bin"))]
    assert np.mean([np.abs(m[:, 3]).max() if len(m) else 0 for m in moving]) > 0.2



def test_every_action_has_its_own_spot_near_the_subjects(monkeypatch):
    """Each action is recorded with the subject standing anew: the trajectories of a subject's actions differ
    by the action's own spot, within ACTION_SPOT_M of the subject's habitual spot in x and y."""
    import twin.humans as humans
    subject = humans.make_subject(1, 0, seed=5)
    moved = [humans.simulate_action(subject, a, frames=4, seed=5) for a in range(6)]
    bound = humans.ACTION_SPOT_M
    monkeypatch.setattr(humans, "ACTION_SPOT_M", 0.0)
    spots = []
    for a in range(6):
        unmoved = humans.simulate_action(replace(subject, offset=(0.0, 0.0)), a, frames=4, seed=5)
        shift = (moved[a] - unmoved)[..., :2].reshape(-1, 2)
        assert np.ptp(shift, axis=0).max() < 1e-9  # one rigid move of the whole action
        spots.append(shift[0] - np.array(subject.offset))
    spots = np.array(spots)
    assert bound > 0 and np.abs(spots).max() <= bound and len({tuple(np.round(s, 6)) for s in spots}) == 6
    assert np.ptp(spots, axis=0).min() > 0.05  # the spots spread, not one shared offset

@pytest.mark.slow
def test_small_preset_and_report(tmp_path, capsys):
    out = tmp_path / "small"
    assert twin_main(["humans", "--out", str(out), "--small", "--no-progress", "--workers", "2"]) == 0
    assert twin_main(["report", str(out)]) == 0
    result = json.loads((out / "report/humans.json").read_text())
    assert result["chance"] == pytest.approx(1 / 27)
    assert 2 * result["chance"] < result["accuracy"] < 0.95
    window = result["csi_window_accuracy"]  # 8 frames per action: the 10-frame window does not fit
    assert set(window) == {"1", "5"} and all(0 <= v <= 1 for v in window.values())
    assert (out / "report/humans.png").stat().st_size > 10_000
