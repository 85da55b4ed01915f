"""``python -m shards.summary DIR``: stream written shards back and summarise them.

Per split: samples, modality counts, label checks (beam == argmax of its power vector), GPS spread,
point-cloud sizes, skipped data, and decode speed.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from shards.splits import SPLIT_NAMES
from shards.stream import SkipCounter, iter_samples


def summarise(folder: Path) -> dict[str, Any]:
    """Read every sample of one split folder and return its summary."""
    counter = SkipCounter()
    mods: Counter[str] = Counter()
    gps, beam_bad, n_points = [], 0, {"radar": [], "lidar": []}
    labels: Counter[str] = Counter()
    n, t0 = 0, time.perf_counter()
    for s in iter_samples(folder, counter=counter):
        n += 1
        mods.update(k for k in s if k not in ("__key__", "meta"))
        meta = s["meta"]
        labels.update(k for k in ("beam", "activity", "keypoints", "blockage_future") if k in meta)
        if "beam" in s and "beam" in meta and int(np.argmax(s["beam"])) != meta["beam"]:
            beam_bad += 1
        if "gps" in s:
            gps.append(s["gps"][:2])
        for m in n_points:
            if m in s:
                n_points[m].append(len(s[m]))
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"samples": n, "modalities": dict(mods), "labels": dict(labels),
                           "beam_not_argmax": beam_bad, "skipped": counter.count,
                           "samples_per_s": round(n / seconds, 1) if seconds > 0 else None}
    if gps:
        arr = np.asarray(gps)
        out["gps_extent_m"] = [round(float(v), 1) for v in np.ptp(arr, axis=0)]
    for m, sizes in n_points.items():
        if sizes:
            out[f"{m}_points"] = {"mean": round(float(np.mean(sizes)), 1), "max": int(np.max(sizes)),
                                  "empty": int(sum(x == 0 for x in sizes))}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shards.summary", description=__doc__)
    p.add_argument("root", type=Path, help="folder written by shards.write (or one split folder)")
    a = p.parse_args(argv)
    folders = [a.root / s for s in SPLIT_NAMES if (a.root / s).is_dir()] or [a.root]
    result = {f.name: summarise(f) for f in folders}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
