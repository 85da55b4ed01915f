"""Stage-one input-pipeline overhead: end-to-end training samples/s (shards → decode → collate → DeepSpeed
step) divided by compute-only samples/s of the same model on the same batches held in memory (target ≥ 0.95).

``python benchmarks/pipeline_overhead.py [--steps 30] [--preset demo] [--workers 1]``
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import record, sync  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="demo")
    p.add_argument("--steps", type=int, default=30, help="measured steps (after 3 warm-up steps)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the preset's)")
    p.add_argument("--data", nargs="*", default=[], help="shard roots (default: the built-in twin)")
    a = p.parse_args(argv)
    from airbind.paths import configure_tool_caches
    from finetune.config import merge
    from pretrain.config import PRESETS, PretrainConfig
    from pretrain.data import resolve_data, split_dirs
    from pretrain.distributed import init_distributed
    from pretrain.train import build_engine, stream_config, to_device, train_step
    from shards.stream import make_loader
    configure_tool_caches()
    cfg = merge(PretrainConfig(), PRESETS[a.preset])
    if a.workers is not None:
        cfg.workers = a.workers
    cfg.steps_per_epoch = a.steps + 3
    info = init_distributed()
    roots = resolve_data(a.data)
    engine, loss_fn = build_engine(cfg, info)
    loader = make_loader(split_dirs(roots, "train"), stream_config(cfg, cfg.batch_size, 0, True, cfg.binding.modalities))
    # end to end: the loader's start-up is part of the cost, as in training (first 3 steps are warm-up)
    held, n, t0 = [], 0, time.perf_counter()
    t_start = None
    for i, batch in enumerate(loader):
        if i == 3:
            sync()
            t_start, n = time.perf_counter(), 0
        if i >= a.steps + 3:
            break
        batch = to_device(batch, info.device)
        train_step(engine, batch, loss_fn)
        held.append(batch)
        n += len(batch["key"])
    sync()
    e2e = n / (time.perf_counter() - t_start)
    startup = t_start - t0
    # compute only: the same batches again, already decoded and in device memory
    measured = held[3:]
    sync()
    t1 = time.perf_counter()
    for batch in measured:
        train_step(engine, batch, loss_fn)
    sync()
    compute = sum(len(b["key"]) for b in measured) / (time.perf_counter() - t1)
    return record("pipeline_overhead", {
        "device": str(info.device), "preset": a.preset, "batch_size": cfg.batch_size, "workers": cfg.workers,
        "steps": a.steps, "end_to_end_samples_per_s": round(e2e, 2), "compute_only_samples_per_s": round(compute, 2),
        "ratio": round(e2e / compute, 3), "target": 0.95, "warmup_and_loader_startup_s": round(startup, 2)})


if __name__ == "__main__":
    main()
    torch.distributed.destroy_process_group() if torch.distributed.is_initialized() else None
