"""Stage-one embeddings of a split: the trained binding model (or a randomly initialised one, the few-shot
reference) applied to every sample of some shard folders."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from airbind.checkpoint import load_model_weights
from finetune.config import from_dict
from pretrain.config import PretrainConfig
from pretrain.model import BindingModel
from pretrain.train import stream_config
from shards.stream import capped_batches


def load_binding(ckpt: Path, random_init: bool = False, seed: int = 0) -> tuple[BindingModel, PretrainConfig]:
    """The stage-one model of a checkpoint (its weights, or with ``random_init`` a fresh one of the same shape)."""
    raw = json.loads((Path(ckpt) / "config.json").read_text())["config"]
    cfg = from_dict(PretrainConfig, raw)
    torch.manual_seed(seed)
    model = BindingModel(cfg.binding)
    if not random_init:
        load_model_weights(model, ckpt)
    return model.eval(), cfg


@torch.no_grad()
def embed_split(model: BindingModel, cfg: PretrainConfig, dirs: list[Path], max_samples: int | None = None,
                tokens: bool = False) -> dict[str, np.ndarray]:
    """Per sample: ``z/<m>`` shared-space embeddings, ``present/<m>``, ``pooled/<m>`` encoder features
    (before the projection), the labels (beam, activity, blockage, keypoints), GPS and the key."""
    out: dict[str, list] = {}
    mods = cfg.binding.modalities
    for batch in capped_batches(dirs, stream_config(cfg, 64, 0, False, mods), max_samples):
        for m in mods:
            if m not in batch:
                continue
            enc = model.encoders[m](batch)
            z = torch.nn.functional.normalize(model.proj[m](enc.pooled), dim=-1)
            out.setdefault(f"z/{m}", []).append(z.numpy())
            out.setdefault(f"pooled/{m}", []).append(enc.pooled.numpy())
            out.setdefault(f"present/{m}", []).append(batch["present"][m].numpy())
        out.setdefault("beam_label", []).append(batch["beam_label"].numpy())
        out.setdefault("activity", []).append(batch["activity"].numpy())
        out.setdefault("blockage", []).append(batch["blockage"].numpy())
        out.setdefault("keypoints", []).append(batch["keypoints"].reshape(len(batch["key"]), -1).numpy())
        out.setdefault("has_keypoints", []).append(batch["has_keypoints"].numpy())
        out.setdefault("gps", []).append(batch["gps"].numpy())
        out.setdefault("beam", []).append(batch["beam"].numpy())
        out.setdefault("key", []).append(np.array(batch["key"]))
    return {k: np.concatenate(v) for k, v in out.items()}
