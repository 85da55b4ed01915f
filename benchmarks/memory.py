"""Peak resident memory of stage-one training streaming 1x and 10x the shards (every sample once): it must
stay flat, since shards are streamed, never loaded whole. Each size runs in a fresh process.

``python benchmarks/memory.py [--times 1 10] [--preset small]``
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import record  # noqa: E402


def child(folder: Path, preset: str) -> None:
    """Train over every sample of ``folder`` once; print samples and peak RSS (MiB) as JSON."""
    from airbind.paths import configure_tool_caches
    from finetune.config import merge
    from pretrain.config import PRESETS, PretrainConfig
    from pretrain.distributed import init_distributed
    from pretrain.train import build_engine, to_device, train_step
    from shards.stream import StreamConfig, make_loader
    configure_tool_caches()
    cfg = merge(PretrainConfig(), PRESETS[preset])
    cfg.batch_size = 32
    info = init_distributed()
    engine, loss_fn = build_engine(cfg, info)
    stream = StreamConfig(batch_size=cfg.batch_size, image_size=cfg.image_size, max_points=cfg.max_points,
                          shuffle_buffer=cfg.shuffle_buffer, num_workers=1, always=tuple(cfg.binding.modalities))
    n = 0
    for batch in make_loader([folder], stream):
        train_step(engine, to_device(batch, info.device), loss_fn)
        n += len(batch["key"])
    self_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"samples": n, "peak_rss_mib": round(self_mib, 1), "peak_worker_rss_mib": round(workers_mib, 1)}))


def replicate(src: Path, dst: Path, times: int) -> None:
    """``dst`` holds the shards of ``src`` ``times`` over (symbolic links under new names)."""
    dst.mkdir(parents=True)
    for t in range(times):
        for shard in sorted(src.glob("*.tar")):
            (dst / f"copy{t:03d}-{shard.name}").symlink_to(shard.resolve())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--times", type=int, nargs="+", default=[1, 10])
    p.add_argument("--preset", default="small")
    p.add_argument("--shards", type=Path, default=None, help="a split folder (default: the twin's vehicle train split)")
    p.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(a.child, a.preset)
        return {}
    if a.shards is None:
        from pretrain.data import twin_shards
        a.shards = twin_shards("vehicles") / "train"
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for t in a.times:
            folder = Path(tmp) / f"x{t}"
            replicate(a.shards, folder, t)
            proc = subprocess.run([sys.executable, __file__, "--child", str(folder), "--preset", a.preset],
                                  capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"memory child for {t}x failed:\n{proc.stderr[-3000:]}")
            runs[f"{t}x"] = json.loads(proc.stdout.strip().splitlines()[-1])
    lo, hi = runs[f"{min(a.times)}x"], runs[f"{max(a.times)}x"]
    return record("memory", {"shards": str(a.shards), "preset": a.preset, "runs": runs,
                             "peak_rss_ratio_max_vs_min": round(hi["peak_rss_mib"] / lo["peak_rss_mib"], 3)})


if __name__ == "__main__":
    main()
