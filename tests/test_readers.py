"""DeepSense 6G and MM-Fi readers on fixtures built in the real layouts, plus the file readers."""
from __future__ import annotations


import numpy as np
import pytest
import scipy.io

from shards import fileio
from shards.deepsense import DeepSenseConfig, DeepSenseReader, find_csvs
from shards.errors import DataError
from airbind.geo import en_to_latlon, latlon_to_en
from shards.mmfi import MMFiConfig, MMFiReader
from shards.radar import RadarConfig, cube_to_points
from shards.records import BadInput
from tests import builders


def test_latlon_round_trip_and_scale():
    lat0, lon0 = builders.BS_LATLON
    e, n = latlon_to_en(np.array(lat0 + 1e-3), np.array(lon0 + 1e-3), lat0, lon0)
    # 0.001 deg of latitude is ~110.9 m at 33.4 N; of longitude ~93.0 m (cos 33.4 * 111.3 km)
    assert n == pytest.approx(110.9, abs=0.2)
    assert e == pytest.approx(93.0, abs=0.3)
    lat, lon = en_to_latlon(e, n, lat0, lon0)
    assert lat == pytest.approx(lat0 + 1e-3, abs=1e-10) and lon == pytest.approx(lon0 + 1e-3, abs=1e-10)


def test_full_layout_reads_every_modality(tmp_path):
    builders.deepsense_full(tmp_path, seqs=2, frames=12, mismatch_row=5)
    reader = DeepSenseReader()
    records = reader.index(tmp_path)
    assert len(records) == 24
    assert len(reader.beam_mismatches) == 1 and "mmWave" not in reader.beam_mismatches[0]
    first = records[0]
    assert first.key == "deepsense/scenario7/1/1"
    sample = first.load()
    assert {"beam.npy", "gps.npy", "image.jpg", "lidar.npy", "radar.npy", "meta.json"} <= set(sample)
    assert sample["meta.json"]["beam"] == int(np.argmax(sample["beam.npy"]))
    assert sample["lidar.npy"].shape[1] == 4 and sample["lidar.npy"].dtype == np.float32
    assert sample["radar.npy"].shape[1] == 5 and len(sample["radar.npy"]) >= 1
    east, north = sample["gps.npy"][:2]
    assert east == pytest.approx(-20.0, abs=0.01) and north == pytest.approx(16.0, abs=0.01)
    for r in records:
        s = r.load()
        assert s["meta.json"]["beam"] == int(np.argmax(s["beam.npy"]))
    # past beams only once 8 earlier frames of the same sequence exist; frames 4-6 blocked: the label is a
    # blockage within the next 3 frames (t = 1..5), none for the last 3 frames of a sequence
    by_t = [r for r in records if r.seq == "1"]
    assert "past_beam.npy" not in by_t[7].load() and by_t[8].load()["past_beam.npy"].shape == (8, 64)
    assert [r.meta.get("blockage_future") for r in by_t] == [0, 1, 1, 1, 1, 1, 0, 0, 0, None, None, None]
    assert by_t[0].meta["blockage_horizon"] == 3 and by_t[0].meta["blockage_label"] == "within"
    at = [r for r in DeepSenseReader(DeepSenseConfig(blockage_label="at")).index(tmp_path) if r.seq == "1"]
    assert [r.meta.get("blockage_future") for r in at[:9]] == [0, 1, 1, 1, 0, 0, 0, 0, 0]
    assert by_t[0].meta["future_beams"] == [r.meta["beam"] for r in by_t[1:6]]


def test_task_csvs_and_official_split(tmp_path):
    builders.deepsense_task(tmp_path, n=30)
    records = DeepSenseReader().index(tmp_path / "scenario3")
    assert len(records) == 30 and {r.official_split for r in records} == {"train", "val", "test"}
    s = records[0].load()
    assert set(s) == {"beam.npy", "gps.npy", "meta.json"}
    number = s["meta.json"]["index"]
    assert s["gps.npy"][0] == pytest.approx(float(number), abs=0.01)  # builder put UE `number` metres east


def test_blockage_series(tmp_path):
    builders.deepsense_blockage(tmp_path, n=6, steps=8, horizon=3)
    records = DeepSenseReader().index(tmp_path)
    assert len(records) == 6
    s = records[0].load()
    assert s["past_beam.npy"].shape == (8, 64) and "beam.npy" not in s
    assert s["meta.json"]["blockage_horizon"] == 3
    # rows 1, 3, 5 blocked at the last future step, rows 3 and 6 at the first: any of them is the label
    assert [r.meta["blockage_future"] for r in records] == [1, 0, 1, 0, 1, 1]
    at = DeepSenseReader(DeepSenseConfig(blockage_label="at")).index(tmp_path)
    assert [r.meta["blockage_future"] for r in at] == [1, 0, 1, 0, 1, 0]


def test_blockage_label_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="blockage label"):
        DeepSenseConfig(blockage_label="soon")
    with pytest.raises(ValueError, match="horizon"):
        DeepSenseConfig(blockage_horizon=0)
    base = builders.deepsense_blockage(tmp_path, n=2, steps=8, horizon=3)
    csv_path = base / "scenario17_blockage_train.csv"
    lines = csv_path.read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ",2"
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"scenario17_blockage_train\.csv:2: blockage label blockage_3 must be 0 or 1"):
        DeepSenseReader().index(tmp_path)


def test_bad_deepsense_input_names_the_file(tmp_path):
    base = builders.deepsense_full(tmp_path, seqs=1, frames=3, with_sensors=False)
    bad_power = base / "unit1/mmWave_data/mmWave_power_1.txt"
    bad_power.write_text("\n".join(["0.1"] * 63))
    with pytest.raises(DataError, match=r"mmWave_power_1\.txt: expected 64 numbers, found 63"):
        DeepSenseReader().index(tmp_path)
    bad = BadInput(skip_bad=True)
    with pytest.warns(UserWarning, match="skipped bad input"):
        records = DeepSenseReader(bad=bad).index(tmp_path)
    assert len(records) == 2 and bad.report()["skipped"] == 1

    (base / "unit1/mmWave_data/mmWave_power_1.txt").write_text("\n".join(["nan"] + ["0.1"] * 63))
    with pytest.raises(DataError, match="NaN/Inf"):
        DeepSenseReader().index(tmp_path)


def test_malformed_csv_row_and_missing_file(tmp_path):
    base = builders.deepsense_full(tmp_path, seqs=1, frames=3, with_sensors=False)
    with (base / "scenario7.csv").open("a") as fh:
        fh.write("99,only,three\n")
    with pytest.raises(DataError, match=r"scenario7\.csv: malformed row, line 5"):
        DeepSenseReader().index(tmp_path)
    with pytest.raises(DataError, match="dataset folder not found"):
        find_csvs(tmp_path / "nope")


def test_corrupt_image_is_reported(tmp_path):
    base = builders.deepsense_full(tmp_path, seqs=1, frames=2)
    img = sorted((base / "unit1/camera_data").glob("*.jpg"))[0]
    img.write_bytes(img.read_bytes()[:200])
    records = DeepSenseReader().index(tmp_path)
    with pytest.raises(DataError, match=rf"{img.name}: corrupt or unreadable image"):
        records[0].load()


def test_ply_ascii_and_mat_2d_scan(tmp_path):
    ply = tmp_path / "a.ply"
    ply.write_text("ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
                   "property float z\nend_header\n1 2 3\n4 5 6\n")
    np.testing.assert_allclose(fileio.read_lidar(ply), [[1, 2, 3], [4, 5, 6]])
    mat = tmp_path / "scan.mat"
    scipy.io.savemat(mat, {"data": np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])})
    np.testing.assert_allclose(fileio.read_lidar(mat), [[1, 2, 0], [3, 4, 0], [5, 6, 0]])
    trunc = tmp_path / "t.ply"
    builders.ply_binary(trunc, np.ones((10, 4)))
    trunc.write_bytes(trunc.read_bytes()[:-20])
    with pytest.raises(DataError, match="truncated PLY"):
        fileio.read_lidar(trunc)


def test_radar_cube_to_points_finds_the_target():
    rng = np.random.default_rng(0)
    cfg = RadarConfig()
    cube = builders.radar_cube(rng, rng_m=12.0, vel=3.0, sin_theta=0.25)
    pts = cube_to_points(cube, cfg)
    strongest = pts[np.argmax(pts[:, 4])]
    rng_res = cfg.range_axis(256)[1]
    assert np.hypot(strongest[0], strongest[1]) == pytest.approx(12.0, abs=1.5 * rng_res)
    assert strongest[3] == pytest.approx(3.0, abs=0.2)
    assert strongest[0] / np.hypot(strongest[0], strongest[1]) == pytest.approx(0.25, abs=0.05)
    noise_only = (rng.normal(size=(4, 256, 128)) + 1j * rng.normal(size=(4, 256, 128))).astype(np.complex64)
    assert len(cube_to_points(noise_only, cfg)) < 20  # CFAR keeps false alarms rare


def test_mmfi_layout(tmp_path):
    root = builders.mmfi(tmp_path, frames=4)
    (root / "E01/S01/A01/lidar/frame002.bin").write_bytes(b"")  # MM-Fi has 0-byte frames
    reader = MMFiReader()
    records = reader.index(root)
    assert len(records) == 2 * 2 * 3 * 4 and reader.empty_frames == 1
    rec = next(r for r in records if r.key == "mmfi/E01/S01_A01/2")
    s = rec.load()
    assert "lidar.npy" not in s and s["radar.npy"].shape == (7, 5) and s["wifi.npy"].shape == (3, 114, 10)
    assert "image.jpg" in s
    gt = np.load(root / "E01/S01/A01/ground_truth.npy")
    np.testing.assert_allclose(s["meta.json"]["keypoints"], gt[1], atol=1e-6)
    assert s["meta.json"]["activity"] == 0 and s["meta.json"]["subject"] == "S01"
    a17 = next(r for r in records if r.seq == "S11_A17")
    assert a17.meta["activity"] == 16 and a17.meta["env"] == "E02"


def test_mmfi_csi_repair_and_refusal(tmp_path):
    root = builders.mmfi(tmp_path, envs=("E01",), subjects_per_env=1, actions=("A01",), frames=2)
    csi_path = root / "E01/S01/A01/wifi-csi/frame001.mat"
    amp = np.full((3, 114, 10), 10.0)
    amp[0, 5, 3] = -np.inf
    scipy.io.savemat(csi_path, {"CSIamp": amp})
    s = MMFiReader().index(root)[0].load()
    assert s["meta.json"]["wifi_repaired"] == 1 and s["wifi.npy"][0, 5, 3] == pytest.approx(10.0)
    amp[:, :, :] = np.inf
    scipy.io.savemat(csi_path, {"CSIamp": amp})
    with pytest.raises(DataError, match=r"frame001\.mat: 3420 of 3420 CSI amplitudes are NaN/Inf"):
        MMFiReader().index(root)[0].load()


def test_mmfi_past_wifi_window(tmp_path):
    root = builders.mmfi(tmp_path, envs=("E01",), subjects_per_env=1, actions=("A01",), frames=7)
    csi = root / "E01/S01/A01/wifi-csi"
    amp = {n: scipy.io.loadmat(csi / f"frame{n:03d}.mat")["CSIamp"] for n in range(1, 8)}
    (csi / "frame003.mat").write_bytes(b"")  # a 0-byte frame cuts the window
    recs = {r.meta["index"]: r for r in MMFiReader(MMFiConfig(past_wifi_frames=3)).index(root)}
    loaded = {n: r.load() for n, r in recs.items()}
    assert "past_wifi.npy" not in loaded[1] and "past_wifi.npy" not in loaded[3]  # no past; no CSI of its own
    np.testing.assert_allclose(loaded[2]["past_wifi.npy"], amp[1][None], rtol=1e-6)
    assert "past_wifi.npy" not in loaded[4]  # its previous frame is the empty one
    np.testing.assert_allclose(loaded[5]["past_wifi.npy"], np.stack([amp[4]]), rtol=1e-6)
    np.testing.assert_allclose(loaded[7]["past_wifi.npy"], np.stack([amp[4], amp[5], amp[6]]), rtol=1e-6)
    assert loaded[7]["past_wifi.npy"].dtype == np.float32
    assert all("past_wifi.npy" not in r.load() for r in MMFiReader(MMFiConfig(past_wifi_frames=0)).index(root))
    scipy.io.savemat(csi / "frame005.mat", {"CSIamp": np.full((3, 114, 10), np.nan)})  # a corrupt past frame is named
    with pytest.raises(DataError, match=r"frame005\.mat: 3420 of 3420 CSI amplitudes are NaN/Inf"):
        recs[6].load()


def test_mmfi_missing_ground_truth(tmp_path):
    root = builders.mmfi(tmp_path, envs=("E01",), subjects_per_env=1, actions=("A01",), frames=2)
    (root / "E01/S01/A01/ground_truth.npy").unlink()
    with pytest.raises(DataError, match=r"ground_truth\.npy: file not found"):
        MMFiReader().index(root)
