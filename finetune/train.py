"""The stage-two training loop: streaming shards, per-(sample, task) forward passes, uncertainty-weighted
loss, safetensors checkpoints that resume, per-epoch validation metrics per task, TensorBoard + JSONL."""
from __future__ import annotations

import json
import time
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from airbind.checkpoint import (check_same_options, check_world_size, checkpoint_at, latest, load_model_weights,
                               load_state, save_state, versions, write_by_ranks)
from airbind.paths import configure_tool_caches
from finetune.augment import shift_human_scenes
from finetune.config import FinetuneConfig, from_dict
from finetune.metrics import majority_class, task_metrics
from finetune.model import LABEL_STATS, MMSenseModel
from finetune.significance import compare_to_baselines, recorded_state
from pretrain.data import resolve_data, split_dirs
from pretrain.model import BindingConfig
from pretrain.train import log_record, stream_config, to_device
from shards.stream import capped_batches, make_loader, one_pass_batches


def keep_fraction(batch: dict, fraction: float) -> dict:
    """Hide the labels of all but a fixed ``fraction`` of samples (chosen by a hash of the key)."""
    if fraction >= 1.0:
        return batch
    keep = torch.tensor([zlib.crc32(k.encode()) % 10_000 < fraction * 10_000 for k in batch["key"]])
    for name in ("beam_label", "activity"):
        batch[name] = torch.where(keep, batch[name], torch.full_like(batch[name], -1))
    batch["blockage"] = torch.where(keep, batch["blockage"], torch.full_like(batch["blockage"], -1.0))
    batch["has_keypoints"] = batch["has_keypoints"] & keep
    return batch


def stage_one_binding(path: str) -> tuple[BindingConfig, Path]:
    """Binding config and checkpoint directory of a stage-one run (a checkpoint or a run folder)."""
    ckpt = checkpoint_at(Path(path), "stage-one")
    conf = json.loads((ckpt / "config.json").read_text())["config"]["binding"]
    return from_dict(BindingConfig, conf), ckpt


def build_model(cfg: FinetuneConfig) -> MMSenseModel:
    model = MMSenseModel(cfg.model)
    if cfg.encoders:
        _, ckpt = stage_one_binding(cfg.encoders)
        # stage one may hold more encoders than the tasks use: those keys are ignored, none may be missing
        missing = load_model_weights(model.encoders, ckpt, strict=False, prefix="encoders.")
        if missing:
            raise ValueError(f"{ckpt}: stage-one weights lack {missing[:5]}")
    if cfg.freeze_encoders:
        model.encoders.requires_grad_(False)
    return model


def trainable_state(model: MMSenseModel) -> dict[str, torch.Tensor]:
    """Weights to store: everything except a frozen (or LoRA-wrapped) backbone's base weights, which come
    back from the backbone source."""
    skip_base = model.cfg.use_backbone and model.cfg.backbone.tune != "full"
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
            if not (skip_base and k.startswith("backbone.") and "lora_" not in k)}


@torch.no_grad()
def evaluate(model: MMSenseModel, cfg: FinetuneConfig, dirs: list[Path], max_samples: int | None = None
             ) -> tuple[dict[str, float], dict[str, dict[str, np.ndarray]]]:
    """Per-task metrics on shard folders, plus the gathered outputs/labels/keys per task."""
    model.eval()
    device = next(model.parameters()).device
    got: dict[str, dict[str, list]] = {}
    gates: dict[str, list] = {}
    for batch in capped_batches(dirs, stream_config(cfg, 32, 0, False, cfg.model.binding.modalities), max_samples):
        _, res = model(to_device(batch, device))
        for t, r in res.items():
            g = got.setdefault(t, {"output": [], "label": [], "key": [], "power": [], "now": []})
            rows = r["rows"].cpu()
            g["output"].append(r["output"].float().cpu().numpy())
            g["label"].append(r["label"].float().cpu().numpy())
            g["key"] += [k for k, keep in zip(batch["key"], rows.tolist()) if keep]
            if t == "beam":
                g["power"].append(batch["beam"][rows].numpy())
            if t == "blockage" and "blocked_now" in batch:
                g["now"].append(batch["blocked_now"][rows].numpy())
            if "state_logit" in r:
                g.setdefault("state_logit", []).append(r["state_logit"].float().cpu().numpy())
            gates.setdefault(t, []).append(model.last_gates[t].float().cpu().numpy())
    model.train()
    metrics: dict[str, float] = {}
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for t, g in got.items():
        out, lab = np.concatenate(g["output"]), np.concatenate(g["label"])
        lab = lab.astype(int) if t in ("beam", "har", "blockage") else lab
        power = np.concatenate(g["power"]) if g["power"] else None
        for k, v in task_metrics(t, out, lab, power).items():
            metrics[f"{t}/{k}"] = v
        metrics[f"{t}/samples"] = float(len(lab))
        arrays[t] = {"output": out, "label": lab, "key": np.array(g["key"]), **({"power": power} if power is not None else {})}
        if g["now"]:
            arrays[t]["blocked_now"] = np.concatenate(g["now"]).astype(int)
            if g.get("state_logit"):  # the state blockage head: how well it reads frame t's state, where recorded
                now, logit = arrays[t]["blocked_now"], np.concatenate(g["state_logit"])
                if bool((now >= 0).any()):
                    metrics[f"{t}/state_accuracy"] = float(((logit >= 0) == (now == 1))[now >= 0].mean())
        mods = [m for m in model.specs[t].inputs if m in model.modalities]
        mean_gate = np.concatenate(gates[t]).mean(0)
        for m, w in zip([m for m in mods], mean_gate):
            metrics[f"{t}/gate/{m}"] = float(w)
    return metrics, arrays


def baselines(train_labels: dict[str, list], arrays: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    """Trivial baselines on the validation labels from the training labels seen: majority class, mean pose
    (MPJPE, and PA-MPJPE after aligning it to each true pose), majority blockage state. And, where every
    blockage sample records the link's state at frame t, the persistence reference: frame t's own state as
    the answer (``blockage/persistence_accuracy``; a reference, not a trivial baseline: the model is given
    frame t's powers, not its state)."""
    out = {}
    for t, a in arrays.items():
        lab = a["label"]
        now = recorded_state(a) if t == "blockage" else None
        if now is not None:
            out["blockage/persistence_accuracy"] = float((now == lab).mean())
        if t in ("beam", "har", "blockage") and train_labels.get(t):
            major = majority_class(train_labels[t])
            out[f"{t}/baseline_accuracy"] = float((lab == major).mean())
        elif t == "hpe" and train_labels.get(t):
            mean_pose = np.mean(np.stack([np.asarray(v) for v in train_labels[t]]), axis=0)
            from finetune.metrics import mpjpe_mm, pa_mpjpe_mm
            guess, true = np.broadcast_to(mean_pose, lab.shape).reshape(-1, 17, 3), lab.reshape(-1, 17, 3)
            out["hpe/baseline_mpjpe_mm"] = mpjpe_mm(guess, true)
            # the mean pose moved, turned and scaled onto each true pose: what PA-MPJPE gives with no articulation
            out["hpe/baseline_pa_mpjpe_mm"] = pa_mpjpe_mm(guess, true)
    return out


def save_checkpoint(engine, cfg: FinetuneConfig, state: dict[str, Any], train_labels) -> Path | None:
    """Every rank writes its optimizer partition (unless ``cfg.save_optimizer`` is False); rank 0 writes weights,
    config and trainer state."""
    def own(tmp: Path) -> None:
        if cfg.save_optimizer:
            save_state(tmp / f"optimizer-rank{engine.rank}", engine.optimizer_state())

    def shared(tmp: Path) -> None:
        from safetensors.torch import save_file
        save_file({k: v.float() if v.is_floating_point() else v for k, v in trainable_state(engine.module).items()},
                  tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps({"config": asdict(cfg), "versions": versions(), "kind": "finetune",
                                                     "world_size": engine.world_size}, indent=1, default=str))
        save_state(tmp / "trainer_state", {**state, "scheduler": engine.scheduler.state_dict(),
                                           "torch_rng": torch.get_rng_state(),
                                           "train_labels": {t: [np.asarray(v).tolist() for v in vals]
                                                            for t, vals in train_labels.items()}})
    return write_by_ranks(Path(cfg.out) / "checkpoints", f"step-{state['step']:06d}", engine.rank, engine.barrier,
                          own, shared)


def saved_config(ckpt: Path) -> dict[str, Any]:
    """The ``FinetuneConfig`` a checkpoint was written with, as a dict (keys of later code filled in as
    the code of that checkpoint behaved)."""
    raw = json.loads((Path(ckpt) / "config.json").read_text())["config"]
    raw.get("model", {}).setdefault("feature_norm", False)  # checkpoints of code before FeatureStandardizer
    return raw


# options that lay out the optimizer's parameter groups (finetune.engine.param_groups): a resumed optimizer
# state brings back its groups' learning rates, so a change here would be silently ignored or fail to load
OPTIMIZER_OPTIONS = ("freeze_encoders", "head_lr_scale", "encoder_lr_scale")


def check_resumable(ckpt: Path, cfg: FinetuneConfig) -> None:
    """Refuse to resume ``ckpt`` with a model that differs from the one it saved (e.g. a checkpoint of the
    code before FeatureStandardizer under today's default: its statistics would be set mid-run), or with
    other optimizer groups (``OPTIMIZER_OPTIONS``; a checkpoint from before an option counts as its
    ``FinetuneConfig.LEGACY`` value)."""
    raw = saved_config(ckpt)
    saved = from_dict(FinetuneConfig, raw)
    if not saved.save_optimizer:
        raise ValueError(f"{ckpt}: written without optimizer state (--no-optimizer-state), so it cannot be resumed; "
                         "start a new run from its recipe, or load its weights with finetune/predict.py")
    check_same_options(ckpt, {**raw.get("model", {}), **{k: getattr(saved, k) for k in OPTIMIZER_OPTIONS}},
                       {**asdict(cfg.model), **{k: getattr(cfg, k) for k in OPTIMIZER_OPTIONS}})


def load_model(ckpt: Path) -> tuple[MMSenseModel, FinetuneConfig]:
    """A trained stage-two model from its checkpoint directory (backbone weights from their source)."""
    cfg = from_dict(FinetuneConfig, saved_config(ckpt))
    model = MMSenseModel(cfg.model)
    missing = load_model_weights(model, Path(ckpt), strict=False)
    bad = [k for k in missing if not (k.startswith("backbone.") and "lora_" not in k)]  # base weights: from source
    if bad:
        raise ValueError(f"{ckpt}: checkpoint lacks {bad[:5]}")
    return model.eval(), cfg


def probe_batches(engine, cfg: FinetuneConfig, roots: list[Path]):
    """At most ``cfg.head_init_samples`` training samples, each read once (:func:`shards.stream.one_pass_batches`:
    a training split smaller than its share is read whole), shuffled in their own seeded order, one batch at a
    time on the engine's device; with ``--fraction`` only the kept labels count."""
    micro = cfg.batch_size // engine.world_size
    stream = stream_config(cfg, micro, -1, True, cfg.model.binding.modalities)  # its shuffle buffer and seed
    for batch in one_pass_batches(split_dirs(roots, "train"), stream, cfg.head_init_samples, engine.rank,
                                  engine.world_size):
        yield to_device(keep_fraction(batch, cfg.fraction), engine.device)


def probe_heads(engine, cfg: FinetuneConfig, roots: list[Path]) -> dict[str, float]:
    """Fit the task heads by a linear probe (LP-FT, :mod:`finetune.headinit`) on :func:`probe_batches`."""
    from finetune.headinit import init_heads_by_probe
    t0 = time.perf_counter()
    with engine.autocast():
        info = init_heads_by_probe(engine.module, probe_batches(engine, cfg, roots), engine.reduce,
                                   engine.world_size, engine.device)
    return {**info, "head_init/seconds": time.perf_counter() - t0}


def pose_stats_from_labels(engine, cfg: FinetuneConfig, roots: list[Path]) -> dict[str, float]:
    """Without the probe (``--head-init none``): fix the pose statistics (:meth:`MMSenseModel.observe`) from
    every pose among :func:`probe_batches` before the first step, reading labels and point clouds only (no
    forward pass). Otherwise the first training batch with poses would fix them, and its few sequences can
    put the pelvis spread near its floor (the failure :meth:`MMSenseModel.refit_pose_stats` mends for the
    probe). The blockage class counts still come from the training batches."""
    model = engine.module
    if "hpe" not in model.heads:
        return {}
    t0, total = time.perf_counter(), None
    for batch in probe_batches(engine, cfg, roots):
        rows = model.task_rows("hpe", batch, [m for m in model.modalities if m in batch])
        if rows is None:
            continue
        stats = model.label_stats(batch, {"hpe": rows}, engine.device).double()
        total = stats if total is None else total + stats
    if total is None:
        total = torch.zeros(LABEL_STATS, dtype=torch.float64, device=engine.device)
    if engine.reduce is not None:
        total = engine.reduce(total)  # every rank calls it once, with or without poses of its own
    total[103:105] = 0  # blockage counts: from the training batches, as before
    model.observe(total.float())
    spread = model.hpe_scale[:3].tolist()
    return {"pose_stats/poses": float(total[0]), "pose_stats/seconds": time.perf_counter() - t0,
            **{f"pose_stats/pelvis_spread_{a}_m": float(v) for a, v in zip("xyz", spread)}}


def train(cfg: FinetuneConfig) -> dict[str, Any]:
    """Run stage two (plain loop or DeepSpeed, see finetune/engine.py); returns the last validation metrics."""
    from finetune.engine import make_engine
    configure_tool_caches()
    if cfg.head_init not in ("probe", "none"):
        raise ValueError(f"head_init {cfg.head_init!r}: choose probe or none")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    roots = resolve_data(cfg.data)
    if cfg.encoders:  # the encoders must be the ones stage one trained
        binding, _ = stage_one_binding(cfg.encoders)
        cfg.model.binding = binding
    out = Path(cfg.out)
    if not cfg.resume and latest(out / "checkpoints") is not None:
        raise FileExistsError(f"{out} already holds a run; pass --resume latest or choose another --out")
    probed: dict[str, float] = {}  # a resumed run has its heads and pose statistics in the checkpoint
    first = probe_heads if cfg.head_init == "probe" else pose_stats_from_labels
    prepare = None if cfg.resume else (lambda eng: probed.update(first(eng, cfg, roots)))
    engine = make_engine(build_model(cfg), cfg, prepare)
    model, rank = engine.module, engine.rank
    state: dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0}
    train_labels: dict[str, list] = {}
    if cfg.resume:
        path = latest(out / "checkpoints") if cfg.resume == "latest" else Path(cfg.resume)
        if path is None:
            raise FileNotFoundError(f"--resume latest: no checkpoint under {out / 'checkpoints'}")
        check_world_size(path, engine.world_size)
        check_resumable(path, cfg)
        load_model_weights(model, path, strict=False)  # LoRA/trainable weights; the base comes from its source
        engine.load_optimizer_state(load_state(path / f"optimizer-rank{rank}"))
        saved = load_state(path / "trainer_state")
        engine.scheduler.load_state_dict(saved.pop("scheduler"))
        torch.set_rng_state(saved.pop("torch_rng"))
        train_labels = {t: [np.asarray(v) for v in vals] for t, vals in saved.pop("train_labels").items()}
        state = saved
    writer = None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tb"))
    log_path = out / "metrics.jsonl"
    if probed and rank == 0:
        log_record(log_path, writer, {"step": 0, **probed})
    metrics: dict[str, Any] = {}
    ckpt = None
    bar = tqdm(total=cfg.epochs * cfg.steps_per_epoch, initial=state["step"], desc="stage two", unit="step",
               disable=True if (rank != 0 or not cfg.progress) else None)
    micro = cfg.batch_size // engine.world_size
    if micro * engine.world_size != cfg.batch_size:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {engine.world_size} ranks")
    stopped = False
    for epoch in range(state["epoch"], cfg.epochs):
        loader = make_loader(split_dirs(roots, "train"), stream_config(cfg, micro, epoch, True, cfg.model.binding.modalities))
        skip = state["batch_in_epoch"] if epoch == state["epoch"] else 0
        t0 = time.perf_counter()
        for i, batch in enumerate(loader):
            if i >= cfg.steps_per_epoch:
                break
            if i < skip:
                continue
            batch = keep_fraction(batch, cfg.fraction)
            shift = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state["step"])  # same on resume
            loss, res = engine.step(shift_human_scenes(batch, cfg.scene_shift, shift))
            for t, r in res.items():  # the trivial baselines' training labels: poses where they were recorded
                label = batch["keypoints"][r["rows"].cpu()].flatten(1) if t == "hpe" else r["label"]
                train_labels.setdefault(t, []).extend(label.detach().float().cpu().numpy())
            state.update(step=state["step"] + 1, epoch=epoch, batch_in_epoch=i + 1)
            bar.update(1)
            if rank == 0 and (state["step"] % cfg.log_every == 0 or i + 1 == cfg.steps_per_epoch):
                rec = {"step": state["step"], "epoch": epoch, "loss": float(loss), "lr": engine.lr(),
                       **{f"loss/{t}": float(r["loss"].detach()) for t, r in res.items()},
                       **{f"log_var/{t}": float(p.detach()) for t, p in model.loss.log_vars.items()},
                       **{f"gate/{t}/{m}": float(w) for t in model.last_gates
                          for m, w in zip([m for m in model.specs[t].inputs if m in model.modalities],
                                          model.last_gates[t].float().mean(0).tolist())}}
                log_record(log_path, writer, rec)
                bar.set_postfix(loss=f"{rec['loss']:.3f}")
            if cfg.stop_after_steps is not None and state["step"] >= cfg.stop_after_steps:
                stopped = True
                break
        if stopped:
            ckpt = save_checkpoint(engine, cfg, state, train_labels)
            break
        state.update(epoch=epoch + 1, batch_in_epoch=0)
        if rank == 0:  # validation on rank 0; baselines from the training labels this rank saw
            with engine.autocast():
                metrics, arrays = evaluate(model, cfg, split_dirs(roots, "val"), cfg.val_max_samples)
            metrics.update(baselines(train_labels, arrays))
            metrics.update(compare_to_baselines(train_labels, arrays))
            log_record(log_path, writer, {"step": state["step"], "epoch": epoch, "seconds": time.perf_counter() - t0,
                                          **metrics})
        engine.barrier()
        ckpt = save_checkpoint(engine, cfg, state, train_labels)
    bar.close()
    if writer is not None:
        writer.close()
    return {"metrics": metrics, "checkpoint": str(ckpt) if ckpt else None, "step": state["step"], "rank": rank}
