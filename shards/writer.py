"""Write records as WebDataset tar shards, one folder per split, atomically."""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from shards.errors import DataError
from shards.records import BadInput, Record
from shards.schema import META_KEY, encode_sample


class ShardSink:
    """Append samples to ``shard-000000.tar``, ``shard-000001.tar``... of at most ``shard_size`` samples.

    Members get mtime 0 and a fixed order (arrays, image, then ``meta.json`` last), so the same input gives
    byte-identical shards and a truncated sample always lacks its ``meta.json``.
    """

    def __init__(self, folder: Path, shard_size: int):
        self.folder, self.shard_size = folder, shard_size
        self.counts: dict[str, int] = {}
        self._tar: tarfile.TarFile | None = None
        self._name = ""

    def add(self, payloads: dict[str, Any]) -> None:
        if self._tar is None or self.counts[self._name] >= self.shard_size:
            self.close()
            self._name = f"shard-{len(self.counts):06d}.tar"
            self.counts[self._name] = 0
            self._tar = tarfile.open(self.folder / self._name, "w", format=tarfile.USTAR_FORMAT)
        key = payloads["__key__"]
        names = sorted(n for n in payloads if n not in ("__key__", META_KEY)) + [META_KEY]
        for name in names:
            data = payloads[name]
            info = tarfile.TarInfo(f"{key}.{name}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))
        self.counts[self._name] += 1

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None


def write_split(records: Sequence[Record], out: Path, split: str, shard_size: int, bad: BadInput,
                progress: bool = True, gps_out: list | None = None) -> dict[str, Any]:
    """Load, validate and write ``records`` into ``out/split``; the old folder is replaced only on success.

    East/north positions of the written samples are appended to ``gps_out`` when given (for reports).
    """
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{split}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    sink = ShardSink(tmp, shard_size)
    modalities: Counter[str] = Counter()
    try:
        for record in tqdm(records, desc=f"writing {split}", unit="sample", disable=None if progress else True):
            try:
                sample = record.load()
            except DataError as exc:
                bad(exc)
                continue
            sample["__key__"] = record.key
            sample[META_KEY]["modalities"] = sorted(k for k in sample if k not in ("__key__", META_KEY))
            modalities.update(sample[META_KEY]["modalities"])
            if gps_out is not None and "gps.npy" in sample:
                gps_out.append(sample["gps.npy"][:2])
            sink.add(encode_sample(sample))
        sink.close()
        sizes = {"samples": sum(sink.counts.values()), "shards": sink.counts, "modalities": dict(modalities)}
        (tmp / "sizes.json").write_text(json.dumps(sizes, indent=1))
    except BaseException:
        sink.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = out / split
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return sizes
