"""Shared fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest

from shards.write import WriteConfig, write_dataset
from tests import builders


@pytest.fixture(scope="session")
def mixed_shards(tmp_path_factory) -> Path:
    """Vehicle (DeepSense layout) and human (MM-Fi layout) samples in one shard root."""
    from twin.humans import HumanTwinConfig, generate
    raw = tmp_path_factory.mktemp("raw")
    generate(raw / "humans", HumanTwinConfig(envs=1, subjects=2, frames=5, activities=4, workers=1), progress=False)
    builders.deepsense_full(raw / "vehicles", seqs=4, frames=12)
    out = tmp_path_factory.mktemp("shards")
    for name, src in (("humans", "mmfi"), ("vehicles", "deepsense")):
        write_dataset(WriteConfig(src, raw / name, out / name, split="random", fractions=(0.75, 0.25, 0.0),
                                  shard_size=10, progress=False))
    return out


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """A tiny random Llama with a word-level tokenizer, saved locally (no download)."""
    from tests.tiny_backbone import make_tiny_backbone
    return make_tiny_backbone(tmp_path_factory.mktemp("tiny_llama"))
