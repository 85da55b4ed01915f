"""Shared benchmark helpers: the machine description, timers and result files."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS = Path(os.environ.get("AIRBIND_BENCH_OUT", "reports/benchmarks"))


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` (device synchronised)."""
    out = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def record(name: str, result: dict) -> dict:
    """Print and write ``reports/benchmarks/<name>.json`` with the machine and the date."""
    result = {"benchmark": name, "date": date.today().isoformat(), "machine": machine(), **result}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result
