"""``python -m twin {humans,report,default}``: write digital-twin datasets in the real on-disk formats."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from airbind.paths import configure_tool_caches


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


def _report(a: argparse.Namespace) -> int:
    info_path = a.dir / "twin_info.json"
    kind = json.loads(info_path.read_text())["kind"] if info_path.is_file() else "humans"
    out = a.out or a.dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    if kind == "humans":
        from twin.human_report import figure, learnability
        figure(a.dir, out / "humans.png")
        result = learnability(a.dir)
        text = (f"human twin {a.dir}\nlearnability (logistic regression on per-frame LiDAR/radar/CSI features, "
                f"cross-subject): accuracy {result['accuracy']:.3f} vs chance {result['chance']:.3f} "
                f"({result['train_frames']} train / {result['test_frames']} test frames)\n")
        (out / "humans.json").write_text(json.dumps(result, indent=1))
    else:
        print(f"error: unknown twin kind {kind!r} in {info_path}", file=sys.stderr)
        return 2
    (out / "report.txt").write_text(text)
    print(text + f"figure and numbers in {out}")
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
    r = sub.add_parser("report", help="figure + numbers for a twin folder")
    r.add_argument("dir", type=Path)
    r.add_argument("--out", type=Path, default=None, help="default: DIR/report")
    r.set_defaults(func=_report)
    d = sub.add_parser("default", help="print (building once if needed) the cached default dataset folder")
    d.add_argument("kind", choices=["humans"])
    d.set_defaults(func=lambda a: print(__import__("twin.cache", fromlist=["x"]).default_humans()) or 0)
    a = p.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    raise SystemExit(main())
