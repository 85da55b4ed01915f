"""``python -m twin {vehicles,humans,report,default}``: write digital-twin datasets in the real on-disk formats."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from airbind.paths import REPO_ROOT, configure_tool_caches

REAL_SCENARIO5 = REPO_ROOT.parent / "shared" / "data" / "deepsense" / "scenario5"


def _humans(a: argparse.Namespace) -> int:
    from twin.humans import SMALL, HumanTwinConfig, generate
    kw = dict(envs=a.envs, subjects=a.subjects, frames=a.frames, activities=a.activities, seed=a.seed,
              workers=a.workers, image_width=a.image_size[0], image_height=a.image_size[1])
    if a.small:
        kw.update(SMALL)
    cfg = HumanTwinConfig(**kw)
    t0 = time.perf_counter()
    info = generate(a.out, cfg, progress=not a.no_progress)
    dt = time.perf_counter() - t0
    print(f"wrote {info['frames_written']} frames ({cfg.envs} environments, {cfg.subjects} subjects, "
          f"{cfg.activities} activities) to {a.out} in {dt:.1f} s")
    return 0


def _vehicles(a: argparse.Namespace) -> int:
    from twin.vehicles import SMALL, VehicleTwinConfig, generate
    kw = dict(scenarios=a.scenarios, samples_per_scenario=a.samples_per_scenario, seed=a.seed,
              image_size=tuple(a.image_size), rate_hz=a.rate_hz, workers=a.workers)
    if a.small:
        kw.update(SMALL)
    cfg = VehicleTwinConfig(**kw)
    info = generate(a.out, cfg, progress=not a.no_progress)
    n = sum(s["samples"] for s in info["scenarios"])
    print(f"wrote {n} samples in {cfg.scenarios} scenario folders to {a.out} in {info['seconds']:.1f} s "
          f"({info['seconds_per_sample']:.2f} s per sample)")
    return 0


def _report(a: argparse.Namespace) -> int:
    info_path = a.dir / "twin_info.json"
    kind = json.loads(info_path.read_text())["kind"] if info_path.is_file() else "humans"
    out = a.out or a.dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    if kind == "humans":
        from twin.human_report import csi_window_learnability, figure, learnability
        figure(a.dir, out / "humans.png")
        result = learnability(a.dir)
        result["csi_window_accuracy"] = csi_window_learnability(a.dir)
        windows = " / ".join(f"{acc:.3f} over {w}" for w, acc in result["csi_window_accuracy"].items())
        text = (f"human twin {a.dir}\nlearnability (logistic regression on per-frame LiDAR/radar/CSI features, "
                f"cross-subject): accuracy {result['accuracy']:.3f} vs chance {result['chance']:.3f} "
                f"({result['train_frames']} train / {result['test_frames']} test frames)\n"
                f"CSI alone, motion features of the last frames' packets: accuracy {windows or '-'} frames\n")
        (out / "humans.json").write_text(json.dumps(result, indent=1))
    elif kind == "vehicles":
        from twin.vehicle_report import report
        result = report(a.dir, out, a.real)
        text = result["text"]
    else:
        print(f"error: unknown twin kind {kind!r} in {info_path}", file=sys.stderr)
        return 2
    (out / "report.txt").write_text(text)
    print(text + f"figure and numbers in {out}")
    return 0


def _default(a: argparse.Namespace) -> int:
    from twin import cache
    print(cache.default_humans() if a.kind == "humans" else cache.default_vehicles())
    return 0


def main(argv: list[str] | None = None) -> int:
    configure_tool_caches()
    p = argparse.ArgumentParser(prog="python -m twin", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("humans", help="human activity scenes in the MM-Fi layout",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    h.add_argument("--out", type=Path, required=True)
    h.add_argument("--envs", type=int, default=4)
    h.add_argument("--subjects", type=int, default=40, help="in total, spread evenly over the environments")
    h.add_argument("--frames", type=int, default=60, help="frames per action sequence (10 Hz)")
    h.add_argument("--activities", type=int, default=27)
    h.add_argument("--image-size", type=int, nargs=2, default=(64, 48), metavar=("W", "H"))
    h.add_argument("--seed", type=int, default=0)
    h.add_argument("--workers", type=int, default=0, help="processes (0 = all cores)")
    h.add_argument("--small", action="store_true", help="tiny preset for tests (2 rooms, 4 subjects, 8 frames)")
    h.add_argument("--no-progress", action="store_true")
    h.set_defaults(func=_humans)
    v = sub.add_parser("vehicles", help="ray-traced street scenes in the DeepSense 6G layout",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    v.add_argument("--out", type=Path, required=True)
    v.add_argument("--scenarios", type=int, default=4)
    v.add_argument("--samples-per-scenario", type=int, default=200)
    v.add_argument("--rate-hz", type=float, default=10.0, help="sampling rate of a pass")
    v.add_argument("--image-size", type=int, nargs=2, default=(128, 72), metavar=("W", "H"))
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--workers", type=int, default=1, help="processes, one scenario each (Dr.Jit already uses all cores)")
    v.add_argument("--small", action="store_true", help="tiny preset for tests (1 scenario, 16 samples)")
    v.add_argument("--no-progress", action="store_true")
    v.set_defaults(func=_vehicles)
    r = sub.add_parser("report", help="figure + numbers for a twin folder")
    r.add_argument("dir", type=Path)
    r.add_argument("--out", type=Path, default=None, help="default: DIR/report")
    r.add_argument("--real", type=Path, default=REAL_SCENARIO5,
                   help="real DeepSense scenario folder to compare a vehicle twin with (skipped if absent)")
    r.set_defaults(func=_report)
    d = sub.add_parser("default", help="print (building once if needed) the cached default dataset folder")
    d.add_argument("kind", choices=["humans", "vehicles"])
    d.set_defaults(func=_default)
    a = p.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    raise SystemExit(main())
