"""How stage two takes its optimizer steps: a plain single-process loop, or DeepSpeed (ZeRO from
``ds_config.json``; one script for CPU, one GPU and many nodes, launched by ``deepspeed finetune/run.py``).
Both use AdamW with the betas/eps of ``ds_config.json``, gradient clipping, the same LR schedule, and write the
same checkpoint files (``optimizer-rank<r>`` per rank)."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

from pretrain.train import REPO_ROOT, ds_config, load_optimizer_state, lr_lambda, optimizer_state, to_device


def wants_deepspeed(engine: str) -> bool:
    """``auto``: DeepSpeed when a launcher started this process (it sets WORLD_SIZE), else the plain loop."""
    if engine not in ("auto", "plain", "deepspeed"):
        raise ValueError(f"engine {engine!r}: choose auto, plain or deepspeed")
    launched = "WORLD_SIZE" in os.environ and "AIRBIND_SELF_GROUP" not in os.environ  # not stage one's own group
    return engine == "deepspeed" or (engine == "auto" and launched)


def adam_settings(cfg) -> dict[str, Any]:
    """AdamW betas/eps/clipping from the DeepSpeed config file, so both engines optimise alike."""
    path = Path(cfg.ds_config)
    path = path if path.is_absolute() or path.is_file() else REPO_ROOT / path
    conf = json.loads(path.read_text())
    params = conf.get("optimizer", {}).get("params", {})
    return {"betas": tuple(params.get("betas", (0.9, 0.999))), "eps": params.get("eps", 1e-8),
            "clip": conf.get("gradient_clipping", 1.0)}


def param_groups(model: torch.nn.Module, cfg) -> list[dict[str, Any]]:
    """Trainable weights in up to three AdamW groups: the task-specific modules (per-task gating, task
    attention and heads, all new at stage two; :meth:`MMSenseModel.task_specific_parameters`) at
    ``lr * head_lr_scale``, the modality encoders (trained at stage one) at ``lr * encoder_lr_scale``,
    everything else (fusion, LoRA, the log-variances of Eq. 14) at ``lr``. The LR schedule scales all alike."""
    task_ids = {id(p) for p in model.task_specific_parameters()}
    encoder_ids = {id(p) for p in model.encoders.parameters()}
    scales = {"task": cfg.head_lr_scale, "encoder": cfg.encoder_lr_scale, "rest": 1.0}
    bad = {k: v for k, v in (("head_lr_scale", cfg.head_lr_scale), ("encoder_lr_scale", cfg.encoder_lr_scale))
           if not v > 0}
    if bad:
        raise ValueError(f"learning-rate multipliers must be > 0 (use --freeze-encoders to keep encoders fixed): {bad}")
    groups: dict[str, list[torch.nn.Parameter]] = {k: [] for k in scales}
    for p in model.parameters():
        if p.requires_grad:
            groups["task" if id(p) in task_ids else "encoder" if id(p) in encoder_ids else "rest"].append(p)
    return [{"params": ps, "lr": cfg.lr * scales[k]} for k, ps in groups.items() if ps]


class PlainEngine:
    """One process: torch AdamW, clip, LambdaLR."""

    rank, world_size = 0, 1
    reduce = None  # one process: nothing to sum over ranks

    def __init__(self, model: torch.nn.Module, cfg, prepare: Callable[[Any], None] | None = None):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.module = model.to(self.device)
        if prepare is not None:
            prepare(self)
        groups = param_groups(model, cfg)
        self.params = [p for g in groups for p in g["params"]]
        adam = adam_settings(cfg)
        self.clip = adam["clip"]
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           betas=adam["betas"], eps=adam["eps"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))

    def step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        loss, res = self.module(to_device(batch, self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach(), res

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def autocast(self):
        return contextlib.nullcontext()

    def optimizer_state(self) -> dict[str, Any]:
        return {"base": self.optimizer.state_dict(), "fp32": []}

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["base"])

    def barrier(self) -> None:
        pass


class DeepSpeedEngine:
    """DeepSpeed data parallelism. The model's label statistics and per-task loss normalisation are summed
    over the ranks (``MMSenseModel.forward(reduce=...)``), and every trainable weight takes part in each rank's
    backward pass, so a task missing from one rank's micro-batch cannot desynchronise the gradient reduction."""

    def __init__(self, model: torch.nn.Module, cfg, prepare: Callable[[Any], None] | None = None):
        import deepspeed

        from pretrain.distributed import init_distributed
        info = init_distributed()
        self.rank, self.world_size, self.device = info.rank, info.world_size, info.device
        conf = ds_config(cfg, info.world_size, info.device.type == "cuda")
        self.bf16 = bool(conf["torch_autocast"]["enabled"])
        self.module = model.to(self.device)
        self.reduce = self._sum  # sums a tensor over the ranks (MMSenseModel.forward's ``reduce``)
        if prepare is not None:  # before ZeRO copies the weights into its optimizer partitions
            prepare(self)
        groups = param_groups(model, cfg)
        self.params = [p for g in groups for p in g["params"]]
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=groups, config=conf,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg)))
        self.module = self.engine.module

    @staticmethod
    def _sum(t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        torch.distributed.all_reduce(t)
        return t

    def autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def step(self, batch: dict) -> tuple[torch.Tensor, dict]:
        # DeepSpeed runs the forward under torch.autocast itself (ds_config's torch_autocast section)
        loss, res = self.engine(to_device(batch, self.device), reduce=self._sum)
        loss = loss + 0.0 * sum(p.sum() for p in self.params)
        self.engine.backward(loss)
        self.engine.step()
        return self._sum(loss.detach().float()) / self.world_size, res  # the loss of the whole batch

    def lr(self) -> float:
        return self.engine.lr_scheduler.get_last_lr()[0]

    def optimizer_state(self) -> dict[str, Any]:
        return optimizer_state(self.engine)

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        load_optimizer_state(self.engine, state)

    @property
    def scheduler(self):
        return self.engine.lr_scheduler

    def barrier(self) -> None:
        torch.distributed.barrier()


def make_engine(model: torch.nn.Module, cfg, prepare: Callable[[Any], None] | None = None
                ) -> PlainEngine | DeepSpeedEngine:
    """The engine ``cfg.engine`` asks for. ``prepare(engine)`` runs once the model is on its device (and the
    process group is up) but before the optimizer exists: weights it changes are the ones training starts
    from (ZeRO's optimizer keeps its own fp32 copy of every weight from then on)."""
    kind = DeepSpeedEngine if wants_deepspeed(cfg.engine) else PlainEngine
    return kind(model, cfg, prepare)
