"""Task heads fitted by a linear probe before fine-tuning (finetune/headinit.py): the logistic and ridge fits
against scikit-learn and the closed form, the standardisation folded into the head, grouped alpha choice, and
the temperature scaling of the logistic fits, the probe on a tiny model (heads only change, each head reproduces its
scaled fit, one-class tasks are skipped)."""
from __future__ import annotations

import json
import subprocess
import zlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune.headinit import (LOGISTIC_PENALTIES, RIDGE_ALPHAS, _loss, choose_alpha, choose_penalty, fit_logistic,
                               fit_logit_scale, fit_ridge, init_heads_by_probe, set_linear, standardise)
from finetune.model import MMSenseModel
from finetune.significance import sequence_of
from tests.test_finetune import REPO, _batch, _cfg


def _classes(n: int = 120, k: int = 5, c: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g, dtype=torch.float64)
    y = (x @ torch.randn(k, c, generator=g, dtype=torch.float64) + 0.8 * torch.randn(n, c, generator=g,
                                                                                   dtype=torch.float64)).argmax(1)
    return x, y


def test_multinomial_logistic_matches_sklearn_with_a_penalised_bias():
    from sklearn.linear_model import LogisticRegression
    x, y = _classes()
    w, b = fit_logistic(x, y, 3)
    # scikit-learn penalises no intercept; a column of ones as a feature makes the bias one more weight (C = 1)
    ref = LogisticRegression(C=1.0, fit_intercept=False, tol=1e-10, max_iter=5000).fit(
        torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1).numpy(), y.numpy())
    assert np.allclose(w.numpy(), ref.coef_[:, :-1], atol=2e-4)
    assert np.allclose(b.numpy(), ref.coef_[:, -1], atol=2e-4)


def test_binary_logistic_is_at_the_optimum_of_its_weighted_loss():
    x, y = _classes(c=2)
    w, b = fit_logistic(x, y, 1, pos_weight=3.0)
    w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        (x @ w.T + b)[:, 0], y.double(), pos_weight=torch.tensor(3.0, dtype=x.dtype))
    (loss + 0.5 / len(x) * (w.pow(2).sum() + b.pow(2).sum())).backward()
    assert float(w.grad.abs().max()) < 1e-5 and float(b.grad.abs().max()) < 1e-5
    w0, _ = fit_logistic(x, y, 1, pos_weight=1.0)
    assert not torch.allclose(w0, w.detach(), atol=1e-3)  # the class weight changes the fit


def test_ridge_equals_the_closed_form():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64) + 3.0
    y = x @ torch.randn(6, 2, generator=g, dtype=torch.float64) + torch.randn(50, 2, generator=g, dtype=torch.float64)
    w, b = fit_ridge(x, y, 10.0)
    xc, yc = x - x.mean(0), y - y.mean(0)
    ref = torch.linalg.solve(xc.T @ xc + 10.0 * torch.eye(6, dtype=x.dtype), xc.T @ yc).T
    assert torch.allclose(w, ref, atol=1e-10)
    assert torch.allclose(b, y.mean(0) - ref @ x.mean(0), atol=1e-10)


def test_alpha_is_chosen_on_held_out_sequences():
    """Rows of a sequence share a random offset that nothing in the features predicts: within a sequence
    the features fit it, across sequences only a strong penalty helps. A frame-level split would pick the
    weakest penalty; the grouped one picks a strong one."""
    g = torch.Generator().manual_seed(2)
    seqs, per, k = 12, 10, 20
    groups = torch.arange(seqs).repeat_interleave(per)
    centre = torch.randn(seqs, k, generator=g, dtype=torch.float64)[groups]
    x = centre + 0.05 * torch.randn(seqs * per, k, generator=g, dtype=torch.float64)
    y = torch.randn(seqs, 1, generator=g, dtype=torch.float64)[groups]  # unrelated to the sequence's features
    alphas = (1e-3, 1e-1, 1e1, 1e3, 1e5)
    assert choose_alpha(x, y, groups, alphas) >= 1e3
    assert choose_alpha(x, y, torch.arange(len(x)), alphas) <= 1e-1  # one row per "sequence": leaky frames
    assert choose_alpha(x, y, torch.zeros(len(x), dtype=torch.long), alphas) == alphas[2]  # one sequence


def test_logistic_penalty_is_chosen_on_held_out_sequences():
    """As for the ridge alpha: a class given to each sequence at random, which its features identify only
    within the sequence, is fitted by the weakest penalty when single frames are held out, and only the
    strongest one (the class prior) holds up on unseen sequences. Labels that follow the features
    take a weaker penalty."""
    g = torch.Generator().manual_seed(3)
    seqs, per, k = 15, 8, 30
    groups = torch.arange(seqs).repeat_interleave(per)
    x = (torch.randn(seqs, k, generator=g, dtype=torch.float64)[groups]
         + 0.05 * torch.randn(seqs * per, k, generator=g, dtype=torch.float64))
    y = torch.randint(0, 3, (seqs,), generator=g)[groups]
    assert choose_penalty(x, y, groups, 3)[0] == LOGISTIC_PENALTIES[0]
    assert choose_penalty(x, y, torch.arange(len(x)), 3)[0] < LOGISTIC_PENALTIES[0]
    groups = torch.arange(40).repeat_interleave(per)  # now the features tell the class, also of unseen sequences
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)[groups] + 0.05 * torch.randn(40 * per, 5, generator=g,
                                                                                         dtype=torch.float64)
    lam, scale = choose_penalty(x, x[:, :3].argmax(1), groups, 3)
    assert lam < LOGISTIC_PENALTIES[0] and scale > 0


@pytest.mark.parametrize("pos_weight", [None, 3.0])
def test_logit_scale_minimises_the_loss(pos_weight):
    """Temperature scaling: the factor found by bisection is the grid minimum of the (weighted) loss; logits
    that rank the labels wrongly get 0 (a flat prediction); sharp, right ones reach the upper bound."""
    g = torch.Generator().manual_seed(4)
    c = 5 if pos_weight is None else 1
    z = torch.randn(300, c, generator=g, dtype=torch.float64)
    noisy = z + 1.5 * torch.randn(300, c, generator=g, dtype=torch.float64)
    y = noisy.argmax(1) if pos_weight is None else (noisy[:, 0] > 1.0).long()
    grid = torch.linspace(0, 6, 6001, dtype=torch.float64)
    best = grid[torch.stack([_loss(a * z, y, pos_weight) for a in grid]).argmin()]
    assert 0.05 < float(best) < 5.9 and abs(fit_logit_scale(z, y, pos_weight) - float(best)) < 2e-3
    assert fit_logit_scale(-z, y, pos_weight) == 0.0
    sharp = (torch.nn.functional.one_hot(y, c).double() if pos_weight is None else (2.0 * y - 1.0)[:, None])
    assert fit_logit_scale(sharp, y, pos_weight, most=10.0) == 10.0


def test_penalty_is_chosen_after_calibration():
    """The chosen penalty's held-out logits, times the chosen scale, lose no more than any penalty's scaled
    or unscaled held-out logits (so no more than the best fit as fitted, the choice before; here strictly less),
    nor than the class prior."""
    from finetune.headinit import held_out_logits
    g = torch.Generator().manual_seed(5)
    seqs, per, k, c = 40, 5, 60, 8
    groups = torch.arange(seqs).repeat_interleave(per)
    y = torch.arange(c).repeat(seqs // c)[groups]
    x = (0.3 * torch.randn(c, k, generator=g, dtype=torch.float64)[y]
         + torch.randn(seqs, k, generator=g, dtype=torch.float64)[groups]
         + torch.randn(seqs * per, k, generator=g, dtype=torch.float64))
    lam, scale = choose_penalty(x, y, groups, c)
    held_out = dict(zip(LOGISTIC_PENALTIES, held_out_logits(x, y, groups, c)))  # what the choice compared
    chosen = float(_loss(scale * held_out[lam], y, None))
    assert all(chosen <= float(_loss(a * lg, y, None)) + 1e-9 for lg in held_out.values() for a in (1.0, 0.5, 2.0))
    # here strictly better than the best fit as fitted (the choice before temperature scaling): 1.987 vs 1.999
    assert chosen < min(float(_loss(lg, y, None)) for lg in held_out.values()) - 0.005
    assert chosen < float(torch.log(torch.tensor(float(c))))  # better than the flat guess (balanced classes)


def test_standardisation_is_folded_into_the_head():
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.LayerNorm(8), torch.nn.Linear(8, 3)).double()
    x = torch.randn(40, 8, dtype=torch.float64) * torch.linspace(0.1, 5, 8) + 2.0
    with torch.no_grad():
        z = head[0](x)
    s, mean, std = standardise(z)
    w, b = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    set_linear(head, w, b, mean, std)
    with torch.no_grad():
        assert torch.allclose(head(x), s @ w.T + b, atol=1e-10)


def test_probe_fits_only_the_heads(tiny_backbone, mixed_shards):
    torch.manual_seed(0)
    model = MMSenseModel(_cfg(tiny_backbone).model)
    batches = [_batch(mixed_shards, n=16, offset=16 * i) for i in range(3)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for b in batches:  # the probe rows' blockage labels all of one kind: skipped
        b["blockage"][:] = -1.0
    batches[1]["blockage"][batches[1]["beam_label"] >= 0] = 0.0
    info = init_heads_by_probe(model, batches)
    assert model.training  # the mode it was in
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    heads = {f"heads.{t}.1.{p}" for t in ("beam", "har", "hpe") for p in ("weight", "bias")}
    stats = {k for k in changed if k.startswith("feature_norm.") or k.startswith("hpe_") or k == "blockage_counts"}
    assert changed - stats == heads  # the first batch fixed the statistics, the probe set three heads' Linear
    assert info["head_init/blockage/skipped"] == 1.0 and "head_init/beam/skipped" not in info
    # each fitted head reproduces its logistic regression on the probe rows (evaluation mode)
    model.eval()
    feats = []
    hook = model.heads["har"].register_forward_pre_hook(lambda _m, a: feats.append(a[0].detach().double()))
    with torch.no_grad():
        results = [model(b)[1] for b in batches]  # the first batch too, after it fixed the statistics
    hook.remove()
    assert info["head_init/beam/rows"] == float(sum(int(r["beam"]["rows"].sum()) for r in results))
    outs = [r["har"] for r in results]
    labels = torch.cat([o["label"] for o in outs])
    logits = torch.cat([o["output"] for o in outs]).double()
    norm = model.heads["har"][0]
    with torch.no_grad():
        s, _, _ = standardise(torch.nn.functional.layer_norm(torch.cat(feats), norm.normalized_shape,
                                                             norm.weight.double(), norm.bias.double(), norm.eps))
    w, b = fit_logistic(s, labels.long(), 27, penalty=info["head_init/har/penalty"])
    scale = info["head_init/har/logit_scale"]
    assert 0.0 <= scale <= 100.0 and torch.allclose(logits, scale * (s @ w.T + b), atol=1e-3)
    assert info["head_init/har/penalty"] in LOGISTIC_PENALTIES and info["head_init/hpe/alpha"] in RIDGE_ALPHAS


def test_state_head_fits_the_state_and_the_label_given_each_state():
    """The state blockage head's probe: row a fits frame t's state where recorded, c the labels of the rows
    blocked at t, o those of the clear rows; one class → its smoothed constant; no state → a = 0, c = o."""
    from finetune.headinit import fit_binary, fit_state_head
    g = torch.Generator().manual_seed(0)
    n = 240
    s = torch.randn(n, 4, generator=g, dtype=torch.float64)
    state = (s[:, 0] + 0.5 * torch.randn(n, generator=g, dtype=torch.float64) > 1.0).double()
    onset = (s[:, 1] + 0.5 * torch.randn(n, generator=g, dtype=torch.float64) > 1.5).double()
    y = torch.where(state == 1, (s[:, 2] > -1.0).double(), onset)
    groups = torch.arange(n) // 8
    state[::17] = -1.0  # not recorded
    s_state = s[:, :2] * 3.0  # the state head's own input (frame t's beam embedding in the model)
    parts, info = fit_state_head(s, y, state, groups, s_state)
    for (w, b), x, mask, target in zip(parts, (s_state, s, s), (state >= 0, state == 1, state == 0), (state, y, y)):
        w_ref, b_ref, _ = fit_binary(x[mask], target[mask], groups[mask])
        assert torch.allclose(w, w_ref) and torch.allclose(b, b_ref)
    assert {"state_penalty", "blocked_logit_scale", "clear_penalty"} <= set(info)
    assert parts[0][0].shape == (1, 2) and parts[1][0].shape == (1, 4)
    assert float(parts[0][0][0, 0]) > 0 and float(parts[2][0][0, 1]) > 0 and float(parts[1][0][0, 2]) > 0  # own causes
    w1, b1, info1 = fit_binary(s[:10], torch.ones(10, dtype=torch.float64), groups[:10])
    assert info1 == {"constant": 1.0} and not w1.any() and float(b1) == pytest.approx(np.log(10.5 / 0.5))
    (wa, ba), (wc, bc), (wo, bo) = fit_state_head(s, y, torch.full((n,), -1.0, dtype=torch.float64), groups)[0]
    assert not wa.any() and float(ba) == 0.0 and torch.equal(wc, wo) and torch.equal(bc, bo)


def test_probe_fits_the_state_blockage_head(tiny_backbone, mixed_shards):
    torch.manual_seed(0)
    model = MMSenseModel(_cfg(tiny_backbone).model)
    batches = [_batch(mixed_shards, n=16, offset=16 * i) for i in range(3)]
    for i, b in enumerate(batches):  # blockage rows with both labels and both states
        rows = b["beam_label"] >= 0
        b["blockage"][rows] = (torch.arange(int(rows.sum())) % 3 == i % 3).float()
        b["blocked_now"][rows] = (torch.arange(int(rows.sum())) % 2).float()
        b["present"]["past_beam"][rows] = True
    before = [model.heads["blockage"][1].weight.clone(), model.state_head[1].weight.clone()]
    info = init_heads_by_probe(model, batches)
    assert info["head_init/blockage/rows"] > 0 and "head_init/blockage/skipped" not in info
    assert "head_init/blockage/state_logit_scale" in info and "head_init/blockage/clear_logit_scale" in info
    assert not torch.equal(before[0], model.heads["blockage"][1].weight)
    assert not torch.equal(before[1], model.state_head[1].weight)
    # the state head reproduces the state fit on its inputs (frame t's beam embedding), evaluation mode
    from finetune.headinit import fit_binary, normed
    model.eval()
    got = {"x": [], "a": [], "z": [], "g": []}
    def keep(_m, args, out) -> None:
        got["x"].append(args[0].double())
        got["a"].append(out[:, 0].double())
    hook = model.state_head.register_forward_hook(keep)
    with torch.no_grad():
        for b in batches:
            r = model(b)[1]["blockage"]
            got["z"].append(r["state"].double())
            got["g"].append(torch.tensor([zlib.crc32(sequence_of(k).encode()) for k, kept in
                                          zip(b["key"], r["rows"].tolist()) if kept]))
    hook.remove()
    x, z, g = torch.cat(got["x"]), torch.cat(got["z"]), torch.cat(got["g"])
    s, _, _ = standardise(normed(x, model.state_head[0]))
    w, bias, _ = fit_binary(s, z, g)
    assert torch.allclose(torch.cat(got["a"]), (s @ w.T + bias)[:, 0], atol=1e-3)


def test_probe_reads_a_one_pass_iterator_like_a_list(tiny_backbone, mixed_shards):
    """``probe_heads`` hands the probe a generator over the loader: read once, it fits the heads a list does."""
    batches = [_batch(mixed_shards, n=16, offset=16 * i) for i in range(3)]
    states = []
    for source in (lambda: batches, lambda: (b for b in batches)):
        torch.manual_seed(0)
        model = MMSenseModel(_cfg(tiny_backbone).model)
        info = init_heads_by_probe(model, source())
        states.append((model.state_dict(), info))
    (a, info_a), (b, info_b) = states
    assert info_a == info_b and info_a["head_init/beam/rows"] > 0
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_logs_the_probe_and_resume_does_not_repeat_it(tiny_backbone, mixed_shards, tmp_path):
    out = tmp_path / "ft"
    base = [sys.executable, str(REPO / "finetune/run.py"), "--tasks", "beam", "har", "--preset", "small",
            "--backbone", str(tiny_backbone), "--data", str(mixed_shards / "vehicles"), str(mixed_shards / "humans"),
            "--out", str(out), "--no-progress", "--steps-per-epoch", "3", "--head-init-samples", "24"]
    proc = subprocess.run(base + ["--stop-after-steps", "2"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    probe = [r for r in records if "head_init/beam/rows" in r]
    assert len(probe) == 1 and probe[0]["step"] == 0 and probe[0]["head_init/beam/rows"] > 0
    proc = subprocess.run(base + ["--resume", "latest"], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum("head_init/beam/rows" in r for r in records) == 1  # the resumed heads come from the checkpoint
    proc = subprocess.run(base[:-2] + ["--head-init", "lbfgs", "--out", str(tmp_path / "bad")],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode != 0 and "head_init 'lbfgs'" in proc.stderr


def test_configs_before_the_probe_load_with_random_heads():
    from finetune.config import FinetuneConfig, from_dict
    assert from_dict(FinetuneConfig, {}).head_init == "none"
    assert FinetuneConfig().head_init == "probe"


def test_probe_reads_no_rows_without_batches(tiny_backbone):
    torch.manual_seed(0)
    model = MMSenseModel(_cfg(tiny_backbone).model)
    info = init_heads_by_probe(model, [])
    assert all(info[f"head_init/{t}/skipped"] == 1.0 for t in model.cfg.tasks)


def test_probe_refuses_ranks_without_batches(tiny_backbone, mixed_shards):
    """A rank that read no batch cannot join the first batch's training-mode pass (its sums over ranks):
    every rank learns how many ranks have a batch and refuses together instead of hanging."""
    model = MMSenseModel(_cfg(tiny_backbone).model)
    one_of_two = lambda t: t  # noqa: E731 (this rank's count only: the other rank has no batch)
    with pytest.raises(ValueError, match="1 of 2 ranks read no training batch"):
        init_heads_by_probe(model, [_batch(mixed_shards, n=4)], one_of_two, 2, torch.device("cpu"))
    with pytest.raises(ValueError, match="1 of 2 ranks read no training batch"):
        init_heads_by_probe(model, [], lambda t: t + 1, 2, torch.device("cpu"))


def _probe_worker(rank: int, world: int, port: int, root: str, backbone: str, out: str) -> None:
    """Rank ``rank`` of ``world`` probes its share (rank r: samples r, r + 2, ... of two 16-sample batches; one
    rank: all of them) and rank 0 saves the fitted heads."""
    import os
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    from tests.test_finetune import _slice

    torch.manual_seed(0)
    model = MMSenseModel(_cfg(Path(backbone)).model)
    batches = [_batch(Path(root), n=16, offset=16 * i) for i in range(2)]
    if world == 2:
        batches = [_slice(b, list(range(rank, 16, 2))) for b in batches]

    def total(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        torch.distributed.all_reduce(t)
        return t
    info = init_heads_by_probe(model, batches, total, world, torch.device("cpu"))
    if rank == 0:
        from safetensors.torch import save_file
        fitted = {k: v.contiguous() for k, v in model.state_dict().items()
                  if k.startswith(("heads.", "state_head.", "feature_norm."))}
        save_file(fitted, out)
        Path(out + ".json").write_text(json.dumps(info))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_fit_the_heads_of_one(tiny_backbone, mixed_shards, tmp_path):
    """The probe rows of every rank are gathered and every rank fits the same heads: 2 ranks with half of
    each batch fit what 1 rank fits on the whole batches (up to the order of float sums)."""
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    from pretrain.distributed import free_port
    heads, infos = {}, {}
    for world in (1, 2):
        out = str(tmp_path / f"heads{world}.safetensors")
        mp.start_processes(_probe_worker, args=(world, free_port(), str(mixed_shards), str(tiny_backbone), out),
                           nprocs=world, start_method="spawn", join=True)
        heads[world], infos[world] = load_file(out), json.loads(Path(out + ".json").read_text())
    # the same rows, penalties and alphas; logit scales up to the order of float sums (bisection on a slope)
    assert infos[1] == pytest.approx(infos[2], rel=1e-5)
    assert any(k.startswith("state_head.") for k in heads[1])
    assert infos[1]["head_init/beam/rows"] > 0 and "head_init/har/skipped" not in infos[1]
    for name, w in heads[1].items():
        assert torch.allclose(w.double(), heads[2][name].double(), rtol=1e-3, atol=1e-4), name


def test_without_the_probe_the_pose_statistics_come_from_every_pose_it_would_read(tiny_backbone, mixed_shards):
    """--head-init none: before the first step, the pose mean and spread are those of every training pose
    among the samples the probe would read (here the whole split), not of the first batch's few frames."""
    from types import SimpleNamespace

    from finetune.config import merge
    from finetune.model import pose_parts, pose_spread
    from finetune.train import pose_stats_from_labels
    from shards.stream import iter_samples
    torch.manual_seed(0)
    cfg = merge(_cfg(tiny_backbone, pose_anchor="none"), {"head_init": "none", "head_init_samples": 10_000,
                                                         "batch_size": 4})
    model = MMSenseModel(cfg.model)
    engine = SimpleNamespace(module=model, world_size=1, rank=0, device=torch.device("cpu"), reduce=None)
    info = pose_stats_from_labels(engine, cfg, [mixed_shards / "vehicles", mixed_shards / "humans"])
    poses = [s["meta"]["keypoints"] for s in iter_samples(mixed_shards / "humans" / "train", image_size=32)
             if s["meta"].get("keypoints") is not None]
    parts = pose_parts(torch.tensor(np.asarray(poses), dtype=torch.float64).reshape(len(poses), 51))
    assert info["pose_stats/poses"] == len(poses) > 2 * cfg.batch_size  # more than a batch's poses
    assert bool(model.hpe_stats_ready)
    assert torch.allclose(model.hpe_mean.double(), parts.mean(0), atol=1e-5)
    assert torch.allclose(model.hpe_scale.double(), pose_spread(parts.var(0, unbiased=False)), atol=1e-5)
    assert int(model.blockage_counts.sum()) == 0  # the class counts still come from the training batches
