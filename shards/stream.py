"""Stream WebDataset shards into padded, masked training batches.

Decoding is ours and pickle-free: ``.npy`` through ``np.load(allow_pickle=False)``, JSON, JPEG through
PIL; any other member is refused. Shards are split across DeepSpeed ranks and DataLoader workers; a
truncated or corrupt shard is skipped with a warning and counted, and the stream goes on.
"""
from __future__ import annotations

import io
import itertools
import json
import random
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from shards.errors import DataError
from shards.schema import META_KEY, MODALITY_KEYS, NUM_KEYPOINTS, decode_npy
from shards.tarstream import tar_samples

POINT_WIDTH = {"radar": 5, "lidar": 4}
# shapes used to zero-fill a modality that no sample of a batch has (see StreamConfig.always)
FILL_SHAPES = {"radar": (1, 5), "lidar": (1, 4), "gps": (4,), "beam": (64,), "past_beam": (8, 64),
               "wifi": (3, 114, 10), "past_wifi": (1, 3, 114, 10)}
# sequences of a per-sample length, padded at the oldest end (``batch[m + "_mask"]``: B x T, True = real step)
PAST_SEQUENCES = ("past_wifi",)


@dataclass
class StreamConfig:
    """How shards become batches."""

    batch_size: int = 32
    image_size: int = 64          # images are resized to image_size x image_size
    max_points: int = 512         # point clouds above this are subsampled (seeded by the sample key)
    shuffle_buffer: int = 500     # 0 disables sample shuffling
    resampled: bool = False       # training: draw shards with replacement, endlessly
    epoch_samples: int | None = None  # with resampled: samples per rank per epoch
    num_workers: int = 0
    seed: int = 0
    drop_last: bool = False
    split_nodes: bool = True      # False: this process reads every shard (e.g. rank-0 validation)
    always: tuple[str, ...] = ()  # modalities every batch carries (zeros, present=False, when no sample has them)


class SkipCounter:
    """WebDataset exception handler: warn, count, and carry on (truncated tars, undecodable samples)."""

    def __init__(self) -> None:
        self.count = 0
        self.messages: list[str] = []

    def __call__(self, exc: BaseException) -> bool:
        self.count += 1
        self.messages.append(repr(exc)[:300])
        warnings.warn(f"skipping unreadable shard data: {exc!r}"[:500], stacklevel=2)
        return True


def shard_urls(spec: str | Path | Sequence[str | Path]) -> list[str]:
    """Tar shards from a folder (sorted ``*.tar``), a single tar, a brace pattern, or a list of these."""
    if isinstance(spec, (list, tuple)):
        return [u for s in spec for u in shard_urls(s)]
    spec = str(spec)
    path = Path(spec)
    if path.is_dir():
        urls = sorted(str(p) for p in path.glob("*.tar"))
        if not urls:
            raise DataError(path, "no .tar shards in this folder")
        return urls
    if "{" in spec:
        return list(wds.shardlists.expand_urls(spec))
    if not path.is_file():
        raise DataError(path, "shard file or folder not found")
    return [spec]


def decode_sample(raw: dict[str, Any], image_size: int) -> dict[str, Any]:
    """Raw tar members → arrays; checks that every modality the writer listed is present."""
    key = raw.get("__key__", "?")
    where = f"{raw.get('__url__', '?')}:{key}"
    if META_KEY not in raw:
        raise DataError(where, "sample has no meta.json (truncated shard?)")
    meta = json.loads(raw[META_KEY])
    out: dict[str, Any] = {"__key__": key, "meta": meta}
    allowed = set(MODALITY_KEYS.values())
    for name, data in raw.items():
        if name.startswith("__") or name == META_KEY:
            continue
        if name not in allowed:
            raise DataError(where, f"unexpected member {name!r} (not in the sample schema; refused)")
        if name == "image.jpg":
            out["image"] = _decode_image(data, image_size, where)
        else:
            out[name[: -len(".npy")]] = decode_npy(data, where)
    missing = [m for m in meta.get("modalities", []) if m[: m.rindex(".")] not in out]
    if missing:
        raise DataError(where, f"missing members {missing} (truncated shard?)")
    return out


def _decode_image(data: bytes, size: int, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (size, size))  # JPEG DCT-domain downscale: decodes big frames fast
            img = img.convert("RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DataError(where, f"corrupt image ({exc})") from exc


def _subsample(points: np.ndarray, limit: int, key: str) -> np.ndarray:
    if len(points) <= limit:
        return points
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    return points[np.sort(rng.choice(len(points), limit, replace=False))]


def collate(samples: Sequence[dict[str, Any]], max_points: int = 512, always: Sequence[str] = (),
            image_size: int = 64) -> dict[str, Any]:
    """Decoded samples → a batch of tensors.

    Each modality ``m`` gives ``batch[m]`` (zeros where absent) and ``batch["present"][m]`` (B bool);
    point clouds are padded to the largest cloud of the batch with ``batch[m + "_mask"]`` (B x P bool, True =
    real point); LiDAR N x 3 gets a zero intensity column; ``past_wifi`` (T x 3 x 114 x 10, T per sample) is
    padded at the oldest end to the batch's longest, with ``batch["past_wifi_mask"]`` (B x T). Labels:
    ``beam`` (best-beam index, -1 when absent), ``activity`` (-1), ``blockage`` (-1), ``keypoints``
    (B x 17 x 3, with ``has_keypoints``).
    """
    b = len(samples)
    batch: dict[str, Any] = {"key": [s["__key__"] for s in samples], "meta": [s["meta"] for s in samples],
                             "present": {}}
    for mod in MODALITY_KEYS:
        have = [mod in s for s in samples]
        batch["present"][mod] = torch.tensor(have, dtype=torch.bool)
        if not any(have):
            if mod in always:
                shape = (3, image_size, image_size) if mod == "image" else FILL_SHAPES[mod]
                batch[mod] = torch.zeros(b, *shape, dtype=torch.uint8 if mod == "image" else torch.float32)
                if mod in POINT_WIDTH or mod in PAST_SEQUENCES:
                    batch[mod + "_mask"] = torch.zeros(b, shape[0], dtype=torch.bool)
            continue
        if mod in POINT_WIDTH:
            width = POINT_WIDTH[mod]
            clouds = [_subsample(s[mod], max_points, s["__key__"]) if mod in s else np.zeros((0, width), np.float32)
                      for s in samples]
            n_max = max(1, max(len(c) for c in clouds))
            pts = torch.zeros(b, n_max, width)
            mask = torch.zeros(b, n_max, dtype=torch.bool)
            for i, c in enumerate(clouds):
                pts[i, : len(c), : c.shape[1]] = torch.from_numpy(np.ascontiguousarray(c, dtype=np.float32))
                mask[i, : len(c)] = True
            batch[mod], batch[mod + "_mask"] = pts, mask
        elif mod in PAST_SEQUENCES:
            steps = [s.get(mod) for s in samples]
            ref = next(x for x in steps if x is not None)
            t_max = max(len(x) for x in steps if x is not None)
            seq = torch.zeros(b, t_max, *ref.shape[1:])
            mask = torch.zeros(b, t_max, dtype=torch.bool)
            for i, x in enumerate(steps):
                if x is None:
                    continue
                if x.shape[1:] != ref.shape[1:]:
                    raise DataError(samples[i]["__key__"], f"{mod} step shape {x.shape[1:]} differs from "
                                                           f"{ref.shape[1:]} in batch")
                seq[i, t_max - len(x):] = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
                mask[i, t_max - len(x):] = True
            batch[mod], batch[mod + "_mask"] = seq, mask
        else:
            ref = next(s[mod] for s in samples if mod in s)
            for s in samples:
                if mod in s and s[mod].shape != ref.shape:
                    raise DataError(s["__key__"], f"{mod} shape {s[mod].shape} differs from {ref.shape} in batch")
            dtype = np.uint8 if mod == "image" else np.float32
            arr = np.zeros((b, *ref.shape), dtype)
            for i, s in enumerate(samples):
                if mod in s:
                    arr[i] = s[mod]
            tensor = torch.from_numpy(arr)
            batch[mod] = tensor.permute(0, 3, 1, 2).contiguous() if mod == "image" else tensor
    metas = batch["meta"]
    batch["beam_label"] = torch.tensor([m.get("beam", -1) for m in metas], dtype=torch.long)
    batch["activity"] = torch.tensor([m.get("activity", -1) for m in metas], dtype=torch.long)
    batch["blockage"] = torch.tensor([m.get("blockage_future", -1) for m in metas], dtype=torch.float32)
    # the link's state at frame t itself where the source records it (-1 elsewhere): never a model input, only
    # the persistence reference of the blockage metrics (finetune.train.baselines)
    batch["blocked_now"] = torch.tensor([m.get("blocked", -1) for m in metas], dtype=torch.float32)
    kp = torch.zeros(b, NUM_KEYPOINTS, 3)
    has_kp = torch.zeros(b, dtype=torch.bool)
    for i, m in enumerate(metas):
        if "keypoints" in m:
            kp[i] = torch.tensor(m["keypoints"], dtype=torch.float32)
            has_kp[i] = True
    batch["keypoints"], batch["has_keypoints"] = kp, has_kp
    return batch


class _Mix(torch.utils.data.IterableDataset):
    """Interleave endless sample streams with fixed probabilities, seeded per rank and worker."""

    def __init__(self, streams: list, probs: list[float], seed: int):
        super().__init__()
        self.streams, self.probs, self.seed = streams, probs, seed

    def __iter__(self):
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        rng = random.Random(self.seed * 7919 + rank * 1000 + worker)
        its = [iter(s) for s in self.streams]
        idx = list(range(len(its)))
        while True:
            yield next(its[rng.choices(idx, self.probs)[0]])


def make_dataset(groups: Sequence[Sequence[str]], cfg: StreamConfig, counter: SkipCounter | None = None) -> wds.DataPipeline:
    """The streaming pipeline: shards → (rank, worker split) → samples → decode → shuffle → batches.

    ``groups`` are lists of shard URLs (one per dataset). In resampled (training) mode each group is drawn
    endlessly and the groups are interleaved with equal probability, so that a small dataset (e.g. vehicle
    scenes beside many human frames) is seen as often as a large one; otherwise all shards are read once.
    """
    handler = counter or SkipCounter()
    decode = wds.map(lambda raw: decode_sample(raw, cfg.image_size), handler=handler)
    if cfg.resampled:
        streams = [wds.DataPipeline(wds.ResampledShards(list(urls), seed=cfg.seed, deterministic=True),
                                    tar_samples(handler=handler), decode) for urls in groups]
        stages: list[Any] = [streams[0] if len(streams) == 1 else _Mix(streams, [1.0] * len(streams), cfg.seed)]
    else:
        urls = [u for g in groups for u in g]
        stages = [wds.SimpleShardList(urls)] + ([wds.split_by_node] if cfg.split_nodes else []) + \
            [wds.split_by_worker, tar_samples(handler=handler), decode]
    pipeline = wds.DataPipeline(*stages, *_shuffle_and_batch(cfg))
    if cfg.resampled and cfg.epoch_samples:
        pipeline = pipeline.with_epoch(max(1, cfg.epoch_samples // (cfg.batch_size * max(1, cfg.num_workers))))
    return pipeline


def dataset_urls(spec: str | Path | Sequence[str | Path]) -> list[list[str]]:
    """The shard URLs of each dataset of ``spec``: each folder, file or pattern (or list item) one dataset."""
    return [shard_urls(s) for s in (list(spec) if isinstance(spec, (list, tuple)) else [spec])]


def _shuffle_and_batch(cfg: StreamConfig) -> list[Any]:
    """The last stages of a stream: the shuffle buffer (when ``cfg.shuffle_buffer`` > 0), then batches."""
    shuffle = [wds.shuffle(cfg.shuffle_buffer, initial=min(cfg.shuffle_buffer, 100), seed=cfg.seed)
               ] if cfg.shuffle_buffer > 0 else []
    return shuffle + [wds.batched(cfg.batch_size, partial=not cfg.drop_last,
                                  collation_fn=lambda s: collate(s, cfg.max_points, cfg.always, cfg.image_size))]


def interleave_once(groups: Sequence[Sequence[str]], seed: int,
                    handler: Callable[[BaseException], bool]) -> Iterator[dict[str, Any]]:
    """The raw samples of every group of shard URLs, each read once, one from each group in turn; a group
    that runs out drops out. Each group's shards are read in an order seeded by ``seed``."""
    streams = []
    for g, urls in enumerate(groups):
        order = list(urls)
        random.Random(seed * 7919 + g).shuffle(order)
        streams.append(iter(wds.DataPipeline(wds.SimpleShardList(order), tar_samples(handler=handler))))
    while streams:
        for it in list(streams):
            raw = next(it, None)
            if raw is None:
                streams.remove(it)
            else:
                yield raw


def one_pass_batches(spec: str | Path | Sequence[str | Path], cfg: StreamConfig, limit: int, rank: int = 0,
                     world: int = 1, counter: SkipCounter | None = None) -> Iterator[dict[str, Any]]:
    """Batches of at most ``limit`` samples over all ranks, each sample at most once (for a linear probe,
    where the resampled training stream would read a small dataset several times over and draw a large
    one's shards with replacement). The datasets of ``spec`` (each folder or file one) are interleaved one
    sample at a time by :func:`interleave_once`, so a dataset smaller than its share is read whole and the
    others share the rest, as training's equal mixing shares its steps; sample ``i`` of that stream goes to
    rank ``i % world`` (every rank reads the tar members, only its own samples are decoded). Then
    ``cfg``'s shuffle buffer and batches (``cfg.batch_size`` per rank), in this process (no workers)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} of {world} ranks")
    handler = counter or SkipCounter()
    raw = interleave_once(dataset_urls(spec), cfg.seed, handler)
    mine = (r for i, r in enumerate(itertools.islice(raw, max(0, limit))) if i % world == rank)
    stream: Iterator[Any] = wds.map(lambda r: decode_sample(r, cfg.image_size), handler=handler)(mine)
    for stage in _shuffle_and_batch(cfg):
        stream = stage(stream)
    yield from stream


def make_loader(spec: str | Path | Sequence[str | Path], cfg: StreamConfig,
                counter: SkipCounter | None = None) -> DataLoader:
    """A DataLoader over shard folders/files (each folder or file one dataset); batching happens in the
    workers."""
    dataset = make_dataset(dataset_urls(spec), cfg, counter)
    # batches are already collated in the workers: no default_convert pass over every nested meta value
    return DataLoader(dataset, batch_size=None, num_workers=cfg.num_workers, collate_fn=_as_is,
                      persistent_workers=cfg.num_workers > 0, pin_memory=torch.cuda.is_available())


def _as_is(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


def capped_batches(dirs: Sequence[str | Path], cfg: StreamConfig, max_samples: int | None = None
                   ) -> Iterator[dict[str, Any]]:
    """The batches of each dataset (shard folder) in turn, each read once and only until ``max_samples`` of
    its samples are read (the last batch may run past it; None: all). A cap shared by the datasets would let
    the first one read decide how much of the next is evaluated, or whether any of it is."""
    for d in dirs:
        n = 0
        for batch in make_loader([d], cfg):
            yield batch
            n += len(batch["key"])
            if max_samples and n >= max_samples:
                break


def iter_samples(spec: str | Path | Sequence[str | Path], image_size: int = 64,
                 counter: SkipCounter | None = None) -> Iterator[dict[str, Any]]:
    """Every decoded sample of the shards in order (single process; for checks and evaluation)."""
    cfg = StreamConfig(image_size=image_size, shuffle_buffer=0)
    handler = counter or SkipCounter()
    pipeline = wds.DataPipeline(wds.SimpleShardList(shard_urls(spec)), tar_samples(handler=handler),
                                wds.map(lambda raw: decode_sample(raw, cfg.image_size), handler=handler))
    yield from pipeline
