"""Stage-one and stage-two training samples/s on one device, with model FLOPs utilisation on a GPU (bf16,
fused AdamW, channels-last images, DataLoader workers tuned); on a CPU it reports samples/s only.
Batches are held in memory, so this measures the model, not the input pipeline (see pipeline_overhead.py).

``python benchmarks/throughput_gpu.py [--steps 20] [--batch-size 64]``
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import record, timed  # noqa: E402

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16 tensor-core peaks


def flops_of(fn) -> float:
    """FLOPs of one call of ``fn`` (forward and backward) counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def mfu(flops_per_step: float, steps: int, seconds: float, device: str) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the device's dense bf16 peak (None for an unknown GPU)."""
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device), None)
    return round(flops_per_step * steps / seconds / (peak * 1e12), 4) if peak else None


def batches(cfg_like, dirs, modalities, batch_size: int, n: int, device) -> list[dict]:
    from pretrain.train import stream_config, to_device
    from shards.stream import make_loader
    out = []
    for b in make_loader(dirs, stream_config(cfg_like, batch_size, 0, True, modalities)):
        out.append(to_device(b, device))
        if len(out) >= n:
            break
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--finetune", default="runs/demo/finetune", help="stage-two run whose recipe is measured")
    p.add_argument("--data", nargs="*", default=[], help="shard roots (default: the built-in twin)")
    a = p.parse_args(argv)
    from airbind.paths import configure_tool_caches
    from finetune.config import merge
    from pretrain.config import PRESETS, PretrainConfig
    from pretrain.data import resolve_data, split_dirs
    from pretrain.distributed import init_distributed
    from pretrain.train import build_engine, train_step
    configure_tool_caches()
    gpu = torch.cuda.is_available()
    cfg = merge(PretrainConfig(), PRESETS["demo"])
    cfg.batch_size, cfg.steps_per_epoch, cfg.bf16, cfg.data = a.batch_size, a.steps, "auto", a.data
    info = init_distributed()
    roots = resolve_data(cfg.data)
    engine, loss_fn = build_engine(cfg, info)
    # channels-last: the image encoder hands its input to the convolutions channels-last; the weights stay
    # contiguous, since ZeRO flattens their gradients with .view (channels-last weights failed there on an H100)
    held = batches(cfg, split_dirs(roots, "train"), cfg.binding.modalities, a.batch_size, a.steps, info.device)
    res: dict = {"device": torch.cuda.get_device_name(0) if gpu else "cpu", "batch_size": a.batch_size,
                 "bf16": bool(gpu)}
    it = iter(held * 2)
    train_step(engine, next(it), loss_fn)  # warm-up
    sec = sum(timed(lambda: train_step(engine, next(it), loss_fn), a.steps - 1))
    res["stage_one_samples_per_s"] = round(a.batch_size * (a.steps - 1) / sec, 2)
    if gpu:
        f = flops_of(lambda: train_step(engine, held[0], loss_fn))
        res["stage_one_mfu"] = mfu(f, a.steps - 1, sec, res["device"])
    # stage two: the recipe of the given run (backbone, layers, LoRA), plain loop with AdamW (fused on GPU)
    from airbind.checkpoint import checkpoint_at
    from evaluation.training import base_config
    from finetune.train import build_model
    ckpt = checkpoint_at(Path(a.finetune), "stage-two")
    fcfg = merge(base_config(ckpt), {"encoders": None, "batch_size": a.batch_size})
    model = build_model(fcfg).to(info.device)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=gpu)
    held2 = batches(fcfg, split_dirs(roots, "train"), fcfg.model.binding.modalities, a.batch_size, a.steps, info.device)
    it2 = iter(held2 * 2)

    def step2():
        with torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=gpu):
            loss, _ = model(next(it2))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    step2()
    sec2 = sum(timed(step2, a.steps - 1))
    res["stage_two_samples_per_s"] = round(a.batch_size * (a.steps - 1) / sec2, 2)
    if gpu:
        res["stage_two_mfu"] = mfu(flops_of(step2), a.steps - 1, sec2, res["device"])
    return record("throughput_gpu", res)


if __name__ == "__main__":
    main()
