"""Stage-one input-pipeline overhead: end-to-end training samples/s (shards → decode → collate → DeepSpeed
step) divided by compute-only samples/s of the same model on the same batches held in memory (target ≥ 0.95).

The two are measured in alternating blocks of ``--block`` steps (each end-to-end block, then the same batches
again from memory), so that a drift of the machine's speed during the run (shared or throttled CPUs) falls
on both alike; the spread of the per-block ratios is reported beside the overall ratio.

``python benchmarks/pipeline_overhead.py [--steps 30] [--block 5] [--preset demo] [--workers 1]``
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
    p.add_argument("--block", type=int, default=5, help="steps per alternating block")
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
    # the loader's start-up is part of the cost, as in training, but the first 3 steps are warm-up
    batches, t0 = iter(loader), time.perf_counter()
    for _ in range(3):
        train_step(engine, to_device(next(batches), info.device), loss_fn)
    sync()
    startup = time.perf_counter() - t0
    e2e_s = compute_s = 0.0
    n, ratios = 0, []
    for start in range(0, a.steps, a.block):
        held, size = [], min(a.block, a.steps - start)
        t1 = time.perf_counter()
        for _ in range(size):  # end to end: read, decode, collate, move, step
            batch = to_device(next(batches), info.device)
            train_step(engine, batch, loss_fn)
            held.append(batch)
        sync()
        t2 = time.perf_counter()
        for batch in held:  # compute only: the same batches again, already decoded and on the device
            train_step(engine, batch, loss_fn)
        sync()
        t3 = time.perf_counter()
        e2e_s, compute_s = e2e_s + t2 - t1, compute_s + t3 - t2
        n += sum(len(b["key"]) for b in held)
        ratios.append((t3 - t2) / (t2 - t1))
    e2e, compute = n / e2e_s, n / compute_s
    return record("pipeline_overhead", {
        "device": str(info.device), "preset": a.preset, "batch_size": cfg.batch_size, "workers": cfg.workers,
        "steps": a.steps, "end_to_end_samples_per_s": round(e2e, 2), "compute_only_samples_per_s": round(compute, 2),
        "ratio": round(e2e / compute, 3), "block_ratios_min_max": [round(min(ratios), 3), round(max(ratios), 3)],
        "block": a.block, "target": 0.95, "warmup_and_loader_startup_s": round(startup, 2)})


if __name__ == "__main__":
    main()
    torch.distributed.destroy_process_group() if torch.distributed.is_initialized() else None
