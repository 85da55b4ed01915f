"""Beam-prediction latency of the default stage-two model at batch 1 and 64 (p50 / p99), eager next to the
``torch.export`` program and the ONNX Runtime model of finetune/export.py (both checked equal to eager),
``torch.compile`` (with CUDA graphs on a GPU; checked equal to eager), the eager model replayed as one CUDA graph
(GPU only, checked equal to eager), and two numerically different models whose top-1 agreement with eager is
measured, not assumed: that graph under bf16 autocast (GPU) and the ONNX model with int8 weights.
Targets: p50 ≤ 20 ms at batch 1 on a 2-core CPU, ≤ 2 ms on an H100.

``python benchmarks/latency.py [CHECKPOINT] [--repeats 30]``
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import record, timed  # noqa: E402


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def kernel_profile(fn, top: int = 10) -> dict:
    """One call of ``fn`` under the CUDA profiler: how many kernels (and memsets) it runs, their summed device
    time, and the ``top`` kernels by device time. What a CUDA graph replay of ``fn`` still has to execute."""
    from torch.profiler import ProfilerActivity, profile
    with torch.inference_mode():
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    events.sort(key=lambda e: -e.device_time_total)
    return {"kernels": sum(e.count for e in events),
            "device_ms": round(sum(e.device_time_total for e in events) / 1e3, 3),
            "top": [{"kernel": e.key[:100], "calls": e.count, "device_us": round(e.device_time_total, 1)}
                    for e in events[:top]]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", nargs="?", default="runs/demo/finetune", help="stage-two checkpoint or run folder")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime export (≈ 2 min per batch size)")
    p.add_argument("--no-int8", action="store_true", help="skip the int8-quantised ONNX Runtime model")
    p.add_argument("--profile", action="store_true",
                   help="on a GPU: kernel count and device time of one eager forward pass")
    p.add_argument("--data", nargs="*", default=None,
                   help="shard roots with vehicle scenes (default: the checkpoint's training data)")
    a = p.parse_args(argv)
    from airbind.checkpoint import checkpoint_at
    from airbind.paths import configure_tool_caches
    from evaluation.common import roots_for
    import tempfile
    from finetune.export import (BeamPredictor, CudaGraphPredictor, OnnxBeamPredictor, agreement, check,
                                 example_batches, export, quantize_int8, to_onnx)
    from finetune.train import load_model
    from pretrain.data import resolve_data, split_dirs
    configure_tool_caches()
    ckpt = checkpoint_at(Path(a.checkpoint), "stage-two")
    model, cfg = load_model(ckpt)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    predictor = BeamPredictor(model.to(dev), cfg.max_points)
    vehicle_dirs = split_dirs(roots_for("beam", resolve_data(cfg.data if a.data is None else a.data)), "val")
    results: dict = {"checkpoint": str(ckpt), "device": str(dev), "threads": torch.get_num_threads()}
    for bs in a.batches:
        batch = example_batches(cfg, vehicle_dirs, bs, n=1)[0]
        if len(batch["key"]) < bs:  # a small split: repeat its samples up to the batch size
            idx = torch.arange(bs) % len(batch["key"])
            batch = {k: (v[idx] if isinstance(v, torch.Tensor) else {kk: vv[idx] for kk, vv in v.items()} if isinstance(v, dict)
                         else [v[i] for i in idx.tolist()]) for k, v in batch.items()}
        x = predictor.flatten(batch)  # on the model's device
        # where a model's numbers differ from eager's (bf16 on a GPU, int8) its decisions are compared with
        # eager's: at batch 1 on every validation sample, else on the timed batch; read only if one of them runs
        low_precision_rows = dev.type == "cuda" or not (a.no_onnx or a.no_int8)
        val = (example_batches(cfg, vehicle_dirs, 1, n=10**6) if bs == 1 else [batch]) if low_precision_rows else []
        res = {}
        with torch.inference_mode():
            timed(lambda: predictor(*x), 3)
            res["eager"] = percentiles(timed(lambda: predictor(*x), a.repeats))
        if dev.type == "cuda" and a.profile:
            res["profile_eager"] = kernel_profile(lambda: predictor(*x))
        if dev.type == "cuda":  # the eager model's kernels captured once and replayed with one launch
            try:
                graphed = CudaGraphPredictor(predictor, x)
                res["cuda_graph_max_abs_diff"] = check(predictor, graphed, [batch])
                with torch.inference_mode():
                    timed(lambda: graphed(*x), 3)
                    res["cuda_graph"] = percentiles(timed(lambda: graphed(*x), a.repeats))
            except Exception as e:  # noqa: BLE001 — report why capture failed, keep the other rows
                res["cuda_graph"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            try:  # bf16 autocast, the precision of GPU training: its decisions compared with eager's, as int8's
                graphed16 = CudaGraphPredictor(predictor, x, dtype=torch.bfloat16)
                with torch.inference_mode():
                    timed(lambda: graphed16(*x), 3)
                    res["cuda_graph_bf16"] = {**percentiles(timed(lambda: graphed16(*x), a.repeats)),
                                              **{k: round(v, 4) for k, v in agreement(predictor, graphed16,
                                                                                      val).items()}}
            except Exception as e:  # noqa: BLE001
                res["cuda_graph_bf16"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        program = export(predictor, x)
        res["export_max_abs_diff"] = check(predictor, program, [batch])
        exported = program.module()
        with torch.inference_mode():
            timed(lambda: exported(*x), 3)
            res["torch.export"] = percentiles(timed(lambda: exported(*x), a.repeats))
        if not a.no_onnx:
            with tempfile.TemporaryDirectory() as tmp:
                runner = OnnxBeamPredictor(to_onnx(program, Path(tmp) / "beam.onnx"))
                runner8 = None if a.no_int8 else OnnxBeamPredictor(quantize_int8(Path(tmp) / "beam.onnx",
                                                                                 Path(tmp) / "beam.int8.onnx"))
            res["onnx_max_abs_diff"] = check(predictor, runner, [batch])
            timed(lambda: runner(*x), 3)
            # the CPU wheel of onnxruntime has no CUDA provider: on a GPU machine this row runs on the CPU
            res["onnxruntime"] = {**percentiles(timed(lambda: runner(*x), a.repeats)),
                                  "provider": runner.session.get_providers()[0]}
            if runner8 is not None:
                # int8 weights change the numbers: not a candidate for "best"
                timed(lambda: runner8(*x), 3)
                res["onnxruntime_int8"] = {**percentiles(timed(lambda: runner8(*x), a.repeats)),
                                           "provider": runner8.session.get_providers()[0],
                                           **{k: round(v, 4) for k, v in agreement(predictor, runner8, val).items()}}
        if not a.no_compile:
            try:
                mode = "reduce-overhead" if dev.type == "cuda" else "default"  # CUDA graphs under inductor on GPU
                compiled = torch.compile(predictor, mode=mode)
                with torch.inference_mode():
                    timed(lambda: compiled(*x), 3)  # compiles
                    res["torch.compile"] = {**percentiles(timed(lambda: compiled(*x), a.repeats)), "mode": mode}
                    # on the timed inputs in the same grad mode: another mode would recompile
                    res["compile_max_abs_diff"] = float((compiled(*x) - predictor(*x)).abs().max())
            except Exception as e:  # noqa: BLE001 — report why compile is unavailable here, keep the others
                res["torch.compile"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        best = min((v["p50_ms"], k) for k, v in res.items() if isinstance(v, dict) and "p50_ms" in v
                   and "top1_agreement" not in v
                   and v.get("provider", "CUDA" if dev.type == "cuda" else "CPU").startswith(dev.type.upper()))
        res["best"] = best[1]
        res["speedup_best_vs_eager_p50"] = round(res["eager"]["p50_ms"] / best[0], 2)
        for row in ("onnxruntime_int8", "cuda_graph_bf16"):
            if "p50_ms" in res.get(row, {}):
                res[f"speedup_{row}_vs_eager_p50"] = round(res["eager"]["p50_ms"] / res[row]["p50_ms"], 2)
        results[f"batch_{bs}"] = res
    results["target_p50_ms_batch1"] = 2.0 if dev.type == "cuda" else 20.0
    return record("latency", results)


if __name__ == "__main__":
    main()
