"""Splits that keep correlated samples together: random, by sequence, scenario, subject, environment,
or the dataset's official train/val/test files."""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Callable, Sequence

from shards.records import Record

SPLIT_NAMES = ("train", "val", "test")

GROUPERS: dict[str, Callable[[Record], str]] = {
    "random": lambda r: r.key,
    "sequence": lambda r: f"{r.source}/{r.group}/{r.seq}",
    "scenario": lambda r: f"{r.source}/{r.group}",
    "environment": lambda r: f"{r.source}/{r.meta.get('env', r.group)}",
    "subject": lambda r: f"{r.source}/{r.meta.get('subject', r.group)}",
}


def free_targets(total: int, fractions: Sequence[float], pinned: dict[str, int]) -> dict[str, float]:
    """Sample counts the unpinned groups should bring to each split: ``fraction * total`` minus what is
    pinned there, never below 0. When pinned groups overfill a split (e.g. a held-out test scenario with a
    test fraction of 0), the others' shortfalls are scaled down together to the unpinned samples, so the
    unpinned samples keep the ratio of the fractions (0.8 / 0.2 / 0 → 4 : 1) instead of the shortfall
    falling on whichever split the greedy order serves last."""
    free = total - sum(pinned.values())
    short = {s: max(f * total - pinned.get(s, 0), 0.0) for s, f in zip(SPLIT_NAMES, fractions)}
    need = sum(short.values())
    scale = free / need if need > free > 0 else 1.0
    return {s: v * scale for s, v in short.items()}


def assign_splits(
    records: Sequence[Record],
    mode: str = "sequence",
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    held_out: dict[str, Sequence[str]] | None = None,
) -> dict[str, list[Record]]:
    """Split ``records`` into train/val/test so that no group of ``mode`` lands in two splits.

    Groups are shuffled with ``seed`` and each goes to the split furthest below its target share of
    samples (:func:`free_targets`: pinned groups count toward their split). ``held_out`` (e.g.
    ``{"test": ["E04"]}`` or ``{"test": ["scenario4"]}``) first pins every group whose name, or one part of
    its ``/``-separated name, matches. ``mode="official"`` uses the dataset's own train/val/test files.
    """
    if mode == "official":
        out: dict[str, list[Record]] = {name: [] for name in SPLIT_NAMES}
        for r in records:
            if r.official_split is None:
                raise ValueError(f"{r.key}: no official split (the index has no *_train/_val/_test CSV)")
            out[r.official_split].append(r)
        return out
    if mode not in GROUPERS:
        raise ValueError(f"unknown split mode {mode!r}; choose from {sorted(GROUPERS) + ['official']}")
    if len(fractions) != len(SPLIT_NAMES) or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    group_of = GROUPERS[mode]
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[group_of(r)].append(r)
    out = {name: [] for name in SPLIT_NAMES}
    pinned: dict[str, str] = {}
    for split, names in (held_out or {}).items():
        for name in names:
            pinned[name] = split
    free = []
    for name in sorted(groups):
        split = pinned.get(name) or next((pinned[p] for p in name.split("/") if p in pinned), None)
        if split:
            out[split].extend(groups[name])
        else:
            free.append(name)
    random.Random(seed).shuffle(free)
    targets = free_targets(len(records), fractions, {s: len(out[s]) for s in SPLIT_NAMES})
    taken = {s: 0 for s in SPLIT_NAMES}  # unpinned samples given to each split so far
    for name in free:
        split = max(SPLIT_NAMES, key=lambda s: (targets[s] - taken[s]) if targets[s] > 0 else float("-inf"))
        out[split].extend(groups[name])
        taken[split] += len(groups[name])
    return out
