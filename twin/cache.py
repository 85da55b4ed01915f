"""The built-in default datasets: generated once into the project's cache folder and reused."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from airbind.paths import build_once, cache_dir


# Bump when the simulation changes in a way the configuration does not show, so caches are rebuilt.
# 2: LoS blockage requires the Fresnel core to be obstructed; 3: vehicle colours fixed;
# vehicles 4: ray-traced beam powers bit-reproducible (single-threaded Dr.Jit solver); humans 4: each action's
# own standing spot (twin.humans.ACTION_SPOT_M)
TWIN_VERSION = {"humans": 4, "vehicles": 4}


def cached(kind: str, cfg: Any, build: Callable[[Path, Any], Any]) -> Path:
    """``cache/twin/<kind>-<hash of cfg and TWIN_VERSION>``: built by ``build(tmp, cfg)`` once, atomically."""
    key = json.dumps({"version": TWIN_VERSION[kind], "cfg": asdict(cfg)}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return build_once(cache_dir() / "twin" / f"{kind}-{digest}", "twin_info.json", lambda tmp: build(tmp, cfg))


def default_humans() -> Path:
    """The default human-scene dataset of the pipeline (4 rooms, 16 subjects, 27 activities, 20 frames = 8,640
    frames): four subjects per room, so the subject split (``pretrain.data.TWIN_SPLITS``) holds out two
    subjects for validation and two for test and still trains on at least two per room."""
    from twin.humans import HumanTwinConfig, generate
    return cached("humans", HumanTwinConfig(envs=4, subjects=16, frames=20), lambda p, c: generate(p, c))


def default_vehicles() -> Path:
    """The default vehicle-scene dataset of the pipeline (6 scenarios x 256 ray-traced samples, about 50
    passes: enough that the validation split holds a dozen of them; two scenarios ray-traced at a time)."""
    from twin.vehicles import VehicleTwinConfig, generate
    cfg = VehicleTwinConfig(scenarios=6, samples_per_scenario=256, workers=2)
    return cached("vehicles", cfg, lambda p, c: generate(p, c))
