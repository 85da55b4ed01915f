"""Zero-shot studies: (a) the stage-two model on unseen scenarios / subjects with no fine-tuning on them,
(b) CLIP-style beam prediction from camera, radar or LiDAR alone against codebook prototypes embedded by the
stage-one beam encoder, (c) cross-modal retrieval recall@k between every pair of modalities."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from airbind.fmcw import SPEED_OF_LIGHT
from evaluation.common import EvalConfig, finetune_checkpoint, markdown_table, pretrain_checkpoint, roots_for, write_report
from evaluation.embed import embed_split, load_binding
from pretrain.data import resolve_data, split_dirs
from pretrain.retrieval import ANCHOR_LABELS, label_chance, label_recall_at_k, nearest, recall_at_k


def codebook_prototypes(dynamic_range_db: float, n_beams: int = 64) -> np.ndarray:
    """(n_beams, n_beams) ideal received-power vectors: row b is the response of the whole codebook to a
    line-of-sight path from beam b's steering direction (the twin's 16-element, 3-bit codebook), with the
    peak ``dynamic_range_db`` above a flat noise floor as in measured data."""
    from twin.vehicle_sensors import BeamConfig, beam_power
    cfg = BeamConfig(n_beams=n_beams)
    lam = SPEED_OF_LIGHT / cfg.carrier_hz
    elements = np.stack([np.arange(cfg.n_antennas) * lam / 2, np.zeros(cfg.n_antennas), np.zeros(cfg.n_antennas)], 1)
    w = cfg.codebook(elements, np.eye(3))
    ang = cfg.angles()
    k = 2 * np.pi / lam * np.stack([np.sin(ang), np.cos(ang), np.zeros_like(ang)], 1)
    h = np.exp(1j * (k @ elements.T))[:, :, None]        # (directions, antennas, 1 subcarrier)
    pattern = beam_power(h, w)                            # (directions, beams)
    pattern = pattern / pattern.max(1, keepdims=True)
    return pattern * (10 ** (dynamic_range_db / 10) - 1.0) + 1.0


def dynamic_range_db(beam: np.ndarray) -> float:
    """Median over samples of the best beam's power above the 10th-percentile beam (the floor), in dB."""
    p = np.maximum(beam, 1e-12)
    return float(np.median(10 * np.log10(p.max(1) / np.percentile(p, 10, axis=1))))


def prototype_beam_prediction(model, emb: dict[str, np.ndarray], train_beam: np.ndarray) -> dict[str, Any]:
    """(b): nearest codebook prototype (faiss) of each camera / radar / LiDAR embedding."""
    protos = codebook_prototypes(dynamic_range_db(train_beam))
    with torch.no_grad():
        batch = {"beam": torch.tensor(protos, dtype=torch.float32), "present": {"beam": torch.ones(len(protos), dtype=torch.bool)}}
        z_proto = model.embed(batch, ["beam"])["beam"].numpy()
    labels = emb["beam_label"]
    out: dict[str, Any] = {"dynamic_range_db": dynamic_range_db(train_beam)}
    sources = ["beam"] + [m for m in ("image", "radar", "lidar", "gps") if f"z/{m}" in emb]
    for m in sources:
        rows = emb[f"present/{m}"] & (labels >= 0)
        if rows.sum() < 5:
            continue
        nn = nearest(emb[f"z/{m}"][rows], z_proto, 5)
        lab = labels[rows]
        out[m] = {"top1": float((nn[:, 0] == lab).mean()), "top3": float((nn[:, :3] == lab[:, None]).any(1).mean()),
                  "within_1_beam": float((np.abs(nn[:, 0] - lab) <= 1).mean()), "samples": int(rows.sum()),
                  "chance_top1": 1 / len(z_proto), "chance_top3": 3 / len(z_proto)}
    return out


def pairwise_retrieval(emb: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """(c): recall@1/5 between every pair of modalities present together, and the label recall (the retrieved
    sample has the query's best beam; for human frames its activity) with its chance level."""
    mods = [k.split("/", 1)[1] for k in emb if k.startswith("z/")]
    out = {}
    for a, b in itertools.permutations(mods, 2):
        rows = emb[f"present/{a}"] & emb[f"present/{b}"]
        if rows.sum() < 5:
            continue
        r = recall_at_k(emb[f"z/{a}"][rows], emb[f"z/{b}"][rows], (1, 5))
        rec = {"R@1": r[1], "R@5": r[5], "pairs": int(rows.sum()), "chance_R@1": 1 / rows.sum()}
        for name, key in ANCHOR_LABELS.values():
            labels = emb[key][rows]
            if (labels >= 0).all():
                lr = label_recall_at_k(emb[f"z/{a}"][rows], emb[f"z/{b}"][rows], labels, (1, 5))
                rec.update({f"{name}R@1": lr[1], f"{name}R@5": lr[5], f"chance_{name}R@1": label_chance(labels, 1)})
        out[f"{a}->{b}"] = rec
    return out


def unseen(ev: EvalConfig, roots: list[Path]) -> dict[str, Any]:
    """(a): the stage-two model on the test splits (vehicles: held-out scenario; humans: held-out subjects)."""
    from finetune.predict import evaluate_checkpoint
    ckpt = finetune_checkpoint(ev)
    out = {}
    for kind, tasks in (("vehicles (unseen scenario)", ("beam", "blockage")), ("humans (unseen subjects)", ("har", "hpe"))):
        dirs = split_dirs(roots_for(tasks[0], roots), "test")
        if dirs:
            metrics, _ = evaluate_checkpoint(ckpt, dirs, ev.max_eval_samples)
            out[kind] = {k: v for k, v in metrics.items() if "/gate/" not in k}
    return out


def run_zeroshot(ev: EvalConfig) -> dict[str, Any]:
    ckpt = pretrain_checkpoint(ev)
    model, pcfg = load_binding(ckpt)
    roots = resolve_data(ev.data or pcfg.data)
    vehicle_roots = roots_for("beam", roots)
    data: dict[str, Any] = {"checkpoint": str(ckpt), "unseen": unseen(ev, roots), "prototypes": {}, "retrieval": {}}
    train_dirs = split_dirs(vehicle_roots, "train")
    if train_dirs:
        from evaluation.real import gps_beam
        _, labels, power = gps_beam(train_dirs)
        train_beam = power[labels >= 0]
    for split in ("val", "test"):
        dirs = split_dirs(vehicle_roots, split)
        if not dirs or not train_dirs:
            continue
        emb = embed_split(model, pcfg, dirs, ev.max_eval_samples)
        data["prototypes"][split] = prototype_beam_prediction(model, emb, train_beam)
        data["retrieval"][f"vehicles/{split}"] = pairwise_retrieval(emb)
    human_dirs = split_dirs(roots_for("har", roots), "test")
    if human_dirs:
        data["retrieval"]["humans/test"] = pairwise_retrieval(embed_split(model, pcfg, human_dirs, ev.max_eval_samples))
    write_report(Path(ev.out), "zeroshot", data, render(data))
    return data


def render(data: dict[str, Any]) -> str:
    md = f"## Zero-shot (stage one: `{data['checkpoint']}`)\n\n### (b) beam prediction from one modality vs codebook prototypes\n\n"
    rows = []
    for split, res in data["prototypes"].items():
        for m, r in res.items():
            if isinstance(r, dict):
                rows.append([split, m, r["top1"], r["top3"], r["within_1_beam"], r["chance_top1"], r["samples"]])
    md += markdown_table(["split", "query", "top-1", "top-3", "within ±1 beam", "chance top-1", "samples"], rows)
    md += "\n### (a) stage two on unseen scenarios / subjects (no fine-tuning on them)\n\n"
    rows = [[kind, k, v] for kind, m in data["unseen"].items() for k, v in m.items() if not k.endswith("samples")]
    md += markdown_table(["test set", "metric", "value"], rows)
    md += "\n### (c) cross-modal retrieval\n\n"
    rows = [[split, pair, r["R@1"], r["R@5"], r["chance_R@1"], r.get("beamR@1"), r.get("chance_beamR@1"),
             r.get("activityR@1"), r.get("chance_activityR@1"), r["pairs"]]
            for split, res in data["retrieval"].items() for pair, r in res.items()]
    md += markdown_table(["split", "query->database", "R@1", "R@5", "chance R@1", "same-beam R@1", "chance same-beam R@1",
                          "same-activity R@1", "chance same-activity R@1", "pairs"], rows)
    return md
