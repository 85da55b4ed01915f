"""Splits, shard writing, the streaming reader (2 workers), and corrupt or truncated shards."""
from __future__ import annotations

import io
import json
import pickle
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from shards.deepsense import DeepSenseReader
from shards.mmfi import MMFiReader
from shards.splits import assign_splits
from shards.stream import (SkipCounter, StreamConfig, capped_batches, collate, iter_samples, make_loader,
                           one_pass_batches)
from shards.write import WriteConfig, main, write_dataset
from tests import builders


def _keys(split_records):
    return {name: {r.key for r in recs} for name, recs in split_records.items()}


def test_sequence_split_never_shares_a_sequence(tmp_path):
    builders.deepsense_full(tmp_path, seqs=10, frames=5, with_sensors=False)
    records = DeepSenseReader().index(tmp_path)
    splits = assign_splits(records, "sequence", (0.6, 0.2, 0.2), seed=3)
    seqs = {name: {r.seq for r in recs} for name, recs in splits.items()}
    assert not (seqs["train"] & seqs["val"]) and not (seqs["train"] & seqs["test"]) and not (seqs["val"] & seqs["test"])
    assert sum(len(v) for v in splits.values()) == 50 and all(splits.values())
    assert _keys(splits) == _keys(assign_splits(records, "sequence", (0.6, 0.2, 0.2), seed=3))  # seeded
    rnd = assign_splits(records, "random", (0.6, 0.2, 0.2), seed=3)
    assert [len(v) for v in rnd.values()] == [30, 10, 10]


def test_subject_environment_and_pinned_splits(tmp_path):
    builders.mmfi(tmp_path, envs=("E01", "E02", "E03"), subjects_per_env=2, actions=("A01",), frames=2)
    records = MMFiReader().index(tmp_path)
    by_subject = assign_splits(records, "subject", (0.5, 0.25, 0.25), seed=0)
    subj = {n: {r.meta["subject"] for r in rs} for n, rs in by_subject.items()}
    assert not (subj["train"] & subj["test"]) and not (subj["train"] & subj["val"])
    env = assign_splits(records, "environment", (0.7, 0.0, 0.3), held_out={"test": ["E03"]})
    assert {r.meta["env"] for r in env["test"]} == {"E03"}
    assert "E03" not in {r.meta["env"] for r in env["train"]} and not env["val"]
    with pytest.raises(ValueError, match="official split"):
        assign_splits(records, "official")


def _write_mmfi(tmp_path, **kw):
    root = builders.mmfi(tmp_path / "raw", **kw)
    cfg = WriteConfig("mmfi", root, tmp_path / "shards", split="random", fractions=(0.5, 0.25, 0.25),
                      shard_size=5, progress=False)
    return cfg, write_dataset(cfg)


def test_write_then_stream_with_two_workers(tmp_path):
    cfg, report = _write_mmfi(tmp_path, frames=4)
    total = 2 * 2 * 3 * 4
    assert report["written"] == total
    train = tmp_path / "shards/train"
    sizes = json.loads((train / "sizes.json").read_text())
    assert sizes["samples"] == report["splits"]["train"]["samples"] and len(sizes["shards"]) >= 2
    loader = make_loader(train, StreamConfig(batch_size=4, num_workers=2, image_size=16, shuffle_buffer=0))
    keys = Counter()
    for batch in loader:
        keys.update(batch["key"])
        assert batch["image"].shape[1:] == (3, 16, 16) and batch["image"].dtype == torch.uint8
        assert batch["wifi"].shape[1:] == (3, 114, 10)
        assert batch["radar"].shape[0] == batch["radar_mask"].shape[0] == len(batch["key"])
        assert bool(batch["present"]["wifi"].all()) and not bool(batch["present"]["beam"].any())
        assert (batch["activity"] >= 0).all() and batch["has_keypoints"].all()
    assert sum(keys.values()) == sizes["samples"] and max(keys.values()) == 1  # every sample exactly once



def test_splits_are_written_in_a_seeded_random_order(tmp_path):
    """Shards must not hold clips in time order (near-duplicate batches), and the order must be reproducible."""
    root = builders.mmfi(tmp_path / "raw", frames=6)
    order = {}
    for name, shuffle in (("a", True), ("b", True), ("plain", False)):
        write_dataset(WriteConfig("mmfi", root, tmp_path / name, split="subject", fractions=(1.0, 0.0, 0.0),
                                  shard_size=1000, shuffle=shuffle, progress=False))
        order[name] = [s["__key__"] for s in iter_samples(tmp_path / name / "train", image_size=16)]
    assert (tmp_path / "a/train/shard-000000.tar").read_bytes() == (tmp_path / "b/train/shard-000000.tar").read_bytes()
    assert sorted(order["a"]) == sorted(order["plain"]) and order["a"] != order["plain"]
    clips = lambda keys: [k.rsplit("/", 1)[0] for k in keys]  # noqa: E731
    runs = lambda keys: sum(a != b for a, b in zip(clips(keys), clips(keys)[1:]))  # noqa: E731
    n_clips = len(set(clips(order["plain"])))
    assert runs(order["plain"]) == n_clips - 1 < runs(order["a"])  # reader order: each clip's frames together

def test_collate_pads_masks_and_missing_modalities():
    rng = np.random.default_rng(0)
    a = {"__key__": "a", "meta": {"beam": 3}, "radar": rng.normal(size=(3, 5)).astype(np.float32),
         "lidar": rng.normal(size=(4, 3)).astype(np.float32), "beam": np.ones(64, np.float32)}
    b = {"__key__": "b", "meta": {"activity": 2, "keypoints": np.zeros((17, 3)).tolist()},
         "radar": np.zeros((0, 5), np.float32), "lidar": rng.normal(size=(1000, 4)).astype(np.float32)}
    batch = collate([a, b], max_points=100)
    assert batch["radar"].shape == (2, 3, 5) and batch["radar_mask"].tolist() == [[True] * 3, [False] * 3]
    assert batch["lidar"].shape == (2, 100, 4) and batch["lidar_mask"].sum().item() == 104
    assert batch["lidar"][0, :4, 3].abs().sum() == 0  # N x 3 gets a zero intensity column
    assert batch["present"]["beam"].tolist() == [True, False] and batch["beam"][1].abs().sum() == 0
    assert batch["beam_label"].tolist() == [3, -1] and batch["activity"].tolist() == [-1, 2]
    assert batch["has_keypoints"].tolist() == [False, True] and batch["blockage"].tolist() == [-1.0, -1.0]
    again = collate([a, b], max_points=100)
    assert torch.equal(again["lidar"], batch["lidar"])  # subsampling is seeded by the key


def test_truncated_shard_is_skipped_and_counted(tmp_path):
    _write_mmfi(tmp_path, frames=4)
    train = tmp_path / "shards/train"
    shards = sorted(train.glob("*.tar"))
    full = sum(1 for _ in iter_samples(train))
    data = shards[0].read_bytes()
    shards[0].write_bytes(data[: len(data) // 2 + 100])
    counter = SkipCounter()
    with pytest.warns(UserWarning, match="skipping unreadable shard data"):
        got = [s["__key__"] for s in iter_samples(train, counter=counter)]
    assert counter.count >= 1 and 0 < len(got) < full
    assert len(set(got)) == len(got)


def test_pickle_members_are_refused(tmp_path):
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in (("x/1.pyd", pickle.dumps({"a": 1})), ("x/1.meta.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        obj = io.BytesIO()
        np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        for name, data in (("y/2.beam.npy", obj.getvalue()), ("y/2.meta.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    counter = SkipCounter()
    with pytest.warns(UserWarning):
        assert list(iter_samples(path, counter=counter)) == []
    assert counter.count == 2
    assert "not in the sample schema" in counter.messages[0] and "not a plain .npy" in counter.messages[1]


def test_cli_skip_bad_reports_and_failure_keeps_old_shards(tmp_path, capsys):
    builders.deepsense_full(tmp_path / "raw", seqs=4, frames=5)
    out = tmp_path / "out"
    argv = ["--source", "deepsense", "--root", str(tmp_path / "raw"), "--out", str(out), "--no-progress",
            "--split", "sequence"]
    assert main(argv) == 0
    before = {p.name: p.read_bytes() for p in (out / "train").iterdir()}
    img = sorted((tmp_path / "raw/scenario7/unit1/camera_data").glob("*.jpg"))[0]
    img.write_bytes(b"not a jpeg")
    assert main(argv) == 2
    assert "corrupt or unreadable image" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (out / "train").iterdir()} == before  # nothing lost
    assert not list(out.glob(".*partial*"))
    with pytest.warns(UserWarning):
        assert main(argv + ["--skip-bad"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["bad_input"]["skipped"] == 1 and report["written"] == 19
    assert img.name in report["bad_input"]["errors"][0]


def test_rewrite_is_byte_identical(tmp_path):
    builders.deepsense_full(tmp_path / "raw", seqs=2, frames=4, with_sensors=False)
    argv = ["--source", "deepsense", "--root", str(tmp_path / "raw"), "--no-progress", "--split", "random"]
    main(argv + ["--out", str(tmp_path / "a")])
    main(argv + ["--out", str(tmp_path / "b")])
    for p in (tmp_path / "a/train").glob("*.tar"):
        assert p.read_bytes() == (tmp_path / "b/train" / p.name).read_bytes()


def test_cli_blockage_label_options(tmp_path):
    """--blockage-label / --blockage-horizon reach the reader: frames 4-6 of each sequence are blocked."""
    builders.deepsense_full(tmp_path / "raw", seqs=1, frames=9, with_sensors=False)
    argv = ["--source", "deepsense", "--root", str(tmp_path / "raw"), "--no-progress", "--split", "random",
            "--fractions", "1,0,0", "--no-shuffle"]
    labels = {}
    for kind, horizon in (("within", 3), ("at", 3), ("within", 1)):
        out = tmp_path / f"{kind}{horizon}"
        assert main(argv + ["--out", str(out), "--blockage-label", kind, "--blockage-horizon", str(horizon)]) == 0
        metas = sorted((s["meta"] for s in iter_samples(out / "train", image_size=8)),
                       key=lambda m: m["index"])
        labels[kind, horizon] = [m.get("blockage_future") for m in metas]
        assert {m["blockage_label"] for m in metas if "blockage_future" in m} == {kind}
    assert labels["within", 3] == [0, 1, 1, 1, 1, 1, None, None, None]
    assert labels["at", 3] == [0, 1, 1, 1, 0, 0, None, None, None]
    assert labels["within", 1] == [0, 0, 0, 1, 1, 1, 0, 0, None]
    with pytest.raises(SystemExit):
        main(argv + ["--out", str(tmp_path / "x"), "--blockage-horizon", "0"])


SCENARIO5 = Path(__file__).resolve().parents[2] / "shared/data/deepsense/scenario5"


@pytest.mark.skipif(not SCENARIO5.is_dir(), reason="../shared/data/deepsense/scenario5 not present")
def test_real_scenario5_round_trip(tmp_path):
    cfg = WriteConfig("deepsense", SCENARIO5, tmp_path, split="official", progress=False)
    report = write_dataset(cfg)
    assert report["written"] == 2300 and report["bad_input"]["skipped"] == 0
    assert report["beam_label_mismatches"]["count"] == 0
    n, pts = 0, []
    for split in ("train", "val", "test"):
        for s in iter_samples(tmp_path / split):
            assert s["meta"]["beam"] == int(np.argmax(s["beam"]))
            pts.append(s["gps"][:2])
            n += 1
    assert n == 2300
    pts = np.asarray(pts)
    spread = np.ptp(pts, axis=0)
    assert 10 < np.hypot(*spread) < 500  # tens of metres around the base station


def test_ranks_split_the_shards_and_resampled_mode(tmp_path, monkeypatch):
    _write_mmfi(tmp_path, frames=4)
    train = tmp_path / "shards/train"
    total = json.loads((train / "sizes.json").read_text())["samples"]
    seen = []
    for rank in (0, 1):  # what webdataset sees under a 2-rank DeepSpeed launch
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        loader = make_loader(train, StreamConfig(batch_size=3, shuffle_buffer=0, image_size=8))
        seen.append([k for batch in loader for k in batch["key"]])
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
    assert len(seen[0]) + len(seen[1]) == total
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    cfg = StreamConfig(batch_size=4, resampled=True, epoch_samples=40, shuffle_buffer=10, image_size=8)
    batches = list(make_loader(train, cfg))
    assert len(batches) == 10 and all(len(b["key"]) == 4 for b in batches)


def test_one_pass_reads_each_sample_once_and_shares_the_limit(tmp_path):
    """The probe's stream: no sample twice; a dataset smaller than its share is read whole, the other fills
    the rest of the limit; two ranks read disjoint halves of what one rank reads."""
    _write_mmfi(tmp_path / "h", frames=4)
    write_dataset(WriteConfig("deepsense", builders.deepsense_full(tmp_path / "v_raw", seqs=2, frames=4),
                              tmp_path / "v", split="random", fractions=(1.0, 0.0, 0.0), shard_size=3,
                              progress=False))
    dirs = [tmp_path / "v/train", tmp_path / "h/shards/train"]
    small, big = (json.loads((d / "sizes.json").read_text())["samples"] for d in dirs)
    assert small < big
    cfg = StreamConfig(batch_size=4, shuffle_buffer=5, image_size=8, seed=3)
    keys = lambda limit, rank=0, world=1: [k for b in one_pass_batches(dirs, cfg, limit, rank, world)  # noqa: E731
                                           for k in b["key"]]
    whole = keys(10 * big)
    assert len(whole) == len(set(whole)) == small + big
    part = keys(small + 3)  # one from each in turn, the small one first: it gets ceil((small + 3) / 2)
    n_small = sum(k.startswith("deepsense") for k in part)
    assert len(part) == len(set(part)) == small + 3 and n_small == (small + 3) // 2 + (small + 3) % 2
    more = keys(2 * small + 5)  # above twice the small one: all of it, the rest from the big one
    assert sum(k.startswith("deepsense") for k in more) == small and len(more) == 2 * small + 5
    ranks = [keys(2 * small + 5, r, 2) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1]) and sorted(ranks[0] + ranks[1]) == sorted(more)
    assert keys(small + 3) == part  # seeded: the same order again
    with pytest.raises(ValueError, match="rank 2 of 2"):
        keys(5, 2, 2)


def test_evaluation_cap_applies_to_each_dataset(tmp_path):
    """Validation and evaluation read each dataset up to the cap: a first dataset larger than the cap no longer
    leaves the next one unread."""
    _write_mmfi(tmp_path / "h", frames=4)
    write_dataset(WriteConfig("deepsense", builders.deepsense_full(tmp_path / "v_raw", seqs=2, frames=6),
                              tmp_path / "v", split="random", fractions=(1.0, 0.0, 0.0), shard_size=3,
                              progress=False))
    dirs = [tmp_path / "v/train", tmp_path / "h/shards/train"]
    sizes = [json.loads((d / "sizes.json").read_text())["samples"] for d in dirs]
    cfg = StreamConfig(batch_size=2, shuffle_buffer=0, image_size=8)
    keys = lambda cap: [k for b in capped_batches(dirs, cfg, cap) for k in b["key"]]  # noqa: E731
    assert min(sizes) > 4
    capped = keys(4)
    assert sum(k.startswith("deepsense") for k in capped) == 4 and sum(k.startswith("mmfi") for k in capped) == 4
    every = keys(None)
    assert len(every) == len(set(every)) == sum(sizes)


def test_pinned_groups_leave_the_fractions_ratio_to_the_rest(tmp_path):
    """Held-out test groups with a test fraction of 0: the other sequences split 4 : 1 between train and val
    (0.8 / 0.2); before, train's target counted the pinned samples too and val got what it left."""
    from shards.splits import free_targets
    assert free_targets(640, (0.8, 0.2, 0.0), {"train": 0, "val": 0, "test": 160}) == {
        "train": pytest.approx(384.0), "val": pytest.approx(96.0), "test": 0.0}
    assert free_targets(100, (0.6, 0.2, 0.2), {"train": 0, "val": 0, "test": 0}) == {
        "train": pytest.approx(60.0), "val": pytest.approx(20.0), "test": pytest.approx(20.0)}  # nothing pinned
    builders.deepsense_full(tmp_path, seqs=10, frames=4, with_sensors=False)
    records = DeepSenseReader().index(tmp_path)
    held = assign_splits(records, "sequence", (0.8, 0.2, 0.0), held_out={"test": ["1", "2", "3", "4", "5"]})
    assert {r.seq for r in held["test"]} == {"1", "2", "3", "4", "5"}
    assert (len(held["train"]), len(held["val"])) == (16, 4)  # before: (20, 0), val got nothing


def test_pinning_by_a_part_of_the_group_name(tmp_path):
    builders.deepsense_full(tmp_path, seqs=6, frames=3, with_sensors=False)
    records = DeepSenseReader().index(tmp_path)
    held = assign_splits(records, "sequence", (0.8, 0.2, 0.0), held_out={"test": ["scenario7"]})
    assert len(held["test"]) == len(records) and not held["train"]


def test_npy_decoding_matches_numpy_and_rejects_bad_payloads():
    from shards.errors import DataError
    from shards.schema import decode_npy, encode_npy
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(7, 3)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32),
              np.asfortranarray(rng.normal(size=(4, 6))), np.arange(5, dtype="<i8"), np.float32(2.5).reshape(())]
    for _ in range(2):  # the second pass uses the remembered headers
        for arr in arrays:
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            got = decode_npy(buf.getvalue())
            assert got.dtype == arr.dtype and got.shape == arr.shape and np.array_equal(got, arr)
            assert got.flags.writeable
    data = encode_npy(arrays[0])
    with pytest.raises(DataError, match="payload"):
        decode_npy(data[:-4], "x/radar.npy")
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="not a plain .npy"):
        decode_npy(buf.getvalue(), "x/evil.npy")


def test_lean_tar_reader_matches_tarfile(tmp_path):
    """shards/tarstream.py reads our ustar shards, pax and GNU long names and base-256 sizes as tarfile
    does, skips directories, and names the shard when a header is corrupt."""
    from shards.tarstream import TarFormatError, _number, iter_members
    _write_mmfi(tmp_path, frames=2)
    shard = sorted((tmp_path / "shards/train").glob("*.tar"))[0]
    with open(shard, "rb") as f:
        got = list(iter_members(f, str(shard)))
    with tarfile.open(shard) as tar:
        assert got == [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isreg()]
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            for name, data in (("s/" + "x" * 150 + ".meta.json", b"{}"), ("s/ü.beam.npy", b"abc")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            tar.addfile(_dir_info())  # not a regular file: skipped
        buf.seek(0)
        assert list(iter_members(buf, "mem.tar")) == [("s/" + "x" * 150 + ".meta.json", b"{}"), ("s/ü.beam.npy", b"abc")]
    assert _number(bytes([0x80]) + (2**40).to_bytes(11, "big")) == 2**40
    data = bytearray(shard.read_bytes())
    data[130] ^= 0x01  # a flipped bit in the first member's size field
    with pytest.raises(TarFormatError, match="checksum") as err:
        list(iter_members(io.BytesIO(bytes(data)), str(shard)))
    assert shard.name in str(err.value)


def _dir_info() -> tarfile.TarInfo:
    info = tarfile.TarInfo("folder")
    info.type = tarfile.DIRTYPE
    return info
