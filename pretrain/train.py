"""The stage-one training loop under DeepSpeed: streaming shards, InfoNCE to the anchor, checkpoints that
resume to the same result, TensorBoard + JSONL logs, per-epoch cross-modal retrieval."""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from airbind.checkpoint import latest, load_state, save_state, versions, write_by_ranks
from airbind.paths import REPO_ROOT, configure_tool_caches
from pretrain.config import PretrainConfig
from pretrain.data import resolve_data, split_dirs
from pretrain.distributed import DistInfo, init_distributed
from pretrain.loss import MaskedClipLoss
from pretrain.model import BindingModel, anchor_pairs
from pretrain.retrieval import ANCHOR_LABELS, label_chance, label_recall_at_k, recall_at_k
from shards.stream import StreamConfig, capped_batches, make_loader


def to_device(batch: dict, device: torch.device) -> dict:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, dict):
            # non_blocking here too: a blocking copy waits for every kernel already queued (a device sync per step)
            out[k] = {kk: vv.to(device, non_blocking=True) for kk, vv in v.items()}
        else:
            out[k] = v
    return out


def ds_config(cfg: PretrainConfig, world: int, gpu: bool) -> dict:
    path = Path(cfg.ds_config)
    if not path.is_absolute() and not path.is_file():
        path = REPO_ROOT / path
    conf = json.loads(path.read_text())
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {world} ranks")
    conf.update(train_batch_size=cfg.batch_size, train_micro_batch_size_per_gpu=cfg.batch_size // world,
                gradient_accumulation_steps=1)
    conf.setdefault("optimizer", {"type": "AdamW", "params": {}})
    conf["optimizer"]["params"].update(lr=cfg.lr, weight_decay=cfg.weight_decay, torch_adam=True)
    if gpu:  # torch's fused AdamW kernel (DeepSpeed passes the remaining params to torch.optim.AdamW)
        conf["optimizer"]["params"].setdefault("fused", True)
    conf.setdefault("zero_optimization", {})["stage"] = cfg.zero_stage
    # bf16 by torch.autocast inside DeepSpeed's forward, with float32 weights: DeepSpeed's own "bf16" mode casts
    # the module's weights to bf16, which float32 inputs (images, clouds, GPS metres) cannot meet and which would
    # put bf16 weights, not the float32 master copy, into the saved model
    conf["bf16"] = {"enabled": False}
    conf["torch_autocast"] = {"enabled": cfg.bf16 == "on" or (cfg.bf16 == "auto" and gpu), "dtype": "bfloat16"}
    return conf


def lr_lambda(cfg):
    """Linear warm-up then cosine decay to 10 % (any config with epochs, steps_per_epoch, warmup_steps)."""
    total = max(1, cfg.epochs * cfg.steps_per_epoch)

    def f(step: int) -> float:  # linear warm-up, cosine decay to 10 %
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def stream_config(cfg, micro: int, epoch: int, train: bool, modalities: list[str]) -> StreamConfig:
    """Training (resampled, shuffled, rank-local) or evaluation (every shard once) stream settings; ``cfg`` is
    any config with image_size, max_points, shuffle_buffer, steps_per_epoch, workers and seed."""
    return StreamConfig(batch_size=micro, image_size=cfg.image_size, max_points=cfg.max_points,
                        shuffle_buffer=cfg.shuffle_buffer if train else 0, resampled=train,
                        epoch_samples=(cfg.steps_per_epoch + 2) * micro * max(1, cfg.workers) if train else None,
                        num_workers=cfg.workers if train else 0, seed=cfg.seed + 1009 * epoch,
                        always=tuple(modalities), split_nodes=train)


@torch.no_grad()
def validate(model: BindingModel, cfg: PretrainConfig, roots: list[Path], device: torch.device) -> dict[str, float]:
    """Recall@1/5 of each modality → its anchor on the validation split (chance = k / pairs), and the label
    recall of the retrieved anchor: the same best beam (anchor ``beam``) or the same activity (anchor ``wifi``),
    with its chance level. Consecutive frames are near-duplicates, so the label recall says what instance
    recall cannot: whether the retrieved anchor is a right one."""
    dirs = split_dirs(roots, "val")
    if not dirs:
        return {}
    model.eval()
    emb: dict[str, list] = {}
    present: dict[str, list] = {}
    labels: dict[str, list] = {a: [] for a in ANCHOR_LABELS}
    for batch in capped_batches(dirs, stream_config(cfg, 64, 0, False, cfg.binding.modalities), cfg.val_max_samples):
        batch = to_device(batch, device)
        for m, z in model.embed(batch).items():
            emb.setdefault(m, []).append(z.float().cpu())
            present.setdefault(m, []).append(batch["present"][m].cpu())
        for a, (_, key) in ANCHOR_LABELS.items():
            labels[a].append(batch[key].cpu())
    model.train()
    z = {m: torch.cat(v) for m, v in emb.items()}
    p = {m: torch.cat(v) for m, v in present.items()}
    label = {a: torch.cat(v).numpy() for a, v in labels.items()}  # the label each anchor carries
    out: dict[str, float] = {}
    for m, a, valid in anchor_pairs(cfg.binding.anchor, p, list(z)):
        idx = valid.nonzero().squeeze(1).numpy()
        if len(idx) < 5:
            continue
        rec = recall_at_k(z[m][idx].numpy(), z[a][idx].numpy(), ks=(1, 5))
        out[f"val/{m}->{a}/R@1"] = rec[1]
        out[f"val/{m}->{a}/R@5"] = rec[5]
        out[f"val/{m}->{a}/pairs"] = float(len(idx))
        if a in label and (label[a][idx] >= 0).all():  # also: the retrieved anchor's best beam / activity
            lab = label_recall_at_k(z[m][idx].numpy(), z[a][idx].numpy(), label[a][idx], ks=(1, 5))
            name = ANCHOR_LABELS[a][0]
            out[f"val/{m}->{a}/{name}R@1"] = lab[1]
            out[f"val/{m}->{a}/{name}R@5"] = lab[5]
            out[f"val/{m}->{a}/{name}R@1_chance"] = label_chance(label[a][idx], 1)
    return out


def save_checkpoint(engine, cfg: PretrainConfig, info: DistInfo, state: dict[str, Any], name: str) -> Path | None:
    """Every rank writes its optimizer partition; rank 0 writes weights, config and trainer state."""
    def shared(tmp: Path) -> None:
        from safetensors.torch import save_file
        model_state = {k: v.detach().float().cpu().contiguous() for k, v in engine.module.state_dict().items()}
        save_file(model_state, tmp / "model.safetensors")
        conf = {"config": asdict(cfg), "versions": versions(), "world_size": info.world_size, "kind": "pretrain"}
        (tmp / "config.json").write_text(json.dumps(conf, indent=1, default=str))
        save_state(tmp / "trainer_state", {**state, "scheduler": engine.lr_scheduler.state_dict(),
                                           "torch_rng": torch.get_rng_state()})
    return write_by_ranks(Path(cfg.out) / "checkpoints", name, info.rank, dist.barrier,
                          lambda tmp: save_state(tmp / f"optimizer-rank{info.rank}", optimizer_state(engine)), shared)


def optimizer_state(engine) -> dict[str, Any]:
    """This rank's optimizer state of a DeepSpeed engine: the base optimizer and ZeRO's fp32 partitions."""
    base = getattr(engine.optimizer, "optimizer", engine.optimizer)
    fp32 = [t.detach().clone() for t in getattr(engine.optimizer, "single_partition_of_fp32_groups", [])]
    return {"base": base.state_dict(), "fp32": fp32}


def load_optimizer_state(engine, state: dict[str, Any]) -> None:
    getattr(engine.optimizer, "optimizer", engine.optimizer).load_state_dict(state["base"])
    for dst, src in zip(getattr(engine.optimizer, "single_partition_of_fp32_groups", []), state["fp32"]):
        dst.data.copy_(src)


def load_checkpoint(engine, path: Path, info: DistInfo, cfg: PretrainConfig) -> dict[str, Any]:
    from airbind.checkpoint import check_same_options, check_world_size, load_model_weights
    check_world_size(path, info.world_size)
    check_same_options(path, json.loads((path / "config.json").read_text())["config"].get("binding", {}),
                       asdict(cfg.binding))
    load_model_weights(engine.module, path)
    load_optimizer_state(engine, load_state(path / f"optimizer-rank{info.rank}"))
    state = load_state(path / "trainer_state")
    engine.lr_scheduler.load_state_dict(state.pop("scheduler"))
    torch.set_rng_state(state.pop("torch_rng"))
    return state


def build_engine(cfg: PretrainConfig, info: DistInfo):
    """The binding model wrapped by DeepSpeed (ZeRO, optimizer, schedule from the config) and its loss."""
    import deepspeed
    model = BindingModel(cfg.binding)
    if info.world_size > 1 and info.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # no-op without BatchNorm layers
    conf = ds_config(cfg, info.world_size, info.device.type == "cuda")
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=conf,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg)))
    return engine, MaskedClipLoss(info.rank, info.world_size)


def train_step(engine, batch: dict, loss_fn) -> tuple[torch.Tensor, dict[str, float]]:
    """One optimizer step of stage one (forward, backward, step, CLIP's temperature clamp)."""
    loss, logs = engine(batch, loss_fn)
    engine.backward(loss)
    engine.step()
    engine.module.clamp_temperature()
    return loss, logs


def train(cfg: PretrainConfig) -> dict[str, Any]:
    """Run stage one; returns the last validation metrics (and the checkpoint path)."""
    configure_tool_caches()
    info = init_distributed()

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    if info.rank == 0:
        roots = resolve_data(cfg.data)  # builds the twin caches once
    dist.barrier()
    if info.rank != 0:
        roots = resolve_data(cfg.data)
    engine, loss_fn = build_engine(cfg, info)
    out = Path(cfg.out)
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0}
    if not cfg.resume and latest(out / "checkpoints") is not None:
        raise FileExistsError(f"{out} already holds a run (checkpoints/latest); pass --resume latest to continue "
                              "it or choose another --out (nothing was overwritten)")
    if cfg.resume:
        path = latest(out / "checkpoints") if cfg.resume == "latest" else Path(cfg.resume)
        if path is None:
            raise FileNotFoundError(f"--resume latest: no checkpoint under {out / 'checkpoints'}")
        state = load_checkpoint(engine, path, info, cfg)
        if info.rank == 0:
            print(f"resumed from {path} at step {state['step']}")
    writer = None
    if info.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tb"))
    log_path = out / "metrics.jsonl"
    micro = cfg.batch_size // info.world_size
    train_dirs = split_dirs(roots, "train")
    metrics: dict[str, Any] = {}
    last_ckpt = None
    bar = tqdm(total=cfg.epochs * cfg.steps_per_epoch, initial=state["step"], desc="stage one", unit="step",
               disable=info.rank != 0 or not cfg.progress)
    stopped = False
    for epoch in range(state["epoch"], cfg.epochs):
        loader = make_loader(train_dirs, stream_config(cfg, micro, epoch, True, cfg.binding.modalities))
        skip = state["batch_in_epoch"] if epoch == state["epoch"] else 0
        t0, n_samples = time.perf_counter(), 0
        for i, batch in enumerate(loader):
            if i >= cfg.steps_per_epoch:
                break
            if i < skip:  # same data order as an uninterrupted run
                continue
            batch = to_device(batch, info.device)
            loss, logs = train_step(engine, batch, loss_fn)
            state.update(step=state["step"] + 1, epoch=epoch, batch_in_epoch=i + 1)
            n_samples += len(batch["key"]) * info.world_size
            bar.update(1)
            if info.rank == 0 and (state["step"] % cfg.log_every == 0 or i + 1 == cfg.steps_per_epoch):
                rec = {"step": state["step"], "epoch": epoch, "loss": float(loss.detach()),
                       "lr": engine.lr_scheduler.get_last_lr()[0], **logs}
                log_record(log_path, writer, rec)
                bar.set_postfix(loss=f"{rec['loss']:.3f}")
            if cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0:
                last_ckpt = save_checkpoint(engine, cfg, info, state, f"step-{state['step']:06d}")
            if cfg.stop_after_steps is not None and state["step"] >= cfg.stop_after_steps:
                stopped = True
                break
        if stopped:
            break
        state.update(epoch=epoch + 1, batch_in_epoch=0)
        seconds = time.perf_counter() - t0
        if info.rank == 0:
            metrics = validate(engine.module, cfg, roots, info.device)
            rec = {"step": state["step"], "epoch": epoch, "train_samples_per_s": n_samples / max(seconds, 1e-9),
                   **metrics}
            log_record(log_path, writer, rec)
        dist.barrier()
        if not cfg.checkpoint_every or state["step"] % cfg.checkpoint_every:
            last_ckpt = save_checkpoint(engine, cfg, info, state, f"step-{state['step']:06d}")
    bar.close()
    if writer is not None:
        writer.close()
    return {"metrics": metrics, "checkpoint": str(last_ckpt) if last_ckpt else None, "step": state["step"],
            "rank": info.rank}


def log_record(path: Path, writer, rec: dict[str, Any]) -> None:
    """Append a record to metrics.jsonl and its finite numbers to TensorBoard."""
    with path.open("a") as fh:
        fh.write(json.dumps(rec) + "\n")
    if writer is not None:
        for k, v in rec.items():
            if isinstance(v, (int, float)) and k not in ("step", "epoch") and math.isfinite(v):
                writer.add_scalar(k, v, rec["step"])
