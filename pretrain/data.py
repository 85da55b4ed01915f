"""Stage-one data: the built-in twin's shards (built once into the cache) or shard folders the user gives."""
from __future__ import annotations

import hashlib
from pathlib import Path

from airbind.paths import build_once, cache_dir
from shards.write import WriteConfig, write_dataset

# vehicle scenes: sequence split with scenario4 held out (an unseen scenario); human scenes: subject split
TWIN_SPLITS = {
    "vehicles": dict(source="deepsense", split="sequence", fractions=(0.75, 0.25, 0.0), held_out_test=["scenario4"]),
    "humans": dict(source="mmfi", split="subject", fractions=(0.75, 0.125, 0.125)),  # 12 / 2 / 2 subjects
}


def twin_shards(kind: str, shard_size: int = 200) -> Path:
    """Shards of the default twin dataset ``kind`` (vehicles or humans), written once into the cache."""
    from twin import cache as twin_cache
    raw = twin_cache.default_vehicles() if kind == "vehicles" else twin_cache.default_humans()
    spec = TWIN_SPLITS[kind]
    # "splits-2": pinned groups no longer shrink val (shards/splits.py free_targets); "past-wifi": human frames
    # carry their previous frames' CSI (past_wifi.npy); "blockage-within": the future-blockage label is a
    # blockage in any of the next frames (airbind/blockage.py). Older caches are rebuilt.
    tag = "shuffled;splits-2" + (";past-wifi" if kind == "humans" else ";blockage-within")
    digest = hashlib.sha256(f"{raw.name}{spec}{shard_size}{tag}".encode()).hexdigest()[:10]
    build = lambda tmp: write_dataset(WriteConfig(spec["source"], raw, tmp, split=spec["split"],  # noqa: E731
                                                  fractions=spec["fractions"],
                                                  held_out_test=spec.get("held_out_test", []),
                                                  shard_size=shard_size, progress=False))
    return build_once(cache_dir() / "shards" / f"{kind}-{digest}", "report.json", build)


def resolve_data(data: list[str]) -> list[Path]:
    """Shard roots (folders holding train/ and val/): the user's, or the built-in twin's when none given."""
    if data:
        roots = [Path(d) for d in data]
        for r in roots:
            if not (r / "train").is_dir():
                raise FileNotFoundError(f"{r}: expected a folder written by shards.write (with train/ and val/)")
        return roots
    return [twin_shards("vehicles"), twin_shards("humans")]


def split_dirs(roots: list[Path], split: str) -> list[Path]:
    return [r / split for r in roots if (r / split).is_dir() and any((r / split).glob("*.tar"))]
