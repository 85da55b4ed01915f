"""Evaluation: every metric against hand-computed values, the probes on separable toy features, retrieval
recall with labels, the codebook prototypes, and the whole ``evaluation/run.py`` on tiny data."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluation.plots import confusion
from evaluation.probe import probe_classifier, probe_regressor, subset
from finetune.metrics import macro_f1, mpjpe_mm, pa_mpjpe_mm, power_loss_db, topk_accuracy
from pretrain.retrieval import label_chance, label_recall_at_k, recall_at_k

REPO = Path(__file__).resolve().parents[1]


def test_topk_by_hand():
    scores = np.array([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    labels = np.array([2, 0, 0])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(1 / 3)  # only row 1
    assert topk_accuracy(scores, labels, 2) == pytest.approx(2 / 3)  # row 0's 2nd choice is 2
    assert topk_accuracy(scores, labels, 3) == 1.0


def test_power_loss_by_hand():
    power = np.array([[1.0, 10.0, 5.0], [2.0, 1.0, 4.0]])
    # row 0 picks the best (0 dB), row 1 picks 2 of best 4 (3.0103 dB)
    assert power_loss_db(np.array([1, 0]), power) == pytest.approx((0 + 10 * np.log10(2)) / 2)


def test_macro_f1_by_hand():
    true = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    # class 0: P 1/2 R 1/2 F 1/2; class 1: P 2/3 R 1 F 0.8; class 2: F 0
    assert macro_f1(pred, true) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_mpjpe_by_hand():
    true = np.zeros((1, 17, 3))
    pred = true.copy()
    pred[0, :, 0] = 0.03   # every joint 3 cm off along x
    pred[0, 0] = [0.0, 0.04, 0.03]  # the pelvis 5 cm off
    assert mpjpe_mm(pred, true) == pytest.approx((16 * 30 + 50) / 17)


def test_pa_mpjpe_removes_rotation_scale_translation():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(2, 17, 3))
    a = np.deg2rad(40)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    pred = 1.7 * true @ rot.T + np.array([0.5, -1.0, 2.0])
    assert mpjpe_mm(pred, true) > 500
    assert pa_mpjpe_mm(pred, true) == pytest.approx(0.0, abs=1e-6)
    # a noisy prediction: PA-MPJPE is at most the error of the unaligned one and positive
    noisy = true + rng.normal(scale=0.05, size=true.shape)
    assert 0 < pa_mpjpe_mm(noisy, true) <= mpjpe_mm(noisy, true)


def test_retrieval_recall_and_label_recall_by_hand():
    q = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    db = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    # q0 → db0 (hit), q1 → db2 then db1 (miss at 1, hit at 2), q2 → db1 then db2 (hit at 2)
    r = recall_at_k(q, db, ks=(1, 2))
    assert r[1] == pytest.approx(1 / 3) and r[2] == pytest.approx(1.0)
    labels = np.array([5, 7, 7])  # db1 and db2 share a beam: q1 → db2 has the right beam
    lr = label_recall_at_k(q, db, labels, ks=(1,))
    assert lr[1] == pytest.approx(1.0)  # q2 → db1 has label 7 as well
    assert label_chance(labels, 1) == pytest.approx((1 / 3) * (1 / 3) + (2 / 3) * (2 / 3))


def test_pairwise_retrieval_scores_the_label_each_scene_carries():
    """Zero-shot (c): vehicle pairs are scored by the retrieved sample's best beam, human pairs by its
    activity; a frame that retrieves another frame of its own activity counts there, not as an instance hit."""
    from evaluation.zeroshot import pairwise_retrieval
    db = np.eye(6)
    q = db[[2, 1, 0, 3, 5, 4]] + 0.1  # q_i retrieves db_perm(i): instance hits q1 and q3 only
    present = np.ones(6, dtype=bool)
    humans = {"z/a": q, "z/b": db, "present/a": present, "present/b": present,
              "beam_label": np.full(6, -1), "activity": np.array([3, 1, 3, 2, 7, 7])}
    r = pairwise_retrieval(humans)["a->b"]
    assert r["R@1"] == pytest.approx(2 / 6)
    assert r["activityR@1"] == pytest.approx(1.0) and "beamR@1" not in r  # the swaps stay within an activity
    assert r["chance_activityR@1"] == pytest.approx(label_chance(humans["activity"], 1))
    vehicles = dict(humans, beam_label=np.array([4, 9, 4, 9, 6, 8]), activity=np.full(6, -1))
    r = pairwise_retrieval(vehicles)["a->b"]
    assert r["beamR@1"] == pytest.approx(4 / 6) and "activityR@1" not in r


def test_probes_on_separable_toy_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=5.0, size=(4, 8))
    y = np.repeat(np.arange(4), 30)
    x = centres[y] + rng.normal(scale=0.3, size=(len(y), 8))
    tr = subset(y, fraction=0.5, seed=1)
    te = np.setdiff1d(np.arange(len(y)), tr)
    assert probe_classifier(x[tr], y[tr], x[te], y[te])["top1"] == 1.0
    shots = subset(y, shots=2, seed=0)
    assert len(shots) == 8 and np.all(np.bincount(y[shots]) == 2)
    w = rng.normal(size=(8, 51))
    poses = x @ w * 0.01
    r = probe_regressor(x[tr], poses[tr], x[te], poses[te], alpha=1e-6)
    assert r["mpjpe_mm"] < 1.0 and r["pa_mpjpe_mm"] < 0.1 * r["baseline_pa_mpjpe_mm"]  # articulation from x
    # features that tell where the person stands but not the articulation: MPJPE falls, PA-MPJPE does not
    template = rng.normal(scale=0.3, size=(1, 17, 3))
    moved = template + (x[:, :3] * 0.5)[:, None] + rng.normal(scale=0.05, size=(len(x), 17, 3))
    r = probe_regressor(x[tr], moved[tr].reshape(-1, 51), x[te], moved[te].reshape(-1, 51))
    mean_pose_error = mpjpe_mm(np.broadcast_to(moved[tr].mean(0), moved[te].shape), moved[te])
    assert r["mpjpe_mm"] < 0.1 * mean_pose_error
    assert r["pa_mpjpe_mm"] == pytest.approx(r["baseline_pa_mpjpe_mm"], rel=0.1)


def test_codebook_prototypes_peak_at_their_own_beam():
    pytest.importorskip("faiss")
    from evaluation.zeroshot import codebook_prototypes, dynamic_range_db
    protos = codebook_prototypes(12.0)
    assert protos.shape == (64, 64)
    best = protos.argmax(1)  # 3-bit phases: a neighbouring beam can win by a hair
    assert np.abs(best - np.arange(64)).max() <= 1 and (best == np.arange(64)).mean() > 0.9
    assert 10 * np.log10(protos.max() / protos.min()) == pytest.approx(12.0, abs=0.01)
    assert dynamic_range_db(protos) == pytest.approx(12.0, abs=1.0)


def test_confusion_matrix_counts():
    m = confusion(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3)
    assert m.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]


@pytest.mark.slow
def test_evaluation_run_end_to_end(tiny_backbone, mixed_shards, tmp_path):
    """Stage one and two on tiny data, then every part of evaluation/run.py; the reports must exist and hold
    finite figures, and a second call reuses the trained rows."""
    data = [str(mixed_shards / "vehicles"), str(mixed_shards / "humans")]
    run = lambda *a: subprocess.run([sys.executable, *a], capture_output=True, text=True, timeout=900, cwd=REPO)  # noqa: E731
    p = run("pretrain/run.py", "--preset", "small", "--data", *data, "--out", str(tmp_path / "pt"), "--no-progress",
            "--epochs", "1", "--steps-per-epoch", "2")
    assert p.returncode == 0, p.stderr[-3000:]
    p = run("finetune/run.py", "--tasks", "all", "--preset", "small", "--backbone", str(tiny_backbone), "--data", *data,
            "--encoders", str(tmp_path / "pt"), "--out", str(tmp_path / "ft"), "--no-progress", "--steps-per-epoch", "2")
    assert p.returncode == 0, p.stderr[-3000:]
    common = ["--pretrain", str(tmp_path / "pt"), "--finetune", str(tmp_path / "ft"), "--data", *data,
              "--out", str(tmp_path / "reports"), "--work", str(tmp_path / "work"), "--epochs", "1",
              "--steps-per-epoch", "2", "--batch-size", "8", "--backbone-layers", "2", "--max-eval-samples", "64",
              "--real-steps", "2", "--no-progress"]
    p = run("evaluation/run.py", "all", *common)
    assert p.returncode == 0, p.stderr[-4000:]
    reports = tmp_path / "reports"
    tables = json.loads((reports / "tables.json").read_text())
    assert set(tables["table1"]) >= {"MLP (single-task)", "CNN (single-task)", "Transformer (single-task)",
                                     "MMSense (full)", "LLM baseline (LLM4WM-style: no gating, no task attention)"}
    assert set(tables["table2"]) == {"MMSense (full)", "w/o gating", "w/o task attention", "w/o head skip",
                                     "w/o blockage state"}
    for row in tables["table1"].values():
        assert 0.0 <= row["beam/top1"] <= 1.0 and row["hpe/mpjpe_mm"] > 0
    zs = json.loads((reports / "zeroshot.json").read_text())
    assert "image" in zs["prototypes"]["val"] and zs["retrieval"]
    few = json.loads((reports / "fewshot.json").read_text())
    assert {"stage_one", "random_init", "stage_two", "finetune"} <= set(few)
    assert (reports / "figures" / "confusion_beam.png").is_file()
    assert (reports / "figures" / "fewshot_curves.png").is_file()
    if (REPO.parent / "shared" / "data" / "deepsense" / "scenario5").is_dir():
        real = json.loads((reports / "real_scenario5.json").read_text())
        assert real["samples"]["test"] > 0 and any(k.startswith("kNN") for k in real["test"])
    before = {p: p.stat().st_mtime for p in (tmp_path / "work").rglob("model.safetensors")}
    assert before and not list((tmp_path / "work").rglob("optimizer-rank*"))  # rows are never resumed
    p = run("evaluation/run.py", "table", *common)
    assert p.returncode == 0, p.stderr[-3000:]
    after = {p: p.stat().st_mtime for p in (tmp_path / "work").rglob("model.safetensors")}
    assert before == after  # identical recipes are reused, not retrained
