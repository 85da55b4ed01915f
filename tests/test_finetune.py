"""Stage two on a tiny random backbone saved locally: shapes and masks, gating with a missing modality,
the uncertainty loss by hand, LoRA leaving base weights unchanged, the label-leak guard, the ablations,
and a checkpoint round trip through finetune/run.py and predict.py."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune.config import PRESETS, FinetuneConfig, merge
from finetune.model import TASKS, MMSenseModel, TaskSpec, check_no_leak
from finetune.modules import ModalityGating, UncertaintyLoss
from shards.stream import collate, iter_samples

REPO = Path(__file__).resolve().parents[1]


def _cfg(backbone: Path, **model) -> FinetuneConfig:
    cfg = merge(FinetuneConfig(), PRESETS["small"])
    return merge(cfg, {"model": {"backbone": {"name": str(backbone), "layers": None}, **model}})


def _batch(root: Path, n: int = 12, modalities=None) -> dict:
    samples = [s for sub in ("vehicles", "humans") for s in iter_samples(root / sub / "train", image_size=32)]
    pick = [samples[i] for i in np.random.default_rng(1).permutation(len(samples))[:n]]
    mods = modalities or ("image", "radar", "lidar", "gps", "past_beam", "beam", "wifi")
    return collate(pick, max_points=64, always=tuple(mods), image_size=32)


def test_forward_shapes_and_label_masks(tiny_backbone, mixed_shards):
    torch.manual_seed(0)
    model = MMSenseModel(_cfg(tiny_backbone).model)
    batch = _batch(mixed_shards)
    loss, res = model(batch)
    assert torch.isfinite(loss)
    assert res["beam"]["output"].shape == (int((batch["beam_label"] >= 0).sum()), 64)
    assert res["har"]["output"].shape[1] == 27 and res["hpe"]["output"].shape[1] == 51
    assert res["blockage"]["output"].shape[1] == 1
    assert torch.equal(res["har"]["rows"], batch["activity"] >= 0)  # only samples labelled for the task
    loss.backward()


def test_gating_gives_missing_modalities_zero_weight():
    gate = ModalityGating(8)
    pooled = torch.randn(2, 3, 8)
    present = torch.tensor([[True, False, True], [True, True, True]])
    w = gate(pooled, present)
    assert w[0, 1] == 0 and torch.allclose(w.sum(1), torch.ones(2))
    full = torch.softmax(gate.score(pooled[0]).squeeze(-1)[[0, 2]], 0)
    assert torch.allclose(w[0, [0, 2]], full)  # the rest renormalise
    eq = ModalityGating(8, enabled=False)(pooled, present)
    assert torch.allclose(eq[0], torch.tensor([0.5, 0.0, 0.5]))


def test_uncertainty_loss_by_hand():
    u = UncertaintyLoss(["beam", "har"])
    with torch.no_grad():
        u.log_vars["beam"].fill_(0.5)
        u.log_vars["har"].fill_(-1.0)
    total = u({"beam": torch.tensor(2.0), "har": torch.tensor(3.0)})
    assert float(total) == pytest.approx(math.exp(-0.5) * 2 + 0.5 + math.exp(1.0) * 3 - 1.0, rel=1e-6)


def test_label_leak_guard():
    check_no_leak(TASKS)
    with pytest.raises(ValueError, match="its own label"):
        check_no_leak({"beam": TaskSpec(("image", "beam"), 64, "ce", "x")})
    assert "beam" not in TASKS["beam"].inputs and "beam" not in TASKS["blockage"].inputs


def test_lora_trains_adapters_and_leaves_base_weights(tiny_backbone, mixed_shards):
    torch.manual_seed(0)
    model = MMSenseModel(_cfg(tiny_backbone).model)
    base = {k: v.clone() for k, v in model.backbone.named_parameters() if "lora_" not in k}
    lora = {k: v.clone() for k, v in model.backbone.named_parameters() if "lora_" in k}
    assert lora and not any(v.requires_grad for k, v in model.backbone.named_parameters() if "lora_" not in k)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss, _ = model(_batch(mixed_shards))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = dict(model.backbone.named_parameters())
    assert all(torch.equal(base[k], after[k]) for k in base)
    assert any(not torch.equal(lora[k], after[k]) for k in lora)


@pytest.mark.parametrize("ablation", [{"gating": False}, {"task_attention": False}, {"use_backbone": False}])
def test_ablations_run(tiny_backbone, mixed_shards, ablation):
    model = MMSenseModel(_cfg(tiny_backbone, **ablation).model)
    loss, res = model(_batch(mixed_shards))
    assert torch.isfinite(loss) and set(res) == set(TASKS)
    if ablation.get("use_backbone") is False:
        assert model.backbone is None


def test_run_checkpoint_round_trip_and_predict(tiny_backbone, mixed_shards, tmp_path):
    out = tmp_path / "ft"
    cmd = [sys.executable, str(REPO / "finetune/run.py"), "--tasks", "all", "--preset", "small", "--backbone",
           str(tiny_backbone), "--data", str(mixed_shards / "vehicles"), str(mixed_shards / "humans"),
           "--out", str(out), "--no-progress", "--steps-per-epoch", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    for key in ("beam/top1", "beam/top3", "beam/power_loss_db", "har/top1", "har/macro_f1", "hpe/mpjpe_mm",
                "hpe/pa_mpjpe_mm", "blockage/accuracy"):
        assert key in result, key
    ckpt = Path(result["checkpoint"])
    from finetune.train import evaluate, load_model
    model, cfg = load_model(ckpt)
    again, _ = evaluate(model, cfg, [mixed_shards / "vehicles/val", mixed_shards / "humans/val"], cfg.val_max_samples)
    for k in ("beam/top1", "har/top1", "hpe/mpjpe_mm"):
        assert again[k] == pytest.approx(result[k], abs=1e-5)  # the reloaded model predicts the same
    pred = tmp_path / "pred.jsonl"
    proc = subprocess.run([sys.executable, str(REPO / "finetune/predict.py"), str(ckpt), "--shards",
                           str(mixed_shards / "vehicles/val"), "--out", str(pred)], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in pred.read_text().splitlines()]
    beam_rows = [r for r in rows if r.get("task") == "beam"]
    assert beam_rows and all(0 <= r["prediction"]["beam"] < 64 for r in beam_rows)


def test_export_matches_eager(tiny_backbone, mixed_shards):
    """finetune/export.py: the torch.export program of the beam path gives the eager model's logits."""
    from finetune.export import BeamPredictor, check, export
    torch.manual_seed(0)
    model = MMSenseModel(_cfg(tiny_backbone).model).eval()
    predictor = BeamPredictor(model, max_points=64)
    batch = _batch(mixed_shards, n=6)
    x = predictor.flatten(batch)
    assert x[0].shape == (6, len(predictor.inputs)) and predictor(*x).shape == (6, 64)
    program = export(predictor, x)
    assert check(predictor, program, [batch], atol=1e-4) < 1e-4
