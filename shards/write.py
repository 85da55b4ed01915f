"""``python -m shards.write``: DeepSense 6G or MM-Fi folders → WebDataset shards with splits."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from airbind.blockage import BLOCKAGE_LABELS, check_blockage_label
from shards.deepsense import DeepSenseConfig, DeepSenseReader
from shards.errors import DataError
from shards.mmfi import MMFiConfig, MMFiReader
from shards.records import BadInput
from shards.splits import SPLIT_NAMES, assign_splits
from shards.writer import write_split


@dataclass
class WriteConfig:
    """What ``python -m shards.write`` does."""

    source: str
    root: Path
    out: Path
    split: str = "sequence"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    held_out_val: list[str] = field(default_factory=list)
    held_out_test: list[str] = field(default_factory=list)
    seed: int = 0
    shard_size: int = 1000
    shuffle: bool = True   # write each split in a seeded random order (see write_dataset)
    skip_bad: bool = False
    progress: bool = True
    past_wifi_frames: int = MMFiConfig.past_wifi_frames  # MM-Fi: previous frames' CSI stored with each frame
    blockage_horizon: int = DeepSenseConfig.blockage_horizon  # DeepSense: Δ frames of the future-blockage label
    blockage_label: str = DeepSenseConfig.blockage_label      # blocked "within" t+1..t+Δ, or "at" t+Δ


def write_dataset(cfg: WriteConfig) -> dict[str, Any]:
    """Index the dataset, split it, write every split, and write ``report.json`` beside the splits."""
    bad = BadInput(cfg.skip_bad)
    if cfg.source == "deepsense":
        ds_cfg = DeepSenseConfig(blockage_horizon=cfg.blockage_horizon, blockage_label=cfg.blockage_label)
        reader: DeepSenseReader | MMFiReader = DeepSenseReader(ds_cfg, bad)
    elif cfg.source == "mmfi":
        reader = MMFiReader(MMFiConfig(past_wifi_frames=cfg.past_wifi_frames), bad)
    else:
        raise ValueError(f"unknown source {cfg.source!r} (deepsense or mmfi)")
    records = reader.index(cfg.root)
    if not records:
        raise DataError(cfg.root, "no readable samples found")
    held = {"val": cfg.held_out_val, "test": cfg.held_out_test}
    splits = assign_splits(records, cfg.split, cfg.fractions, cfg.seed, held)
    if cfg.shuffle:
        # Readers list files in time order (a sequence, a subject's activity): written that way, one shard holds
        # a few near-identical clips, and a streaming shuffle buffer cannot decorrelate the batches (InfoNCE
        # then sees near-duplicate negatives, a classifier sees one activity at a time). Every sample is
        # self-contained (past beams travel with it), so the order within a split carries no information.
        rng = np.random.default_rng(cfg.seed)
        splits = {name: [recs[i] for i in rng.permutation(len(recs))] for name, recs in splits.items()}
    gps: list = []
    report: dict[str, Any] = {"source": cfg.source, "root": str(cfg.root), "split": cfg.split,
                              "indexed": len(records), "splits": {}}
    for name in SPLIT_NAMES:
        if splits[name]:
            report["splits"][name] = write_split(splits[name], cfg.out, name, cfg.shard_size, bad, cfg.progress, gps)
    report["written"] = sum(s["samples"] for s in report["splits"].values())
    report["bad_input"] = bad.report()
    if isinstance(reader, DeepSenseReader):
        report["beam_label_mismatches"] = {"count": len(reader.beam_mismatches),
                                           "examples": reader.beam_mismatches[:50]}
        report["gps_spread_m"] = _gps_spread(gps)
    else:
        report["empty_frame_files"] = reader.empty_frames
    report["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    (cfg.out / "report.json").write_text(json.dumps(report, indent=1))
    return report


def _gps_spread(points: list) -> dict[str, float] | None:
    """Spread of the UE positions (metres east/north of the reference) over the written samples."""
    if not points:
        return None
    arr = np.asarray(points)
    return {"east_std": float(arr[:, 0].std()), "north_std": float(arr[:, 1].std()),
            "max_distance": float(np.hypot(arr[:, 0], arr[:, 1]).max())}


def parse_args(argv: list[str] | None = None) -> WriteConfig:
    p = argparse.ArgumentParser(prog="python -m shards.write", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", required=True, choices=["deepsense", "mmfi"])
    p.add_argument("--root", required=True, type=Path, help="dataset folder (or one DeepSense CSV)")
    p.add_argument("--out", required=True, type=Path, help="output folder: OUT/{train,val,test}/shard-*.tar")
    p.add_argument("--split", default="sequence",
                   choices=["random", "sequence", "scenario", "subject", "environment", "official"])
    p.add_argument("--fractions", default="0.8,0.1,0.1", help="train,val,test shares of samples")
    p.add_argument("--val-groups", default="", help="comma-separated groups pinned to val (e.g. E03)")
    p.add_argument("--test-groups", default="", help="comma-separated groups pinned to test (e.g. E04)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=1000, help="samples per tar shard")
    p.add_argument("--no-shuffle", action="store_true", help="keep the reader's (time) order inside each split")
    p.add_argument("--skip-bad", action="store_true", help="skip and count bad files instead of stopping")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--past-wifi-frames", type=int, default=MMFiConfig.past_wifi_frames,
                   help="MM-Fi: CSI of up to this many previous frames stored with each frame (past_wifi.npy)")
    p.add_argument("--blockage-horizon", type=int, default=DeepSenseConfig.blockage_horizon,
                   help="DeepSense: Δ, the frames ahead of the future-blockage label")
    p.add_argument("--blockage-label", default=DeepSenseConfig.blockage_label, choices=BLOCKAGE_LABELS,
                   help="DeepSense: blocked in any of frames t+1..t+Δ (DeepSense's Future-Δ), or at frame t+Δ")
    a = p.parse_args(argv)
    if a.past_wifi_frames < 0:
        p.error("--past-wifi-frames must be >= 0")
    try:
        check_blockage_label(a.blockage_label, a.blockage_horizon)
    except ValueError as exc:
        p.error(str(exc))
    fractions = tuple(float(x) for x in a.fractions.split(","))
    if len(fractions) != 3:
        p.error("--fractions takes three numbers")
    groups = lambda s: [g for g in s.split(",") if g]
    return WriteConfig(a.source, a.root, a.out, a.split, fractions, groups(a.val_groups), groups(a.test_groups),
                       a.seed, a.shard_size, not a.no_shuffle, a.skip_bad,
                       not a.no_progress, a.past_wifi_frames, a.blockage_horizon, a.blockage_label)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        report = write_dataset(cfg)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k}={v['samples']}" for k, v in report["splits"].items())
    print(f"wrote {report['written']} samples ({counts}) to {cfg.out}; "
          f"skipped {report['bad_input']['skipped']}; report: {cfg.out / 'report.json'}")
    if report.get("beam_label_mismatches", {}).get("count"):
        print(f"beam label != argmax(power) in {report['beam_label_mismatches']['count']} rows (see report.json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
