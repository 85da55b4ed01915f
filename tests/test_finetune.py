"""Stage two on a tiny random backbone saved locally: shapes and masks, gating with a missing modality,
the uncertainty loss by hand, LoRA leaving base weights unchanged, the label-leak guard, the ablations,
and a checkpoint round trip through finetune/run.py and predict.py."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune.config import PRESETS, FinetuneConfig, from_dict, merge
from finetune.model import TASKS, MMSenseModel, ModelConfig, TaskSpec, check_no_leak, task_specs
from finetune.modules import FeatureStandardizer, ModalityGating, UncertaintyLoss
from shards.stream import collate, iter_samples

REPO = Path(__file__).resolve().parents[1]


def _cfg(backbone: Path, **model) -> FinetuneConfig:
    cfg = merge(FinetuneConfig(), PRESETS["small"])
    return merge(cfg, {"model": {"backbone": {"name": str(backbone), "layers": None}, **model}})


def _batch(root: Path, n: int = 12, modalities=None, offset: int = 0) -> dict:
    samples = [s for sub in ("vehicles", "humans") for s in iter_samples(root / sub / "train", image_size=32)]
    pick = [samples[i] for i in np.random.default_rng(1).permutation(len(samples))[offset:offset + n]]
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


@pytest.mark.parametrize("anchor", ["points", "none"])
def test_pose_scale_and_blockage_weight_come_from_training_labels(tiny_backbone, mixed_shards, anchor):
    """With the anchor, the pelvis x, y is learnt relative to the median of the sample's LiDAR points (radar
    where LiDAR has none): its mean and spread are those of the pelvis minus that centre."""
    torch.manual_seed(0)  # the one-logit blockage head, whose loss weights the positives
    model = MMSenseModel(_cfg(tiny_backbone, pose_anchor=anchor, blockage_state=False).model)
    batch = _batch(mixed_shards, n=24)
    batch["blockage"][:6] = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])  # 2 positives, 4 negatives
    batch["blockage"][6:] = -1.0
    batch["present"]["past_beam"][:6] = True
    _, res = model(batch)
    kp = res["hpe"]["label"].reshape(-1, 17, 3)
    root, rel = kp[:, 0], kp[:, 1:] - kp[:, :1]  # pelvis, and the other joints relative to it
    centre = torch.zeros(len(kp), 2)
    if anchor == "points":  # by hand: the median of each pose sample's valid LiDAR points
        rows = res["hpe"]["rows"]
        for i, (pts, mask) in enumerate(zip(batch["lidar"][rows], batch["lidar_mask"][rows])):
            assert bool(mask.any())  # every twin frame has LiDAR points
            centre[i] = pts[mask][:, :2].median(0).values
        assert torch.allclose(model.hpe_root_xy, root[:, :2].mean(0), atol=1e-6)
    local = torch.cat([root[:, :2] - centre, root[:, 2:]], 1)
    spread = torch.cat([(local - local.mean(0)).pow(2).mean(0).sqrt(), (rel - rel.mean(0)).pow(2).mean((0, 1)).sqrt()])
    assert torch.allclose(model.hpe_scale, spread.clamp(min=0.02), rtol=1e-4)
    assert torch.allclose(model.hpe_mean[:3], local.mean(0), atol=1e-6)
    assert torch.allclose(model.hpe_mean[3:], rel.mean(0).reshape(-1), atol=1e-6)
    assert float(model.pos_weight()) == pytest.approx(2.0)
    r = res["hpe"]  # the pose loss: half pelvis, half root-relative MSE, each in units of its spread
    out = r["output"].reshape(-1, 17, 3)  # returned in metres
    err_root = ((out[:, 0] - root) / model.hpe_scale[:3]).pow(2).mean()
    err_rel = ((out[:, 1:] - out[:, :1] - rel) / model.hpe_scale[3:]).pow(2).mean()
    assert float(r["loss"].detach()) == pytest.approx(float((0.5 * (err_root + err_rel)).detach()), rel=1e-4)
    from finetune.model import pose_from_parts, pose_parts
    assert torch.allclose(pose_from_parts(pose_parts(r["label"])), r["label"], atol=1e-6)
    # the output is the log-odds under the training prior: the weighted loss sees it plus log w (w = 2)
    logit, y = res["blockage"]["output"].squeeze(-1) + math.log(2.0), res["blockage"]["label"]
    by_hand = -(2.0 * y * torch.log(torch.sigmoid(logit)) + (1 - y) * torch.log(1 - torch.sigmoid(logit))).mean()
    assert float(res["blockage"]["loss"].detach()) == pytest.approx(float(by_hand), rel=1e-5)
    model.eval()
    model(batch)  # evaluation leaves the statistics alone
    assert float(model.pos_weight()) == pytest.approx(2.0)


def test_encoder_outputs_standardised_with_first_batch_statistics(tiny_backbone, mixed_shards):
    """FeatureStandardizer: per-channel mean 0 / spread 1 over the present rows of the first training batch,
    absent rows stay zero, later batches and evaluation leave the statistics alone."""
    torch.manual_seed(0)
    model = MMSenseModel(_cfg(tiny_backbone).model)
    batch = _batch(mixed_shards, n=24)
    batch["present"]["image"][:5] = False  # some rows without a camera frame
    with torch.no_grad():
        raw = {m: model.encoders[m](batch) for m in model.modalities if m in batch}
    assert not bool(model.feature_norm["image"].ready)
    model(batch)
    for m, out in raw.items():
        fn = model.feature_norm[m]
        assert bool(fn.ready), m
        keep = batch["present"][m]
        std = fn(out, batch["present"][m])
        tok, pool = std.tokens[keep].flatten(0, 1), std.pooled[keep]
        assert torch.allclose(tok.mean(0), torch.zeros(fn.d), atol=1e-3), m
        assert torch.allclose(pool.mean(0), torch.zeros(fn.d), atol=1e-3), m
        var = out.pooled[keep].var(0, unbiased=False)
        busy = var.sqrt() > 0.11 * var.mean().sqrt()  # above the floor (a tenth of the typical spread): unit spread
        assert busy.sum() > 0 and torch.allclose(pool[:, busy].pow(2).mean(0), torch.ones(int(busy.sum())), rtol=1e-2), m
        assert bool((pool[:, ~busy].pow(2).mean(0) <= 1.01).all()), m  # the rest: never blown up past it
        assert not bool(std.tokens[~keep].any()) and not bool(std.pooled[~keep].any()), m
    before = model.feature_norm["image"].mean.clone()
    model(_batch(mixed_shards, n=12, offset=24))
    model.eval()
    model(batch)
    assert torch.equal(model.feature_norm["image"].mean, before)
    # the moments are sums, so a second rank's share adds up (what MMSenseModel.forward's reduce relies on)
    out, present = raw["gps"], batch["present"]["gps"]
    fn = FeatureStandardizer(out.pooled.shape[1])
    half = torch.zeros_like(present)
    half[: len(present) // 2] = True
    both = fn.moments(out, present & half) + fn.moments(out, present & ~half)
    assert torch.allclose(both, fn.moments(out, present), rtol=1e-5, atol=1e-4)


def test_gating_gives_missing_modalities_zero_weight():
    gate = ModalityGating(8)
    pooled = torch.randn(2, 3, 8)
    present = torch.tensor([[True, False, True], [True, True, True]])
    w = gate(pooled, present)
    assert w[0, 1] == 0 and torch.allclose(w.sum(1), torch.ones(2))
    full = torch.softmax(gate.score(gate.norm(pooled[0])).squeeze(-1)[[0, 2]], 0)
    assert torch.allclose(w[0, [0, 2]], full)  # the rest renormalise
    eq = ModalityGating(8, enabled=False)(pooled, present)
    assert torch.allclose(eq[0], torch.tensor([0.5, 0.0, 0.5]))


def test_gating_is_learned_by_the_gate_alone():
    """The gate's logits send no gradient into the pooled features (the shared encoders cannot push a
    task's gate onto one modality) and do not change when the features grow in scale; the gate's own
    weights still get gradients."""
    torch.manual_seed(0)
    gate = ModalityGating(8)
    pooled = torch.randn(4, 3, 8, requires_grad=True)
    present = torch.ones(4, 3, dtype=torch.bool)
    w = gate(pooled, present)
    (w * torch.randn_like(w)).sum().backward()
    assert pooled.grad is None or torch.count_nonzero(pooled.grad) == 0
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in gate.score.parameters())
    assert torch.allclose(gate(3.0 * pooled + 0.5, present), w, atol=1e-5)


def test_modality_dropout_hides_present_inputs_only_in_training(tiny_backbone, mixed_shards):
    """ModDrop never reveals an absent modality, never leaves a row without inputs, hides about p of the
    present ones, is a gate weight of 0 where it hides, and changes nothing in evaluation."""
    from finetune.model import drop_modalities
    torch.manual_seed(0)
    present = torch.rand(4000, 4) < 0.7
    present[:10] = False
    present[10:20] = torch.tensor([False, True, False, False])
    kept = drop_modalities(present, 0.4)
    assert not (kept & ~present).any()
    assert (kept.any(1) == present.any(1)).all()
    assert kept[10:20].equal(present[10:20])  # a single input is never hidden
    many = present.sum(1) >= 2
    hidden = (present & ~kept)[many].sum() / present[many].sum()
    assert 0.3 < float(hidden) < 0.42  # 0.4, less the rows that would have lost every input
    model = MMSenseModel(_cfg(tiny_backbone, modality_dropout=0.5).model)
    batch = _batch(mixed_shards)
    model.train()
    _, res = model(batch)
    hidden_present = 0
    for t, r in res.items():
        inputs = [m for m in model.specs[t].inputs if m in model.modalities]
        shown = torch.stack([batch["present"][m][r["rows"]] for m in inputs], 1)
        hidden_present += int(((model.last_gates[t] == 0) & shown).sum())
    assert hidden_present > 0  # without dropout every present input has a positive softmax weight
    model.eval()
    with torch.no_grad():
        _, res = model(batch)
        model.cfg.modality_dropout = 0.0
        _, ref = model(batch)
    for t in res:
        assert torch.equal(res[t]["output"], ref[t]["output"])


def test_task_attention_ablation_reads_the_last_real_token():
    """--no-task-attention: the task feature is the final hidden state of the last real token, also when
    masked tokens of absent modalities lie before it (not the token at the count of real ones)."""
    from finetune.modules import TaskLayerAttention
    hidden = tuple(torch.randn(3, 7, 4) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1, 0]], dtype=torch.bool)
    out = TaskLayerAttention(4, [1, 2], enabled=False)(hidden, mask)
    assert torch.equal(out, torch.stack([hidden[-1][0, 6], hidden[-1][1, 6], hidden[-1][2, 5]]))


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
    assert "beam" not in TASKS["beam"].inputs


def test_blockage_reads_frame_t_beam_powers_unless_past():
    """Blockage predicts frames t+1..t+Δ: frame t's beam powers are an observation before them (default), and
    ``blockage_beams="past"`` (the legacy of configs without the field) drops them again."""
    assert "beam" in task_specs(["blockage"])["blockage"].inputs
    past = task_specs(["beam", "blockage"], "past")
    assert past["blockage"].inputs == ("past_beam", "image", "radar", "lidar") and past["beam"] == TASKS["beam"]
    with pytest.raises(ValueError, match="blockage_beams"):
        task_specs(["blockage"], "future")
    assert from_dict(ModelConfig, {"tasks": ["blockage"]}).blockage_beams == "past"
    assert ModelConfig().blockage_beams == "current"


@pytest.mark.parametrize("blockage_beams", ["current", "past"])
def test_frame_t_beam_powers_reach_blockage_only(tiny_backbone, mixed_shards, blockage_beams):
    """Changing frame t's power vectors changes the blockage output when the task reads them, never the beam
    task's (its label) nor, with "past", the blockage task's."""
    torch.manual_seed(0)
    model = MMSenseModel(_cfg(tiny_backbone, blockage_beams=blockage_beams).model).eval()
    batch = _batch(mixed_shards, n=24)
    batch["blockage"] = torch.where(batch["beam_label"] >= 0, 0.0, -1.0)
    assert bool((batch["blockage"] >= 0).any()) and bool(batch["present"]["beam"].any())
    with torch.no_grad():
        _, res = model(batch)
        moved = dict(batch, beam=batch["beam"].roll(7, dims=-1) * 10.0)
        _, res2 = model(moved)
    assert torch.equal(res["beam"]["output"], res2["beam"]["output"])
    changed = not torch.allclose(res["blockage"]["output"], res2["blockage"]["output"])
    assert changed == (blockage_beams == "current")


def test_head_skip_feeds_the_gated_pooled_embedding_to_the_heads(tiny_backbone, mixed_shards):
    """With ``head_skip`` each head reads [task attention readout, sum_m w_m p_m]: the last d columns of its
    input are the gate's weights (Eq. 8) on the standardised pooled outputs of the task's modalities."""
    torch.manual_seed(0)
    model = MMSenseModel(_cfg(tiny_backbone).model).eval()  # the default
    d = model.cfg.binding.d
    assert model.heads["beam"][1].in_features == model.hidden + d
    seen: dict[str, torch.Tensor] = {}
    for t in model.cfg.tasks:
        model.heads[t].register_forward_pre_hook(lambda _m, args, t=t: seen.__setitem__(t, args[0]))
    batch = _batch(mixed_shards, n=24)
    with torch.no_grad():
        _, res = model(batch)
        enc = model.normalise({m: model.encoders[m](batch) for m in model.modalities if m in batch}, batch)
    for t in ("beam", "har"):
        rows = res[t]["rows"]
        mods = [m for m in model.specs[t].inputs if m in enc]
        pooled = torch.stack([enc[m].pooled[rows] for m in mods], 1)
        want = (model.last_gates[t][..., None] * pooled).sum(1)
        assert torch.allclose(seen[t][:, -d:], want, atol=1e-5), t
    assert from_dict(ModelConfig, {"tasks": ["beam"]}).head_skip is False  # configs written before the option
    assert MMSenseModel(_cfg(tiny_backbone, head_skip=False).model).heads["beam"][1].in_features == model.hidden
    from finetune.run import parse_config
    assert parse_config([]).model.head_skip and not parse_config(["--no-head-skip"]).model.head_skip


def test_state_blockage_head_mixture_and_loss_by_hand(tiny_backbone, mixed_shards):
    """The default blockage head outputs (a, c, o): the label's probability is σ(a)σ(c) + σ(-a)σ(o). Where
    frame t's state z is recorded the loss is the joint likelihood -log σ(±a) - log p(y | z) with p(y | z) from
    c (blocked) or o (clear), elsewhere -log p(y); ``blockage_joint`` off (runs before it): the label under the
    mixture plus the state under σ(a)."""
    from finetune.model import blockage_mixture, blockage_state_loss
    torch.manual_seed(0)
    model = MMSenseModel(_cfg(tiny_backbone).model)
    # a from frame t's beam embedding (state_head), c and o from the head
    assert model.heads["blockage"][1].out_features == 2 and model.state_head is not None
    batch = _batch(mixed_shards, n=24)
    batch["blockage"][:6] = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    batch["blockage"][6:] = -1.0
    batch["blocked_now"][:6] = torch.tensor([1.0, 0.0, 1.0, -1.0, 0.0, 0.0])  # one row without the state
    batch["present"]["past_beam"][:6] = True
    seen = {}
    model.heads["blockage"].register_forward_hook(lambda _m, _a, out: seen.__setitem__("co", out))
    model.state_head.register_forward_hook(lambda _m, args, out: seen.update(a=out, a_in=args[0]))
    _, res = model(batch)
    enc = model.normalise({m: model.encoders[m](batch) for m in model.modalities if m in batch}, batch)
    assert torch.allclose(seen["a_in"], enc["beam"].pooled[res["blockage"]["rows"]], atol=1e-6)
    a = seen["a"][:, 0].double()
    c, o = seen["co"].double().unbind(-1)
    sig = torch.sigmoid
    p = sig(a) * sig(c) + sig(-a) * sig(o)
    r = res["blockage"]
    assert r["output"].shape == (6, 1)
    assert torch.allclose(r["output"][:, 0].double(), torch.log(p / (1 - p)), atol=1e-5)
    y, z = r["label"].double(), batch["blocked_now"][:6].double()
    label_loss = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
    known = z >= 0
    state_nll = -(z * torch.log(sig(a)) + (1 - z) * torch.log(sig(-a)))
    q = torch.where(z == 1, sig(c), sig(o))  # p(y = 1 | frame t's state)
    given_nll = -(y * torch.log(q) + (1 - y) * torch.log(1 - q))
    marginal_nll = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    joint = torch.where(known, state_nll + given_nll, marginal_nll).mean()
    assert float(r["loss"].detach()) == pytest.approx(float(joint), rel=1e-5)
    raw = torch.cat([seen["a"], seen["co"]], -1).detach()
    loss_old, out_old = blockage_state_loss(raw, r["label"], batch["blocked_now"][:6], joint=False)
    assert float(loss_old) == pytest.approx(float(label_loss + state_nll[known].sum() / 6), rel=1e-5)
    assert torch.allclose(out_old, r["output"].detach(), atol=1e-6)  # the output does not depend on the loss
    # no state recorded: both losses are the label under the mixture
    for j in (True, False):
        none_known = blockage_state_loss(raw, r["label"], torch.full((6,), -1.0), joint=j)[0]
        assert float(none_known) == pytest.approx(float(label_loss), rel=1e-5)
    assert torch.equal(r["state"], batch["blocked_now"][:6])
    # finite and exact far from zero: a certain state makes the label that state's own probability
    big = torch.tensor([[40.0, 3.0, -5.0], [-40.0, 3.0, -5.0], [0.0, -60.0, 60.0]])
    out = blockage_mixture(big)[:, 0]
    assert torch.isfinite(out).all() and torch.allclose(out[:2], torch.tensor([3.0, -5.0]), atol=1e-4)
    assert float(out[2]) == pytest.approx(0.0, abs=1e-6)
    assert from_dict(ModelConfig, {"tasks": ["blockage"]}).blockage_state is False  # configs written before it
    assert MMSenseModel(_cfg(tiny_backbone, blockage_state=False).model).heads["blockage"][1].out_features == 1
    past = MMSenseModel(_cfg(tiny_backbone, blockage_beams="past").model)  # no frame t powers: a from the head
    assert past.state_head is None and past.heads["blockage"][1].out_features == 3
    _, res = past(batch)
    assert res["blockage"]["output"].shape == (6, 1)
    from finetune.run import parse_config
    assert parse_config([]).model.blockage_state and not parse_config(["--no-blockage-state"]).model.blockage_state
    assert parse_config([]).model.blockage_joint and not parse_config(["--no-blockage-joint"]).model.blockage_joint
    assert from_dict(ModelConfig, {"tasks": ["blockage"], "blockage_state": True}).blockage_joint is False


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
                "hpe/pa_mpjpe_mm", "blockage/accuracy", "beam/top1_minus_baseline", "beam/sequences",
                "hpe/pa_mpjpe_mm_minus_baseline_ci_low"):
        assert key in result, key
    ckpt = Path(result["checkpoint"])
    from finetune.train import evaluate, load_model
    model, cfg = load_model(ckpt)
    again, _ = evaluate(model, cfg, [mixed_shards / "vehicles/val", mixed_shards / "humans/val"], cfg.val_max_samples)
    for k in ("beam/top1", "har/top1", "hpe/mpjpe_mm"):
        assert again[k] == pytest.approx(result[k], abs=1e-5)  # the reloaded model predicts the same
    assert model.feature_norm is not None and all(bool(fn.ready) for fn in model.feature_norm.values())
    # a checkpoint of the code before FeatureStandardizer (no such key, no such buffers) still loads, without it
    import shutil

    from safetensors.torch import load_file, save_file
    old = tmp_path / "old_ckpt"
    shutil.copytree(ckpt, old)
    meta = json.loads((old / "config.json").read_text())
    del meta["config"]["model"]["feature_norm"]
    (old / "config.json").write_text(json.dumps(meta))
    weights = load_file(old / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("feature_norm.")}, old / "model.safetensors")
    assert load_model(old)[0].feature_norm is None
    from finetune.train import check_resumable
    check_resumable(ckpt, cfg)  # same options: resumable
    with pytest.raises(ValueError, match="feature_norm: saved False, now True"):
        check_resumable(old, cfg)  # today's default would set the statistics mid-run
    with pytest.raises(ValueError, match="encoder_lr_scale: saved 0.3, now 1.0"):
        check_resumable(ckpt, merge(cfg, {"encoder_lr_scale": 1.0}))  # the optimizer groups' rates would stay
    del meta["config"]["encoder_lr_scale"]  # a run from before the option trained its encoders at the full rate
    (old / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="encoder_lr_scale: saved 1.0, now 0.3"):
        check_resumable(old, merge(cfg, {"model": {"feature_norm": False}}))
    pred = tmp_path / "pred.jsonl"
    proc = subprocess.run([sys.executable, str(REPO / "finetune/predict.py"), str(ckpt), "--shards",
                           str(mixed_shards / "vehicles/val"), "--out", str(pred)], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in pred.read_text().splitlines()]
    assert "beam/top1_minus_baseline_ci_high" in rows[-1]["metrics"]
    beam_rows = [r for r in rows if r.get("task") == "beam"]
    assert beam_rows and all(0 <= r["prediction"]["beam"] < 64 for r in beam_rows)


def test_resume_continues_and_refuses_other_model_options(tiny_backbone, mixed_shards, tmp_path):
    out = tmp_path / "ft"
    base = [sys.executable, str(REPO / "finetune/run.py"), "--tasks", "all", "--preset", "small", "--backbone",
            str(tiny_backbone), "--data", str(mixed_shards / "vehicles"), str(mixed_shards / "humans"),
            "--out", str(out), "--no-progress", "--steps-per-epoch", "3"]
    proc = subprocess.run(base + ["--stop-after-steps", "2"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run(base + ["--resume", "latest", "--no-feature-norm"], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode != 0 and "feature_norm: saved True, now False" in proc.stderr, proc.stderr[-2000:]
    assert (out / "checkpoints" / "step-000002").is_dir()  # the refused resume lost nothing
    proc = subprocess.run(base + ["--resume", "latest"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "result.json").read_text())["step"] == 3
    assert (out / "checkpoints" / "step-000003" / "optimizer-rank0.safetensors").is_file()


def test_checkpoints_without_optimizer_state_are_not_resumed(tiny_backbone, mixed_shards, tmp_path):
    out = tmp_path / "ft"
    base = [sys.executable, str(REPO / "finetune/run.py"), "--tasks", "beam", "--preset", "small", "--backbone",
            str(tiny_backbone), "--data", str(mixed_shards / "vehicles"), "--out", str(out), "--no-progress",
            "--steps-per-epoch", "2"]
    proc = subprocess.run(base + ["--no-optimizer-state", "--stop-after-steps", "1"], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = out / "checkpoints" / "step-000001"
    assert (ckpt / "model.safetensors").is_file() and not list(ckpt.glob("optimizer-rank*"))
    proc = subprocess.run(base + ["--resume", "latest"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode != 0 and "written without optimizer state" in proc.stderr, proc.stderr[-2000:]
    assert str(ckpt) in proc.stderr and (ckpt / "model.safetensors").is_file()  # names it, keeps it
    from finetune.run import parse_config
    assert parse_config([]).save_optimizer and not parse_config(["--no-optimizer-state"]).save_optimizer


def _export_case(tiny_backbone, mixed_shards):
    from finetune.export import BeamPredictor, export
    torch.manual_seed(0)
    model = MMSenseModel(_cfg(tiny_backbone).model)
    with torch.no_grad():
        model(_batch(mixed_shards, n=12, offset=12))  # one training-mode pass fixes the feature statistics
    predictor = BeamPredictor(model.eval(), max_points=64)
    batch = _batch(mixed_shards, n=6)
    x = predictor.flatten(batch)
    assert x[0].shape == (6, len(predictor.inputs)) and predictor(*x).shape == (6, 64)
    return predictor, export(predictor, x), [batch, _batch(mixed_shards, n=6, offset=6)]


def test_export_matches_eager(tiny_backbone, mixed_shards):
    """finetune/export.py: the torch.export program of the beam path gives the eager model's logits, also on a
    batch it was not traced with."""
    from finetune.export import check
    predictor, program, batches = _export_case(tiny_backbone, mixed_shards)
    assert check(predictor, program, batches, atol=1e-4) < 1e-4


def test_export_cli_refuses_inconsistent_options(tmp_path, capsys):
    """finetune/export.py names the option that does not fit before it loads anything."""
    from finetune.export import main
    for argv, msg in (([str(tmp_path), "--out", "b.pt2", "--int8"], "--int8 needs an .onnx"),
                      ([str(tmp_path), "--out", "b.onnx", "--int8-reduce-range"], "goes with --int8"),
                      ([str(tmp_path), "--out", "b.bin"], "must end in .pt2 or .onnx")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_task_sequence_equals_the_full_masked_layout(tiny_backbone, mixed_shards):
    """Each task's backbone sequence holds only its own modalities' tokens, at their positions of the full
    layout [every modality's tokens; instruction]: its outputs equal those of that layout with the other
    modalities' tokens masked out (rebuilt here from the model's parts), for every task, with a modality
    missing from some rows and one missing from the whole batch."""
    from finetune.model import causal_padding_bias
    torch.manual_seed(0)
    model = MMSenseModel(_cfg(tiny_backbone).model).eval()
    batch = _batch(mixed_shards, n=12)
    batch["present"]["radar"][::3] = False
    batch.pop("lidar"), batch.pop("lidar_mask")
    n_mod, n_f = len(model.modalities), model.cfg.binding.n_tokens
    with torch.no_grad():
        enc = model.normalise({m: model.encoders[m](batch) for m in model.modalities if m in batch}, batch)
        for task in model.cfg.tasks:
            mods = [m for m in model.specs[task].inputs if m in enc]
            weights = model.gating[task](torch.stack([enc[m].pooled for m in mods], 1),
                                         torch.stack([batch["present"][m] for m in mods], 1))
            tokens, present = torch.zeros(12, n_mod, n_f, model.cfg.binding.d), torch.zeros(12, n_mod, dtype=torch.bool)
            w = torch.zeros(12, n_mod)
            for i, m in enumerate(mods):
                j = model.modalities.index(m)
                tokens[:, j], present[:, j], w[:, j] = enc[m].tokens, batch["present"][m], weights[:, i]
            fused = model.fusion(tokens, w, present)
            ids = getattr(model, f"instr_{task}")
            x = torch.cat([fused, model.backbone.get_input_embeddings()(ids)[None].expand(12, -1, -1)], 1)
            attn = torch.cat([present[:, :, None].expand(-1, -1, n_f).reshape(12, -1), torch.ones(12, len(ids), dtype=torch.bool)], 1)
            hidden = model.backbone(inputs_embeds=x, attention_mask=causal_padding_bias(attn, x.dtype),
                                    output_hidden_states=True, use_cache=False).hidden_states
            feat = model.task_attn[task](hidden, attn)
            if model.skip:  # the head skip (default): the gated pooled embedding beside the readout
                feat = torch.cat([feat, (weights[..., None] * torch.stack([enc[m].pooled for m in mods], 1)).sum(1)], -1)
            ref = model.heads[task](feat)
            if task == "blockage":  # the state logit from frame t's beam embedding before the head's c and o
                ref = torch.cat([model.state_head(enc["beam"].pooled), ref], -1)
            out = model.task_forward(task, batch, enc, slice(None))
            assert len(model.task_slots(task)) < n_mod  # the sequence is shorter than the full layout
            assert torch.allclose(out, ref, atol=1e-5), (task, (out - ref).abs().max())


def test_attention_bias_gives_the_librarys_masked_attention(tiny_backbone):
    """finetune.model.causal_padding_bias handed to the backbone as a 4D mask gives the hidden states of the
    library's own causal + padding mask at every real token (padding between and before the real tokens)."""
    from transformers import AutoModelForCausalLM
    from finetune.model import causal_padding_bias
    base = AutoModelForCausalLM.from_pretrained(tiny_backbone).base_model.eval()
    torch.manual_seed(0)
    x = torch.randn(3, 10, base.config.hidden_size)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[0, 3:6], mask[1, :2], mask[2, 7] = False, False, False
    with torch.no_grad():
        ref = base(inputs_embeds=x, attention_mask=mask.long(), output_hidden_states=True, use_cache=False)
        out = base(inputs_embeds=x, attention_mask=causal_padding_bias(mask, x.dtype), output_hidden_states=True,
                   use_cache=False)
    for a, b in zip(ref.hidden_states[1:], out.hidden_states[1:]):
        assert torch.allclose(a[mask], b[mask], atol=1e-5)
    assert torch.isfinite(out.hidden_states[-1]).all()  # also where a query has no real token to read
    bias = causal_padding_bias(mask, torch.bfloat16)
    assert bias.shape == (3, 1, 10, 10) and torch.isfinite(bias).all() and bias[0, 0, 9, 4] < -1e30


def test_beam_path_reads_nothing_on_the_host(tiny_backbone, mixed_shards):
    """The beam predictor neither reads tensor values on the host (a device sync per call) nor builds
    tensors from Python values inside its forward (a host-to-device copy per call): both would break the CUDA
    graph capture of finetune.export.CudaGraphPredictor, and only a GPU would show it."""
    from torch.utils._python_dispatch import TorchDispatchMode
    predictor, program, batches = _export_case(tiny_backbone, mixed_shards)
    host_reads = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.split(".")[0] in ("_local_scalar_dense", "nonzero", "masked_select", "item"):
                host_reads.append(func.__name__)
            return func(*args, **(kwargs or {}))
    with torch.no_grad(), Watch():
        predictor(*predictor.flatten(batches[0]))
    assert host_reads == []
    assert [k for k in program.constants if not k.startswith("model.")] == []  # no lifted Python constants


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_replay_equals_eager(tiny_backbone, mixed_shards):
    from finetune.export import CudaGraphPredictor
    predictor, _, batches = _export_case(tiny_backbone, mixed_shards)
    predictor = predictor.cuda()
    x = predictor.flatten(batches[0])
    graphed = CudaGraphPredictor(predictor, x)
    graphed16 = CudaGraphPredictor(predictor, x, dtype=torch.bfloat16)
    with torch.no_grad():
        for b in batches:
            xb = predictor.flatten(b)
            eager = predictor(*xb)
            assert torch.allclose(graphed(*xb), eager, atol=1e-5)
            low = graphed16(*xb)  # bf16 compute: float32 logits, near eager (0.08 measured)
            assert low.dtype == torch.float32 and not torch.equal(low, eager)
            assert float((low - eager).norm() / eager.norm()) < 0.25


@pytest.mark.slow
def test_onnx_export_matches_eager(tiny_backbone, mixed_shards, tmp_path):
    """The ONNX Runtime model of the beam path gives the eager model's logits; a broken file is named."""
    from finetune.export import OnnxBeamPredictor, check, to_onnx
    predictor, program, batches = _export_case(tiny_backbone, mixed_shards)
    runner = OnnxBeamPredictor(to_onnx(program, tmp_path / "beam.onnx", optimize=False))
    assert check(predictor, runner, batches, atol=1e-4) < 1e-4
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="broken.onnx"):
        OnnxBeamPredictor(tmp_path / "broken.onnx")
    # int8: the backbone's weight matrices become integer matmuls, and the logits stay close to eager's
    import onnx
    from finetune.export import agreement, quantize_int8
    labelled = sum(int((b["beam_label"] >= 0).sum()) for b in batches)  # agreement counts the beam task's rows
    with torch.no_grad():
        spread = float(torch.cat([predictor(*predictor.flatten(b)) for b in batches]).std())
    # largest logit difference / spread, measured on six random backbones of an AVX2-only CPU: 8-bit weights
    # 0.14-0.27 (ONNX Runtime's u8 x s8 products saturate there), 7-bit weights 0.04-0.05
    for reduce_range, bound in ((False, 0.35), (True, 0.1)):
        q = quantize_int8(tmp_path / "beam.onnx", tmp_path / f"int8.{reduce_range}.onnx", reduce_range=reduce_range)
        ops = {n.op_type for n in onnx.load(str(q)).graph.node}
        assert ops & {"MatMulInteger", "DynamicQuantizeMatMul"}, ops
        r = agreement(predictor, OnnxBeamPredictor(q), batches)
        assert 0 < labelled < 12 and r["samples"] == labelled, r
        assert 0 < r["max_abs_diff"] < bound * spread and r["top1_agreement"] >= 0.75, (reduce_range, r, spread)
    with pytest.raises(ValueError, match="beam.onnx"):
        quantize_int8(tmp_path / "beam.onnx", tmp_path / "none.onnx", scope="model.no_such_module")


def _slice(batch: dict, keep) -> dict:
    def take(v):
        if isinstance(v, torch.Tensor):
            return v[keep]
        return [v[i] for i in keep] if isinstance(keep, list) else v[keep]
    return {k: take(v) if not isinstance(v, dict) else {m: take(t) for m, t in v.items()} for k, v in batch.items()}


def _deepspeed_worker(rank: int, world: int, port: int, root: str, backbone: str, out: str) -> None:
    import os
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    from finetune.engine import DeepSpeedEngine
    torch.manual_seed(0)
    # ZeRO stage 0: after backward every rank holds the full rank-averaged gradient, comparable to one rank's
    cfg = merge(_cfg(Path(backbone)), {"batch_size": 12, "lr": 1e-3, "warmup_steps": 0, "engine": "deepspeed",
                                       "zero_stage": 0})
    engine = DeepSpeedEngine(MMSenseModel(cfg.model), cfg)
    picks = [s for sub in ("vehicles", "humans") for s in list(iter_samples(Path(root) / sub / "train", image_size=32))[:6]]
    full = collate(picks, max_points=64, always=("image", "radar", "lidar", "gps", "past_beam", "beam", "wifi"),
                   image_size=32)  # 6 vehicle scenes, then 6 human frames
    per = 12 // world
    local = _slice(full, slice(rank * per, (rank + 1) * per))
    if world == 2:  # rank 0 has no pose label, rank 1 none of the vehicle tasks
        assert not bool(local["has_keypoints"].any()) if rank == 0 else not bool((local["beam_label"] >= 0).any())
    m = engine.module
    loss, _ = m(local, reduce=engine._sum)
    loss = loss + 0.0 * sum(p.sum() for p in engine.params)
    engine.engine.backward(loss)
    grads = {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.requires_grad and p.grad is not None}
    total = float(engine._sum(loss.detach())) / world  # every rank takes part in the sum
    if rank == 0:
        from safetensors.torch import save_file
        save_file(grads, out + ".grads.safetensors")
        Path(out).write_text(json.dumps({
            "loss": total, "hpe_scale": m.hpe_scale.tolist(), "blockage_counts": m.blockage_counts.tolist(),
            "hpe_mean": m.hpe_mean.tolist()}))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_deepspeed_ranks_train_like_one(tiny_backbone, mixed_shards, tmp_path):
    """Stage two under DeepSpeed: 2 ranks with half the batch each give the loss and the (rank-averaged)
    gradient of 1 rank with the whole batch, although each rank lacks some tasks (per-task losses normalised
    over the global batch, label statistics summed over ranks)."""
    import torch.multiprocessing as mp

    from pretrain.distributed import free_port
    from safetensors.torch import load_file
    got, grads = {}, {}
    for world in (1, 2):
        out = tmp_path / f"{world}.json"
        mp.start_processes(_deepspeed_worker, args=(world, free_port(), str(mixed_shards), str(tiny_backbone), str(out)),
                           nprocs=world, start_method="spawn", join=True)
        got[world] = json.loads(out.read_text())
        grads[world] = load_file(f"{out}.grads.safetensors")
    one, two = got[1], got[2]
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-5)
    for key in ("hpe_scale", "blockage_counts", "hpe_mean"):
        assert np.allclose(one[key], two[key], rtol=1e-5, atol=1e-7), key
    assert grads[1].keys() == grads[2].keys()
    norm = {n: float(g.double().norm()) for n, g in grads[1].items()}
    scale = max(norm.values())
    for name, g in grads[1].items():  # the whole tensor: a sum of entries that nearly cancel is ill-conditioned
        gap = float((g.double() - grads[2][name].double()).norm())
        assert gap <= 1e-4 * norm[name] + 1e-7 * scale, (name, gap, norm[name])
    assert norm["loss.log_vars.hpe"] > 0 and norm["heads.beam.1.weight"] > 0


def test_engine_choice(monkeypatch):
    from finetune.engine import wants_deepspeed
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("AIRBIND_SELF_GROUP", raising=False)
    assert not wants_deepspeed("auto") and wants_deepspeed("deepspeed")
    monkeypatch.setenv("WORLD_SIZE", "2")  # started by the DeepSpeed launcher
    assert wants_deepspeed("auto") and not wants_deepspeed("plain")
    monkeypatch.setenv("AIRBIND_SELF_GROUP", "1")  # the group stage one sets up by itself in this process
    assert not wants_deepspeed("auto")
    with pytest.raises(ValueError, match="engine"):
        wants_deepspeed("ddp")


def test_task_modules_get_their_own_learning_rate(tiny_backbone):
    from finetune.engine import PlainEngine
    cfg = merge(_cfg(tiny_backbone), {"lr": 1e-3, "head_lr_scale": 10.0})
    torch.manual_seed(0)
    model = MMSenseModel(cfg.model)
    model.encoders.requires_grad_(False)  # --freeze-encoders: frozen weights are in no group
    groups = PlainEngine(model, cfg).optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    by_lr = {g["lr"]: {names[id(p)] for p in g["params"]} for g in groups}
    assert sorted(by_lr) == [1e-3, pytest.approx(1e-2)]
    fast, base = by_lr[max(by_lr)], by_lr[1e-3]
    assert fast and all(n.split(".")[0] in ("gating", "task_attn", "heads", "state_head") for n in fast)
    assert any(n.startswith("fusion.") for n in base) and any("lora_" in n for n in base)
    assert any(n.startswith("loss.log_vars") for n in base)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert fast | base == trainable and not fast & base and not any(n.startswith("encoders.") for n in trainable)


def test_encoders_get_their_own_learning_rate(tiny_backbone):
    """--encoder-lr-scale: the stage-one encoders in their own group, the task modules and the rest unchanged."""
    from finetune.engine import param_groups
    cfg = merge(_cfg(tiny_backbone), {"lr": 1e-3, "head_lr_scale": 10.0, "encoder_lr_scale": 0.1})
    torch.manual_seed(0)
    model = MMSenseModel(cfg.model)
    names = {id(p): n for n, p in model.named_parameters()}
    by_lr = {g["lr"]: {names[id(p)] for p in g["params"]} for g in param_groups(model, cfg)}
    assert sorted(by_lr) == [pytest.approx(1e-4), 1e-3, pytest.approx(1e-2)]
    slow, base = by_lr[min(by_lr)], by_lr[1e-3]
    assert slow == {n for n in names.values() if n.startswith("encoders.")}
    assert any(n.startswith("fusion.") for n in base) and not any(n.startswith("encoders.") for n in base)
    assert set().union(*by_lr.values()) == {n for n, p in model.named_parameters() if p.requires_grad}
    with pytest.raises(ValueError, match="encoder_lr_scale.*0.0"):
        param_groups(model, merge(cfg, {"encoder_lr_scale": 0.0}))


def test_configs_before_the_encoder_learning_rate_keep_the_full_one():
    """A run written before --encoder-lr-scale trained its encoders at the full learning rate; its config
    (evaluation/training.py rebuilds recipes from it) must say so, while new runs get the default."""
    from finetune.config import from_dict
    assert from_dict(FinetuneConfig, {"lr": 5e-4}).encoder_lr_scale == 1.0
    assert FinetuneConfig().encoder_lr_scale < 1.0
    assert from_dict(FinetuneConfig, asdict(FinetuneConfig())).encoder_lr_scale == FinetuneConfig().encoder_lr_scale


def test_scene_shift_moves_points_and_pose_together_and_nothing_else():
    """Each human sample's valid radar / LiDAR points and keypoints move by one x, y offset within the bound;
    heights, extra point channels, padding, images and vehicle samples stay as they were; the draw repeats for
    the same seed; configs from before the option had no shift."""
    from finetune.augment import shift_human_scenes
    from finetune.config import from_dict
    rng = np.random.default_rng(0)
    b = 3
    batch = {"radar": torch.tensor(rng.normal(size=(b, 6, 5)), dtype=torch.float32),
             "radar_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3], dtype=torch.bool),
             "lidar": torch.tensor(rng.normal(size=(b, 5, 4)), dtype=torch.float32),
             "lidar_mask": torch.ones(b, 5, dtype=torch.bool),
             "keypoints": torch.tensor(rng.normal(size=(b, 17, 3)), dtype=torch.float32),
             "has_keypoints": torch.tensor([True, True, False]),
             "image": torch.zeros(b, 3, 8, 8)}
    batch["radar"][~batch["radar_mask"]] = 0.0
    out = shift_human_scenes(batch, 0.3, torch.Generator().manual_seed(4))
    again = shift_human_scenes(batch, 0.3, torch.Generator().manual_seed(4))
    assert torch.equal(out["keypoints"], again["keypoints"])
    off = (out["keypoints"] - batch["keypoints"])[:, 0, :2]
    assert torch.allclose(out["keypoints"] - batch["keypoints"],
                          torch.cat([off, torch.zeros(b, 1)], 1)[:, None, :].expand(b, 17, 3), atol=1e-6)
    assert bool((off[:2].abs() <= 0.3).all()) and bool((off[:2].abs() > 0).all()) and torch.equal(off[2], torch.zeros(2))
    for m in ("radar", "lidar"):
        moved = out[m] - batch[m]
        valid = batch[m + "_mask"]
        assert torch.allclose(moved[..., :2][valid], off[:, None, :].expand(b, moved.shape[1], 2)[valid], atol=1e-6)
        assert torch.equal(moved[..., :2][~valid], torch.zeros_like(moved[..., :2][~valid]))
        assert torch.equal(moved[..., 2:], torch.zeros_like(moved[..., 2:]))
    assert out["image"] is batch["image"] and shift_human_scenes(batch, 0.0, torch.Generator()) is batch
    assert from_dict(FinetuneConfig, {"lr": 5e-4}).scene_shift == 0.0 and FinetuneConfig().scene_shift > 0


def test_cloud_centre_prefers_lidar_then_radar_and_older_configs_have_no_anchor():
    """The centre is the median x, y of the valid LiDAR points (padding ignored), of the radar points where a
    sample has no LiDAR point, and flagged missing where neither has one; the model then anchors such a row at
    the mean training pelvis. A config saved before the option existed builds the model without the anchor."""
    from finetune.config import from_dict
    from finetune.model import ModelConfig, cloud_centre_xy
    lidar = torch.tensor([[[1.0, 2.0, 0.5, 0], [3.0, 4.0, 0.5, 0], [2.0, 9.0, 0.5, 0], [99.0, 99.0, 0, 0]],
                          [[0.0, 0.0, 0.0, 0]] * 4, [[0.0, 0.0, 0.0, 0]] * 4])
    lidar_mask = torch.tensor([[True, True, True, False], [False] * 4, [False] * 4])
    radar = torch.tensor([[[50.0, 50.0, 0, 0, 0]] * 2, [[-1.0, 5.0, 0, 0, 0], [-3.0, 7.0, 0, 0, 0]],
                          [[0.0, 0.0, 0, 0, 0]] * 2])
    radar_mask = torch.tensor([[True, True], [True, True], [False, False]])
    batch = {"lidar": lidar, "lidar_mask": lidar_mask, "radar": radar, "radar_mask": radar_mask,
             "has_keypoints": torch.ones(3, dtype=torch.bool)}
    centre, found = cloud_centre_xy(batch)
    assert torch.equal(found, torch.tensor([True, True, False]))
    assert torch.equal(centre[0], torch.tensor([2.0, 4.0]))  # per axis, the padded (99, 99) left out
    assert torch.equal(centre[1], torch.tensor([-3.0, 5.0]))  # radar; even count: the lower middle value
    assert torch.equal(centre[2], torch.zeros(2))
    assert from_dict(ModelConfig, {"gating": True}).pose_anchor == "none" and ModelConfig().pose_anchor == "points"
    with pytest.raises(ValueError, match="pose_anchor"):
        MMSenseModel(ModelConfig(pose_anchor="centroid", use_backbone=False))

def test_pose_baselines_from_training_labels():
    """MPJPE of the mean training pose, and its PA-MPJPE (aligned to each true pose): a pose that is the mean
    pose moved, turned and scaled has a PA baseline of 0 but a large MPJPE baseline."""
    from finetune.train import baselines
    rng = np.random.default_rng(0)
    train = [rng.normal(size=51) for _ in range(5)]  # one flattened 17 x 3 pose per training sample
    mean = np.mean(train, axis=0).reshape(17, 3)
    c, s = np.cos(0.7), np.sin(0.7)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    moved = 1.3 * mean @ rot.T + np.array([2.0, 0.5, 0.0])
    other = rng.normal(size=(17, 3))
    out = baselines({"hpe": train}, {"hpe": {"label": np.stack([moved, other]).reshape(2, 51)}})
    expect = (np.linalg.norm(moved - mean, axis=1).mean() + np.linalg.norm(other - mean, axis=1).mean()) / 2
    assert out["hpe/baseline_mpjpe_mm"] == pytest.approx(1000 * expect)
    from finetune.metrics import pa_mpjpe_mm
    assert pa_mpjpe_mm(mean[None], moved[None]) < 1e-6
    assert out["hpe/baseline_pa_mpjpe_mm"] == pytest.approx(pa_mpjpe_mm(mean[None], other[None]) / 2)


def test_probe_refits_pose_statistics_to_all_its_poses(tiny_backbone):
    """refit_pose_stats: targets under one small batch's statistics become targets under the statistics of all
    rows (mean 0, per-axis spread of the pelvis), and the poses they stand for do not change."""
    from finetune.model import pose_parts, pose_spread
    torch.manual_seed(0)
    model = MMSenseModel(_cfg(tiny_backbone).model)
    kp, anchor = torch.randn(40, 51) * 0.3 + 1.0, torch.randn(40, 2) * 0.1
    parts = pose_parts(kp)
    parts[:, :2] -= anchor
    first = parts[:3]  # what a first batch of three frames would fix
    var = first.var(0, unbiased=False)
    model.hpe_mean.copy_(first.mean(0))
    model.hpe_scale.copy_(pose_spread(var))
    goal = model.pose_goal(kp, anchor)
    new = model.refit_pose_stats(goal)
    assert torch.allclose(model.pose_output(new, anchor), kp, atol=1e-4)
    assert torch.allclose(model.hpe_mean, parts.mean(0), atol=1e-5)
    assert torch.allclose(model.hpe_scale[:3], parts[:, :3].std(0, unbiased=False), atol=1e-5)
    assert torch.allclose(new.mean(0), torch.zeros(51), atol=1e-5)
    assert float(new[:, :3].std(0, unbiased=False).max()) == pytest.approx(1.0, abs=1e-4)


def test_persistence_reference_of_blockage():
    """Frame t's own state as the answer, where every blockage sample records it; absent otherwise."""
    from finetune.train import baselines
    lab = np.array([1, 1, 0, 0, 1, 0])
    now = np.array([1, 0, 0, 1, 1, 0])
    out = baselines({"blockage": [0, 0, 1]}, {"blockage": {"label": lab, "blocked_now": now}})
    assert out["blockage/persistence_accuracy"] == pytest.approx(4 / 6)
    assert out["blockage/baseline_accuracy"] == pytest.approx(3 / 6)
    unknown = baselines({"blockage": [0]}, {"blockage": {"label": lab, "blocked_now": np.r_[now[:5], -1]}})
    assert "blockage/persistence_accuracy" not in unknown
    assert "blockage/persistence_accuracy" not in baselines({"blockage": [0]}, {"blockage": {"label": lab}})


def test_evaluate_carries_frame_t_state_of_blockage_samples(tiny_backbone, mixed_shards):
    """The persistence reference reads each blockage sample's own ``blocked`` (shards' meta), row for row."""
    from finetune.train import baselines, capped_batches, evaluate, stream_config
    torch.manual_seed(0)
    cfg = _cfg(tiny_backbone)
    model = MMSenseModel(cfg.model)
    dirs = [mixed_shards / "vehicles/train"]
    _, arrays = evaluate(model, cfg, dirs)
    a = arrays["blockage"]
    meta = {s["__key__"]: s["meta"] for s in iter_samples(dirs[0], image_size=32)}
    assert len(a["key"]) and [meta[k]["blocked"] for k in a["key"]] == a["blocked_now"].tolist()
    assert [meta[k]["blockage_future"] for k in a["key"]] == a["label"].tolist()
    metrics, _ = evaluate(model, cfg, dirs)
    with torch.no_grad():  # the state head's own reading of frame t's state, by hand
        model.eval()
        logit = torch.cat([model(b)[1]["blockage"]["state_logit"] for b in capped_batches(
            dirs, stream_config(cfg, 32, 0, False, cfg.model.binding.modalities), None)])
    assert metrics["blockage/state_accuracy"] == pytest.approx(float(((logit >= 0).numpy() == (a["blocked_now"] == 1)).mean()))
    out = baselines({"blockage": [0, 0, 1]}, arrays)
    assert out["blockage/persistence_accuracy"] == pytest.approx(float((a["blocked_now"] == a["label"]).mean()))
