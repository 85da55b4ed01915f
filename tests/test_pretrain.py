"""Stage one: InfoNCE against a hand computation, temperature clamp, missing modalities, 2 DeepSpeed ranks
vs 1, and resume reproducing an uninterrupted run."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from pretrain.distributed import free_port
from pretrain.loss import MaskedClipLoss
from pretrain.model import BindingConfig, BindingModel, anchor_pairs
from shards.stream import collate, iter_samples

REPO = Path(__file__).resolve().parents[1]
TINY = BindingConfig(d=32, embed_dim=16, n_tokens=4)


def _reference_infonce(a: np.ndarray, b: np.ndarray, scale: float) -> float:
    logits = scale * a @ b.T
    def ce(lg):
        lg = lg - lg.max(1, keepdims=True)
        return float(np.mean(-np.diag(lg) + np.log(np.exp(lg).sum(1))))
    return 0.5 * (ce(logits) + ce(logits.T))


def test_infonce_matches_a_hand_computation():
    a = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    b = np.array([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
    # by hand for scale 2: logits rows [1.6, 0, 2], [1.92, 1.6, 1.2], [1.2, 2, 0]; labels on the diagonal
    e = np.exp
    rows = [-1.6 + np.log(e(1.6) + 1 + e(2)), -1.6 + np.log(e(1.92) + e(1.6) + e(1.2)), np.log(e(1.2) + e(2) + 1)]
    cols = [-1.6 + np.log(e(1.6) + e(1.92) + e(1.2)), -1.6 + np.log(1 + e(1.6) + e(2)), np.log(e(2) + e(1.2) + 1)]
    manual = 0.5 * (np.mean(rows) + np.mean(cols))
    assert _reference_infonce(a, b, 2.0) == pytest.approx(manual)
    loss, n = MaskedClipLoss()(torch.tensor(a), torch.tensor(b), torch.ones(3, dtype=torch.bool), torch.tensor(2.0))
    assert n == 3 and float(loss) == pytest.approx(manual, rel=1e-6)


def test_missing_rows_do_not_bias_the_loss():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    b = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    valid = torch.tensor([True, False, True, True, False, True])
    loss, n = MaskedClipLoss()(a, b, valid, torch.tensor(10.0))
    ref = _reference_infonce(a[valid].numpy(), b[valid].numpy(), 10.0)
    assert n == 4 and float(loss) == pytest.approx(ref, rel=1e-5)
    loss1, n1 = MaskedClipLoss()(a, b, torch.tensor([True] + [False] * 5), torch.tensor(10.0))
    assert n1 == 1 and float(loss1) == 0.0  # a single pair has no negatives


def test_temperature_is_clamped_at_100():
    model = BindingModel(BindingConfig(modalities=["gps", "beam"], d=16, embed_dim=8, n_tokens=2))
    assert float(model.logit_scale.exp()) == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    model.clamp_temperature()
    assert float(model.logit_scale.exp()) == pytest.approx(100.0, rel=1e-5)


def test_knn_picks_the_nearest_valid_points():
    """The Point Transformer's neighbour search equals a brute-force search and never picks padding."""
    from encoders.points import knn
    rng = np.random.default_rng(0)
    query, ref = rng.normal(size=(2, 6, 3)) * 5, rng.normal(size=(2, 10, 3)) * 5
    mask = np.ones((2, 10), bool)
    mask[0, 7:] = False          # a padded cloud
    mask[1, 3:] = False          # fewer valid points than k
    idx, valid = knn(torch.tensor(query, dtype=torch.float32), torch.tensor(ref, dtype=torch.float32),
                     torch.tensor(mask), k=4)
    for b in range(2):
        for i in range(6):
            d = np.linalg.norm(ref[b] - query[b, i], axis=1)
            d[~mask[b]] = np.inf
            n_valid = min(4, int(mask[b].sum()))
            assert list(idx[b, i, :n_valid]) == list(np.argsort(d)[:n_valid])
            assert valid[b, i].tolist() == [True] * n_valid + [False] * (4 - n_valid)


def test_knn_ranks_close_neighbours_exactly_far_from_the_origin():
    """Neighbours millimetres apart, 100 m from the origin, ranked as float64 ranks them: the search does not
    lose them to cancellation (as |q|^2 + |r|^2 - 2 q.r does), so an exported model picks the same ones."""
    from encoders.points import knn
    rng = np.random.default_rng(2)
    ref = np.array([100.0, -80.0, 10.0]) + rng.normal(size=(1, 40, 3)) * 0.01
    ref32 = ref.astype(np.float32)
    idx, _ = knn(torch.tensor(ref32[:, :5]), torch.tensor(ref32), torch.ones(1, 40, dtype=torch.bool), k=8)
    ref64 = ref32.astype(np.float64)  # the same float32 points, distances in float64
    for i in range(5):
        d = ((ref64[0] - ref64[0, i]) ** 2).sum(1)
        assert sorted(idx[0, i].tolist()) == sorted(np.argsort(d, kind="stable")[:8].tolist())


def test_farthest_point_sampling_matches_its_definition():
    """Each pick is the valid point farthest from all earlier picks; padding is never picked for real."""
    from encoders.points import farthest_point_sampling
    rng = np.random.default_rng(1)
    p = rng.normal(size=(3, 20, 3)).astype(np.float32)
    mask = np.ones((3, 20), bool)
    mask[1, 12:] = False       # padded cloud
    mask[2, 4:] = False        # fewer valid points than picks
    idx, picked = farthest_point_sampling(torch.tensor(p), torch.tensor(mask), 6)
    for b in range(3):
        valid = np.flatnonzero(mask[b])
        ref = [int(valid[0])]
        while len(ref) < min(6, len(valid)):
            d = np.min([((p[b, valid] - p[b, j]) ** 2).sum(-1) for j in ref], axis=0)
            ref.append(int(valid[np.argmax(d)]))
        n = len(ref)
        assert idx[b, :n].tolist() == ref and picked[b].tolist() == [True] * n + [False] * (6 - n)


def _fps_cases(seed: int = 0):
    """Clouds on a 0.25 grid (many equal distances, so the tie rule matters): padded, empty, and with fewer
    valid points than picks (the extra picks must not land on the padding ahead of them)."""
    g = torch.Generator().manual_seed(seed)
    for b, n, m in [(3, 20, 6), (4, 130, 64), (2, 64, 8), (2, 5, 8)]:
        p = torch.round(torch.randn(b, n, 3, generator=g) * 4) / 4
        mask = torch.rand(b, n, generator=g) < 0.8
        mask[0] = False
        mask[-1] = torch.arange(n) >= n - 3  # padding first, then 3 valid points
        yield p, mask, m


_FPS_IN_INTERPRETER = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from encoders.fps import fps_reference, fps_triton
from tests.test_pretrain import _fps_cases
for p, mask, m in _fps_cases():
    ref, tri = fps_reference(p, mask, m), fps_triton(p, mask, m)
    assert torch.equal(ref, tri), (p.shape, m, ref, tri)
print("same picks")
"""


def test_triton_fps_kernel_makes_the_reference_picks():
    """The one-launch FPS kernel of the GPU path, run on the CPU by Triton's interpreter."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", _FPS_IN_INTERPRETER, str(REPO)], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 0 and "same picks" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton FPS path runs on CUDA tensors")
def test_fps_on_cuda_makes_the_reference_picks():
    from encoders.fps import farthest_point_sampling, fps_reference
    for p, mask, m in _fps_cases(1):
        idx, _ = farthest_point_sampling(p.cuda(), mask.cuda(), m)
        assert torch.equal(idx.cpu(), fps_reference(p, mask, m))


@pytest.mark.parametrize("bands", [0, 8])
def test_point_offsets_reach_theta_at_unit_scale_and_ignore_padding(bands):
    """The second half of the offsets has RMS 1 over the valid neighbours whatever the cloud's size; padded
    points, whatever their coordinates, change no real output of the encoder."""
    from encoders import EncoderConfig, build_encoder
    from encoders.points import normalise_offsets
    rng = np.random.default_rng(2)
    rel = torch.tensor(rng.normal(size=(2, 5, 4, 3)), dtype=torch.float32) * torch.tensor([0.01, 30.0])[:, None, None, None]
    valid = torch.ones(2, 5, 4, dtype=torch.bool)
    valid[1, :, 3] = False
    out = normalise_offsets(rel, valid)
    assert torch.equal(out[..., :3], rel)
    for b in range(2):
        unit = out[b, ..., 3:][valid[b]]
        assert float(unit.pow(2).sum(-1).mean()) == pytest.approx(1.0, rel=1e-5)
    moved = rel.clone()
    moved[1, :, 3] = 1e3  # an invalid neighbour does not count
    assert torch.allclose(normalise_offsets(moved, valid)[valid], out[valid])

    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig("radar", d=32, n_tokens=4, options={"mid_points": 8, "bands": bands})).eval()
    pts = torch.tensor(rng.normal(size=(2, 30, 5)) * [0.4, 0.4, 0.8, 1.0, 10.0] + [0, 3, 0, 0, 40], dtype=torch.float32)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[0, 18:] = False
    pts[0, 18:] = 0.0
    batch = {"radar": pts, "radar_mask": mask, "present": {"radar": torch.ones(2, dtype=torch.bool)}}
    ref = enc(batch)
    pts2 = pts.clone()
    pts2[0, 18:] = torch.tensor(rng.normal(size=(12, 5)) * 50, dtype=torch.float32)
    got = enc({**batch, "radar": pts2})
    assert torch.allclose(got.pooled, ref.pooled, atol=1e-5) and torch.allclose(got.tokens, ref.tokens, atol=1e-5)


def test_point_fourier_features_match_their_definition_and_older_configs_have_none():
    """sin and cos of each coordinate in metres at wavelengths min_wavelength x 2^k; a stage-one config written
    before the option existed builds the encoder it was trained with (no bands, the same embedding width)."""
    from encoders import EncoderConfig, build_encoder
    from encoders.base import fourier_features
    from pretrain.run import parse_config
    from finetune.config import from_dict  # the loader of every saved config
    enc = build_encoder(EncoderConfig("lidar", d=32, n_tokens=4, options={"bands": 3, "min_wavelength": 0.5}))
    wavelengths = np.array([0.5, 1.0, 2.0])
    assert np.allclose(enc.freqs.numpy(), 2 * np.pi / wavelengths)
    x = torch.tensor([[0.125, 2.0, -0.3]])
    got = fourier_features(x, enc.freqs)[0].numpy()
    ang = np.array([[v * 2 * np.pi / w for w in wavelengths] for v in (0.125, 2.0, -0.3)])  # (3 coords, 3 bands)
    assert np.allclose(got, np.concatenate([np.sin(ang).ravel(), np.cos(ang).ravel()]), atol=1e-6)
    assert enc.embed[0].in_features == 4 + 3 + 18
    assert BindingConfig().point_bands == 0 and parse_config(["--point-bands", "8"]).binding.point_bands == 8
    legacy = from_dict(BindingConfig, {})
    assert legacy.point_bands == 0
    old = build_encoder(legacy.encoder_configs()["lidar"])
    assert old.embed[0].in_features == 4 + 3 and len(old.freqs) == 0


def test_standardised_points_are_unit_rms_and_invariant_to_room_scale():
    """The encoder's second copy of the coordinates is the cloud minus its centroid over its RMS radius: the
    same for a person 3 m away and for the same shape 10 x larger 40 m away, blind to padding, and zero at
    padded points and for empty clouds."""
    from encoders.points import standardise
    rng = np.random.default_rng(3)
    shape = torch.tensor(rng.normal(size=(1, 20, 3)) * [0.3, 0.2, 0.8], dtype=torch.float32)
    p = torch.cat([shape + torch.tensor([0.0, 3.0, 0.0]), 10 * shape + torch.tensor([5.0, 40.0, -1.0]),
                   torch.zeros(1, 20, 3)])
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[2] = False
    out = standardise(p, mask)
    assert torch.allclose(out[0], out[1], atol=1e-5)
    assert float(out[0].pow(2).sum(-1).mean()) == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(out[0].mean(0), torch.zeros(3), atol=1e-6)
    assert torch.equal(out[2], torch.zeros(20, 3))
    padded = p.clone()
    mask[0, 12:] = False
    padded[0, 12:] = 1e3
    part = standardise(padded, mask)[0]
    assert torch.allclose(part[:12], standardise(shape[:, :12], torch.ones(1, 12, dtype=torch.bool))[0], atol=1e-5)
    assert torch.equal(part[12:], torch.zeros(8, 3))


def _csi_sample(rng: np.random.Generator, key: str, past: int) -> dict:
    s = {"__key__": key, "meta": {}, "wifi": rng.uniform(5, 40, (3, 114, 10)).astype(np.float32)}
    if past:
        s["past_wifi"] = rng.uniform(5, 40, (past, 3, 114, 10)).astype(np.float32)
    return s


def test_wifi_window_reads_the_past_frames_and_ignores_padding():
    from encoders import EncoderConfig, build_encoder
    from finetune.config import from_dict
    rng = np.random.default_rng(0)
    samples = [_csi_sample(rng, f"k{i}", past) for i, past in enumerate((0, 2, 5))]
    batch = collate(samples)
    assert batch["past_wifi"].shape == (3, 5, 3, 114, 10)
    assert batch["past_wifi_mask"].tolist() == [[False] * 5, [False] * 3 + [True] * 2, [True] * 5]
    assert torch.equal(batch["past_wifi"][1, 3:], torch.from_numpy(samples[1]["past_wifi"]))  # oldest end padded
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig("wifi", 32, 4, {"window": 3})).eval()
    with torch.no_grad():
        out = enc(batch).pooled
        alone = [enc(collate([s])).pooled[0] for s in samples]
        cut = dict(samples[2], past_wifi=samples[2]["past_wifi"][-3:])
        older, changed = (dict(samples[2], past_wifi=samples[2]["past_wifi"].copy()) for _ in range(2))
        older["past_wifi"][:2] *= 2.0  # frames older than the window
        changed["past_wifi"][-1] *= 2.0
        for i in range(3):  # a row's embedding does not depend on the other rows' padding
            torch.testing.assert_close(out[i], alone[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(enc(collate([cut])).pooled[0], alone[2], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(enc(collate([older])).pooled[0], alone[2], atol=1e-5, rtol=1e-5)
        assert (enc(collate([changed])).pooled[0] - alone[2]).abs().max() > 1e-3  # the window's frames count
        assert from_dict(BindingConfig, {}).wifi_window == 0 and BindingConfig().wifi_window == 9  # older configs
        legacy = build_encoder(EncoderConfig("wifi", 32, 4, {})).eval()  # the frame alone
        torch.testing.assert_close(legacy(batch).pooled[0], legacy(collate([samples[0]])).pooled[0])
        torch.testing.assert_close(legacy(collate([samples[2]])).pooled[0],
                                   legacy(collate([dict(samples[2], past_wifi=samples[2]["past_wifi"] * 3)])).pooled[0])


def test_wifi_motion_standardised_reads_small_motion_at_init():
    """The window's CSI motion reaches a randomly initialised encoder whatever its amplitude (``standardised``),
    with its level still seen; fed raw, a motion of 1 % barely moves the embedding beside the mask channel."""
    from encoders import EncoderConfig, build_encoder
    from finetune.config import from_dict
    rng = np.random.default_rng(0)
    base = rng.uniform(5, 40, (3, 114, 1))
    patterns = rng.normal(size=(8, 4, 3, 114, 10))  # per sample: 3 past frames and the current one

    def batch(amplitude: float) -> dict:
        frames = (base * np.exp(amplitude * patterns)).astype(np.float32)
        return collate([{"__key__": f"k{i}", "meta": {}, "wifi": f[-1], "past_wifi": f[:-1]} for i, f in enumerate(frames)])

    def spread(t: torch.Tensor) -> float:
        return float((t - t.mean(0)).norm(dim=1).mean())

    ratios = {}
    for motion in ("standardised", "raw"):
        torch.manual_seed(0)
        enc = build_encoder(EncoderConfig("wifi", 32, 4, {"window": 3, "motion": motion})).eval()
        with torch.no_grad():
            small, large = enc(batch(0.01)).pooled, enc(batch(0.3)).pooled
        ratios[motion] = spread(small) / spread(large)
        if motion == "standardised":  # the same patterns at another amplitude: the level channel tells them apart
            assert (small - large).abs().max() > 1e-2
    assert ratios["standardised"] > 0.5, ratios
    assert ratios["raw"] < 0.2, ratios
    assert from_dict(BindingConfig, {}).wifi_motion == "raw" and BindingConfig().wifi_motion == "standardised"
    assert build_encoder(EncoderConfig("wifi", 32, 4, {"window": 3})).net[0].in_channels == 4  # older checkpoints
    with pytest.raises(ValueError, match="WiFi motion"):
        build_encoder(EncoderConfig("wifi", 32, 4, {"window": 3, "motion": "scaled"}))


def test_checkpoint_lookup_names_the_path_when_there_is_none(tmp_path):
    from airbind.checkpoint import CheckpointDir, checkpoint_at
    run = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match=f"{run}: no stage-two checkpoint"):
        checkpoint_at(run, "stage-two")
    ckpt = CheckpointDir(run / "checkpoints", "step-000003")
    (ckpt.begin() / "model.safetensors").write_bytes(b"")
    final = ckpt.commit()
    assert checkpoint_at(run) == final and checkpoint_at(final) == final


def test_weights_that_do_not_fit_name_the_checkpoint(tmp_path):
    from safetensors.torch import save_file

    from airbind.checkpoint import load_model_weights
    save_file({"weight": torch.zeros(3, 2), "bias": torch.zeros(3)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(RuntimeError, match=f"{tmp_path / 'model.safetensors'}: these weights do not fit"):
        load_model_weights(torch.nn.Linear(2, 4), tmp_path, strict=False)
    assert load_model_weights(torch.nn.Linear(2, 3), tmp_path) == []


def test_anchor_pairs_bind_each_sample_to_its_source_anchor():
    t, f = True, False
    present = {"image": torch.tensor([t, t, t]), "beam": torch.tensor([t, f, f]), "wifi": torch.tensor([f, t, f]),
               "radar": torch.tensor([t, t, f])}
    pairs = {(m, a): v.tolist() for m, a, v in anchor_pairs("auto", present, list(present))}
    assert pairs[("image", "beam")] == [t, f, f] and pairs[("image", "wifi")] == [f, t, f]
    assert pairs[("radar", "wifi")] == [f, t, f] and ("beam", "wifi") not in pairs
    joint = {(m, a) for m, a, _ in anchor_pairs("joint", present, list(present))}
    assert ("radar", "image") in joint and ("beam", "image") in joint and ("image", "beam") in joint


def _batch(root: Path, n: int) -> dict:
    samples = [s for sub in ("vehicles", "humans") for s in iter_samples(root / sub / "train", image_size=32)]
    rng = np.random.default_rng(0)
    pick = [samples[i] for i in rng.permutation(len(samples))[:n]]
    return collate(pick, max_points=64, always=tuple(TINY.modalities), image_size=32)


def test_a_modality_absent_from_the_batch_is_skipped(mixed_shards):
    torch.manual_seed(0)
    model = BindingModel(TINY)
    batch = _batch(mixed_shards, 8)
    batch["present"]["lidar"][:] = False
    loss, logs = model(batch, MaskedClipLoss())
    assert torch.isfinite(loss) and not any(k.startswith("loss/lidar") for k in logs)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def _rank_worker(rank: int, world: int, port: int, root: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    from pretrain.config import PretrainConfig
    from pretrain.distributed import init_distributed
    from pretrain.train import ds_config, to_device
    import deepspeed
    info = init_distributed()
    torch.manual_seed(0)
    model = BindingModel(TINY)
    cfg = PretrainConfig(batch_size=8, lr=1e-3, warmup_steps=0)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()),
                                      config=ds_config(cfg, world, gpu=False))
    full = _batch(Path(root), 8)
    per = 8 // world
    keep = slice(rank * per, (rank + 1) * per)
    local = {k: (v[keep] if isinstance(v, (torch.Tensor, list)) else {m: t[keep] for m, t in v.items()})
             for k, v in full.items()}
    loss_fn = MaskedClipLoss(info.rank, info.world_size)
    losses = []
    for _ in range(2):  # a step, then the loss after the update: equal iff gradients were averaged right
        loss, _ = engine(to_device(local, info.device), loss_fn)
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    if rank == 0:
        Path(out).write_text(json.dumps(losses))
    torch.distributed.destroy_process_group()


def _run_ranks(world: int, root: Path, out: Path) -> list[float]:
    mp.start_processes(_rank_worker, args=(world, free_port(), str(root), str(out)), nprocs=world,
                       start_method="spawn", join=True)
    return json.loads(out.read_text())


def test_two_deepspeed_ranks_give_the_loss_of_one(mixed_shards, tmp_path):
    one = _run_ranks(1, mixed_shards, tmp_path / "one.json")
    two = _run_ranks(2, mixed_shards, tmp_path / "two.json")
    assert one[0] == pytest.approx(two[0], rel=1e-5)
    assert one[1] == pytest.approx(two[1], rel=1e-4)
    assert one[0] != pytest.approx(one[1], rel=1e-6)  # the step changed the model


def _pretrain_cmd(out: Path, data: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "pretrain/run.py"), "--preset", "small", "--data", str(data / "vehicles"),
            str(data / "humans"), "--out", str(out), "--no-progress", "--steps-per-epoch", "4", "--epochs", "2",
            "--checkpoint-every", "3", "--workers", "1", *extra]


def _pretrain(out: Path, data: Path, *extra: str) -> dict:
    proc = subprocess.run(_pretrain_cmd(out, data, *extra), capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def test_bf16_trains_under_autocast_and_saves_float32_weights(mixed_shards, tmp_path):
    """--bf16 on (the GPU default): bf16 compute, float32 weights in the module and in the checkpoint."""
    from safetensors.torch import load_file
    res = _pretrain(tmp_path / "bf16", mixed_shards, "--bf16", "on", "--epochs", "1", "--steps-per-epoch", "2")
    assert res["step"] == 2 and all(v == v for k, v in res.items() if k.startswith("val/"))
    weights = load_file(Path(res["checkpoint"]) / "model.safetensors")
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float32}


def test_resume_reproduces_the_uninterrupted_run(mixed_shards, tmp_path):
    from safetensors.torch import load_file
    full = _pretrain(tmp_path / "full", mixed_shards)
    _pretrain(tmp_path / "cut", mixed_shards, "--stop-after-steps", "3")
    # another model (here: another anchor) is refused, naming the option, and the checkpoint is left as it was
    proc = subprocess.run(_pretrain_cmd(tmp_path / "cut", mixed_shards, "--resume", "latest", "--anchor", "image"),
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode != 0 and "anchor: saved 'auto', now 'image'" in proc.stderr, proc.stderr[-2000:]
    resumed = _pretrain(tmp_path / "cut", mixed_shards, "--resume", "latest")
    assert full["step"] == resumed["step"] == 8
    a = load_file(Path(full["checkpoint"]) / "model.safetensors")
    b = load_file(Path(resumed["checkpoint"]) / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    for k, v in full.items():
        if k.startswith("val/"):
            assert resumed[k] == pytest.approx(v, abs=1e-6)
