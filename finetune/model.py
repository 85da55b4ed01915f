"""The stage-two model: stage-one encoders → per-task modality gating (Eq. 8) → cross-modal attention
fusion (Eqs. 9-11) → [fused tokens; task instruction] through the GPT-style backbone → task-specific
sequential attention over intermediate layers (Eqs. 12-13) → task head; uncertainty-weighted loss (Eq. 14).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from encoders import build_encoder
from finetune.backbone import BackboneConfig, load_backbone
from finetune.bodies import SmallBody
from finetune.modules import CrossModalFusion, FeatureStandardizer, ModalityGating, TaskLayerAttention, UncertaintyLoss
from pretrain.model import BindingConfig


@dataclass(frozen=True)
class TaskSpec:
    inputs: tuple[str, ...]   # modalities the task may see (never its own label)
    outputs: int
    kind: str                 # ce | mse | bce
    instruction: str


TASKS: dict[str, TaskSpec] = {
    "beam": TaskSpec(("image", "radar", "lidar", "gps"), 64, "ce",
                     "Predict the optimal beam index from multi-modal inputs."),
    "har": TaskSpec(("image", "radar", "lidar", "wifi"), 27, "ce",
                    "Recognize the human activity from multi-modal inputs."),
    "hpe": TaskSpec(("image", "radar", "lidar", "wifi"), 17 * 3, "mse",
                    "Estimate the 3D positions of 17 body keypoints from multi-modal inputs."),
    # blockage reads the observations up to frame t: the previous beam-power vectors, frame t's own (the last
    # before the predicted frames t+1..t+Δ, as DeepSense 6G's blockage prediction reads the observed power
    # sequence up to the current instant) and frame t's sensors; ModelConfig.blockage_beams "past" drops frame t's
    "blockage": TaskSpec(("past_beam", "beam", "image", "radar", "lidar"), 1, "bce",
                         "Predict whether the line of sight will be blocked in the near future."),
}
LABEL_STATS = 1 + 2 * 51 + 2 + 5  # the length of MMSenseModel.label_stats: poses, blockage classes, pelvis - centre
# the modality holding (or trivially revealing) each task's label: never an input of that task (the blockage
# label is the state of the frames after t, which no input of frame t or before holds)
LABEL_MODALITY = {"beam": "beam", "blockage": None, "har": None, "hpe": None}


def task_specs(tasks: list[str], blockage_beams: str = "current") -> dict[str, TaskSpec]:
    """The specs of ``tasks``; ``blockage_beams`` "past": the blockage task without frame t's beam powers
    (only the previous T, ``past_beam.npy``), as stage-two runs before 2026-12-07 read it."""
    if blockage_beams not in ("current", "past"):
        raise ValueError(f"blockage_beams {blockage_beams!r}: choose 'current' or 'past'")
    specs = {t: TASKS[t] for t in tasks}
    if blockage_beams == "past" and "blockage" in specs:
        specs["blockage"] = replace(specs["blockage"], inputs=tuple(m for m in specs["blockage"].inputs if m != "beam"))
    return specs


def check_no_leak(tasks: dict[str, TaskSpec]) -> None:
    for name, spec in tasks.items():
        if LABEL_MODALITY[name] is not None and LABEL_MODALITY[name] in spec.inputs:
            raise ValueError(f"task {name!r} would see its own label through {LABEL_MODALITY[name]!r}")


def pose_parts(kp: torch.Tensor) -> torch.Tensor:
    """(N, 51) keypoints in metres → (N, 51): the pelvis (joint 0) position, then the other 16 joints
    relative to it (root-relative pose, as 3-D pose estimation usually separates them)."""
    j = kp.reshape(len(kp), 17, 3)
    return torch.cat([j[:, 0], (j[:, 1:] - j[:, :1]).reshape(len(kp), 48)], 1)


def pose_spread(var: torch.Tensor) -> torch.Tensor:
    """Per-coordinate variances (51) of the pose parts → ``hpe_scale`` (6): the pelvis's spread per axis, then the
    root-relative joints' spread per axis pooled over the 16 joints, each at least 2 cm."""
    return torch.cat([var[:3], var[3:].view(16, 3).mean(0)]).sqrt().clamp(min=0.02)


def cloud_centre_xy(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the median x, y (m) of the valid LiDAR points, of the radar points where LiDAR has none,
    and whether either cloud had a point: where the person the clouds show stands (the median is robust to a
    minority of background points). Zeros where neither had one."""
    centre, found = None, None
    for m in ("lidar", "radar"):
        if m not in batch:
            continue
        pts, mask = batch[m][..., :2].float(), batch[m + "_mask"].bool()
        med = pts.masked_fill(~mask[..., None], float("nan")).nanmedian(dim=1).values
        has = mask.any(1)
        if centre is None:
            centre, found = torch.where(has[:, None], med, torch.zeros_like(med)), has
        else:
            take = has & ~found
            centre, found = torch.where(take[:, None], med, centre), found | has
    if centre is None:
        n = len(batch["has_keypoints"])
        return torch.zeros(n, 2), torch.zeros(n, dtype=torch.bool)
    return centre, found


def pose_from_parts(parts: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pose_parts`."""
    root = parts[:, :3]
    return torch.cat([root, (parts[:, 3:].reshape(len(parts), 16, 3) + root[:, None]).reshape(len(parts), 48)], 1)


def label_rows(task: str, batch: dict) -> torch.Tensor:
    """Rows of a batch that carry a label for ``task``."""
    if task == "beam":
        return batch["beam_label"] >= 0
    if task == "har":
        return batch["activity"] >= 0
    if task == "hpe":
        return batch["has_keypoints"]
    return batch["blockage"] >= 0


def blockage_mixture(raw: torch.Tensor) -> torch.Tensor:
    """Log-odds (N, 1) of the future-blockage label from the state head's three logits (a, c, o) (N, 3): frame t
    is blocked with probability σ(a), and the label is 1 with probability σ(c) if it is, σ(o) if it is not
    (total probability: p = σ(a) σ(c) + σ(-a) σ(o)). log p - log(1 - p), from log-sigmoids (no 0 or 1 rounding)."""
    a, c, o = raw.float().unbind(-1)
    ls = F.logsigmoid
    log_p = torch.logaddexp(ls(a) + ls(c), ls(-a) + ls(o))
    log_q = torch.logaddexp(ls(a) + ls(-c), ls(-a) + ls(-o))
    return (log_p - log_q)[:, None].to(raw.dtype)


def causal_padding_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias (B, 1, T, T) of a causal LM over tokens with padding ``mask`` (B, T): 0 where
    query i may read key j (j <= i and j not padding), a large negative number elsewhere (finite, also in bf16:
    a query with no readable key gets uniform attention, not NaN). Handed to the backbone ready-made, so the
    library does not build it from the 2D mask, which reads the mask's values on the host (a device sync per
    call, and no CUDA-graph capture)."""
    t = mask.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=mask.device).tril()
    allowed = causal[None] & mask[:, None, :].bool()
    return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(
        ~allowed, torch.finfo(dtype).min / 2)[:, None]


def task_positions(slots: list[int], n_modalities: int, n_f: int, n_instruction: int) -> torch.Tensor:
    """Backbone position ids of a task's sequence [its modalities' fused tokens; instruction]: those of the
    full layout [every modality's n_f tokens; instruction], in which the tokens of modalities the task does not
    read would all be masked out. Leaving them out of the sequence (a quarter or more of it) thus changes no
    output, only the cost."""
    fused = [j * n_f + k for j in slots for k in range(n_f)]
    return torch.tensor(fused + list(range(n_modalities * n_f, n_modalities * n_f + n_instruction)), dtype=torch.long)


def drop_modalities(present: torch.Tensor, p: float) -> torch.Tensor:
    """Modality dropout (ModDrop, Neverova et al., TPAMI 2016): each present input (B, M) is hidden with
    probability ``p``, as if missing (gate weight 0, masked in the fusion); a row that would lose all its inputs
    keeps them all. Draws come from the CPU generator, whose state the checkpoints store."""
    keep = present & (torch.rand(present.shape) >= p).to(present.device)
    return torch.where(keep.any(1, keepdim=True), keep, present)


@dataclass
class ModelConfig:
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    binding: BindingConfig = field(default_factory=BindingConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    use_backbone: bool = True
    gating: bool = True
    task_attention: bool = True
    task_layers: list[int] | None = None   # hidden-state indices (0 = embeddings); default: 3 evenly spaced
    fusion_layers: int = 1
    feature_norm: bool = True   # standardise each modality's encoder outputs (FeatureStandardizer) before gating
    modality_dropout: float = 0.0  # training only: each present input of a (sample, task) hidden with this probability
    body: str = "llm"     # llm (the full model) | mlp | cnn | transformer (small baselines, finetune/bodies.py)
    pose_anchor: str = "points"  # points: the pelvis x, y predicted from the clouds' centre (cloud_centre_xy) | none
    blockage_beams: str = "current"  # current: blockage reads frame t's beam powers and the previous T | past
    head_skip: bool = True  # the heads also read the gated pooled embedding sum_m w_m p_m (Eq. 8's weights)
    blockage_state: bool = True  # the blockage head: frame t's state and the label given it (blockage_mixture)
    # its loss where frame t's state is recorded: True, the joint likelihood -log p(s) - log p(y | s); False,
    # the label under the mixture plus the state (blockage_state_loss)
    blockage_joint: bool = True
    # what a config written before a field existed was trained with (read by finetune.config.from_dict)
    LEGACY: ClassVar[dict] = {"pose_anchor": "none", "blockage_beams": "past", "head_skip": False,
                              "blockage_state": False, "blockage_joint": False}


def blockage_state_loss(raw: torch.Tensor, label: torch.Tensor, state: torch.Tensor, joint: bool = True
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and output of the state blockage head (``raw`` (N, 3) = (a, c, o), :func:`blockage_mixture`), a mean
    over the N rows. Where a row records frame t's state s (``state`` >= 0) and ``joint``: the negative joint
    log-likelihood -log p(s) - log p(y | s), the binary cross-entropy of s under σ(a) plus that of the label y
    under σ(c) when blocked, σ(o) when clear, so a learns the state alone and c, o each the label of their own
    state (the factorisation the head probe fits, finetune/headinit.py). Without ``joint`` (runs before it):
    the label under the mixture plus the state under σ(a), which lets the label's gradient pull a towards the
    label (down at the end of a blocked run, up at an onset). A row without a recorded state contributes the
    label under the mixture, -log p(y), in both. Unweighted maximum likelihood: the output is the log-odds under
    the data's own prior, and 0.5 is the accuracy-optimal threshold. Frame t's state is most of the label (the
    link blocked at t stays blocked: on the default twin the label is 1 for 84 % of the frames blocked at t and
    3.8 % of the clear ones), and the state is what frame t's powers show; without this target the head has to
    find it from the rare labels alone."""
    logit = blockage_mixture(raw)
    marginal = F.binary_cross_entropy_with_logits(logit.squeeze(-1), label, reduction="none")
    known = state >= 0
    if not bool(known.any()):
        return marginal.mean(), logit
    s = state.clamp(min=0).to(raw.dtype)
    state_nll = F.binary_cross_entropy_with_logits(raw[:, 0], s, reduction="none")
    if not joint:
        return marginal.mean() + (state_nll * known.to(raw.dtype)).sum() / len(state), logit
    given = F.binary_cross_entropy_with_logits(torch.where(s > 0.5, raw[:, 1], raw[:, 2]), label, reduction="none")
    return torch.where(known, state_nll + given, marginal).mean(), logit


class MMSenseModel(nn.Module):
    def __init__(self, cfg: ModelConfig, backbone: tuple[nn.Module, object, int] | None = None):
        super().__init__()
        self.cfg = cfg
        specs = task_specs(cfg.tasks, cfg.blockage_beams)
        check_no_leak(specs)
        if not 0.0 <= cfg.modality_dropout < 1.0:
            raise ValueError(f"modality_dropout {cfg.modality_dropout}: must be in [0, 1)")
        if cfg.pose_anchor not in ("points", "none"):
            raise ValueError(f"pose_anchor {cfg.pose_anchor!r}: choose 'points' or 'none'")
        self.modalities = sorted({m for s in specs.values() for m in s.inputs} & set(cfg.binding.modalities))
        self.specs = specs
        for t in cfg.tasks:  # model slots of each task's inputs (ascending): the fusion's modality embeddings
            self.register_buffer(f"slots_{t}", torch.tensor(self.task_slots(t), dtype=torch.long), persistent=False)
        enc_cfgs = cfg.binding.encoder_configs()
        self.encoders = nn.ModuleDict({m: build_encoder(enc_cfgs[m]) for m in self.modalities})
        self.feature_norm = nn.ModuleDict({m: FeatureStandardizer(cfg.binding.d) for m in self.modalities}
                                          ) if cfg.feature_norm else None
        self.body = None
        if cfg.body != "llm":  # a small baseline: no gating, fusion or backbone
            self.body = SmallBody(cfg.body, cfg.binding.d, len(self.modalities), cfg.binding.n_tokens)
            self.backbone, hidden, layers = None, self.body.width, [0]
        elif cfg.use_backbone:
            self.backbone, tokenizer, hidden = backbone or load_backbone(cfg.backbone)
            n_layers = self.backbone.config.num_hidden_layers
            layers = cfg.task_layers or sorted({max(1, round(n_layers * f)) for f in (1 / 3, 2 / 3, 1.0)})
            if max(layers) > n_layers:
                raise ValueError(f"task layer {max(layers)} > {n_layers} backbone layers")
            for t in cfg.tasks:
                ids = tokenizer(specs[t].instruction, add_special_tokens=False)["input_ids"]
                self.register_buffer(f"instr_{t}", torch.tensor(ids, dtype=torch.long), persistent=False)
                self.register_buffer(f"positions_{t}", task_positions(self.task_slots(t), len(self.modalities),
                                                                      cfg.binding.n_tokens, len(ids)), persistent=False)
        else:
            self.backbone, hidden, layers = None, cfg.binding.d, [0]
        self.hidden = hidden
        self.gating = nn.ModuleDict({t: ModalityGating(cfg.binding.d, cfg.gating) for t in cfg.tasks})
        self.fusion = None if self.body is not None else CrossModalFusion(cfg.binding.d, len(self.modalities), hidden,
                                                                          layers=cfg.fusion_layers)
        self.task_attn = nn.ModuleDict({t: TaskLayerAttention(hidden, layers, cfg.task_attention and self.backbone is not None)
                                        for t in cfg.tasks})
        # head_skip: the head reads [task attention readout, gated pooled embedding] (task_forward)
        self.skip = cfg.head_skip and self.backbone is not None
        head_in = hidden + (cfg.binding.d if self.skip else 0)
        # blockage_state: the blockage output is three logits, frame t's state a and the label given each state
        # (blockage_mixture); the task's output is still one log-odds. Where the task reads frame t's beam powers,
        # a comes from their pooled embedding alone (state_head; the head gives c and o): the one observation
        # that shows the link's state, in 128 standardised features, where the head's 704 let a linear read of
        # the state fit the training streets (on the demo at seed 1, a logistic probe read frame t's state on the
        # unseen street with 0.963 from the beam embedding, 0.899 from the head's input)
        self.state_head = None
        if cfg.blockage_state and "blockage" in specs and "beam" in specs["blockage"].inputs and "beam" in self.modalities:
            self.state_head = nn.Sequential(nn.LayerNorm(cfg.binding.d), nn.Linear(cfg.binding.d, 1))
        outputs = {t: specs[t].outputs for t in cfg.tasks}
        if "blockage" in outputs and cfg.blockage_state:
            outputs["blockage"] = 2 if self.state_head is not None else 3
        self.heads = nn.ModuleDict({t: nn.Sequential(nn.LayerNorm(head_in), nn.Linear(head_in, outputs[t]))
                                    for t in cfg.tasks})
        self.loss = UncertaintyLoss(cfg.tasks)
        # the pose head predicts the pelvis position and the root-relative pose (pose_parts), each in units of
        # its own per-axis spread around its mean over the first training batch: parts = hpe_mean + scale * head.
        # Keypoints are metres in the sensor frame, and where the person stands varies far more than the
        # articulation; one scale for both left the articulation ~15 % of the loss (the share of the
        # root-relative deviation in the keypoints' variance on the default twin). Both halves of the
        # pose loss start near 1 like the other tasks (Eq. 14 would take thousands of steps to re-weight a
        # 0.05 m² loss). Buffers, not weights: no optimizer copy can go stale (ZeRO keeps fp32 copies)
        self.register_buffer("hpe_stats_ready", torch.tensor(False))
        self.register_buffer("hpe_mean", torch.zeros(17 * 3))
        self.register_buffer("hpe_scale", torch.ones(6))  # pelvis x, y, z; root-relative joints x, y, z
        # pose_anchor "points": the head predicts the pelvis x, y relative to the centre of the person's point
        # cloud, as point-cloud pose estimators regress around the cloud's centroid; the mean training pelvis
        # x, y stands in where a sample has no point. Without it the pelvis comes from pooled features, and
        # with few training subjects a held-out one was placed where the training subject of its room stood
        if cfg.pose_anchor == "points":
            self.register_buffer("hpe_root_xy", torch.zeros(2))
        # running label counts of the blockage task: the positive class (a rare event) is weighted by
        # negatives/positives in its cross-entropy, else the head settles on "never blocked"
        self.register_buffer("blockage_counts", torch.zeros(2, dtype=torch.long))  # integer: bf16 would stall
        self.last_gates: dict[str, torch.Tensor] = {}

    def task_slots(self, task: str) -> list[int]:
        """Indices in ``self.modalities`` of the modalities ``task`` reads, ascending."""
        return [j for j, m in enumerate(self.modalities) if m in self.specs[task].inputs]

    def task_specific_parameters(self) -> list[nn.Parameter]:
        """The weights of the per-task modules (gating, task attention, heads, the blockage state head): new at
        stage two, they may get their own learning rate (``--head-lr-scale``)."""
        return [p for m in (self.gating, self.task_attn, self.heads, self.state_head) if m is not None for p in m.parameters()]

    def normalise(self, enc: dict, batch: dict) -> dict:
        """The encoder outputs after :class:`FeatureStandardizer` (unchanged when ``feature_norm`` is off)."""
        if self.feature_norm is None:
            return enc
        return {m: self.feature_norm[m](out, batch["present"][m]) for m, out in enc.items()}

    def task_forward(self, task: str, batch: dict, enc: dict, rows: torch.Tensor) -> torch.Tensor:
        """Raw output of ``task`` for the selected rows: one forward pass per (sample, task); for the blockage
        task with ``state_head``, its state logit (from frame t's beam embedding) before the head's c and o."""
        out = self.head_output(task, batch, enc, rows)
        if task != "blockage" or self.state_head is None:
            return out
        if "beam" in enc:  # standardised, zero where the frame has no powers (the state head then gives its bias)
            beam = enc["beam"].pooled[rows]
        else:
            beam = out.new_zeros(len(out), self.cfg.binding.d)
        return torch.cat([self.state_head(beam.to(out.dtype)), out], -1)

    def head_output(self, task: str, batch: dict, enc: dict, rows: torch.Tensor) -> torch.Tensor:
        """The task head's output for the selected rows: one forward pass per (sample, task)."""
        mods = [m for m in self.specs[task].inputs if m in enc]
        tokens = torch.stack([enc[m].tokens[rows] for m in mods], 1)
        pooled = torch.stack([enc[m].pooled[rows] for m in mods], 1)
        present = torch.stack([batch["present"][m][rows] for m in mods], 1)
        if self.training and self.cfg.modality_dropout > 0:
            present = drop_modalities(present, self.cfg.modality_dropout)
        weights = self.gating[task](pooled, present)
        if not torch.compiler.is_exporting():  # logging state, not part of an exported program
            self.last_gates[task] = weights.detach()
        # built by stacking, not by indexing with a Python list, which would copy an index tensor from the host at
        # each call (and break CUDA-graph capture); zero (and absent) where the batch lacks one of the modalities
        where = {self.modalities.index(m): i for i, m in enumerate(mods)}  # model slot → the task's input i

        def place(x: torch.Tensor, slots: list[int]) -> torch.Tensor:
            empty = x.new_zeros(x[:, 0].shape)
            return torch.stack([x[:, where[j]] if j in where else empty for j in slots], 1)
        if self.body is not None:  # the small bodies read every modality's slot
            every = list(range(len(self.modalities)))
            full_t, full_p = place(tokens, every), place(present, every)
            return self.heads[task](self.body(full_t * full_p[..., None, None], full_p))
        # only the task's own modalities enter the sequence: the others' tokens would all be masked out
        slots = self.task_slots(task)
        t_w, t_p, t_t = place(weights, slots), place(present, slots), place(tokens, slots)
        fused = self.fusion(t_t, t_w, t_p, getattr(self, f"slots_{task}"))
        n_f = tokens.shape[2]
        mask = t_p[:, :, None].expand(-1, -1, n_f).reshape(len(weights), -1)
        if self.backbone is None:  # ablation: fusion straight to the head
            feat = (fused * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
            return self.heads[task](feat)
        ids = getattr(self, f"instr_{task}")
        instr = self.backbone.get_input_embeddings()(ids)[None].expand(len(weights), -1, -1)
        x = torch.cat([fused, instr.to(fused.dtype)], 1)
        attn = torch.cat([mask, mask.new_ones(len(weights), len(ids))], 1)
        positions = getattr(self, f"positions_{task}")[None].expand(len(weights), -1)
        out = self.backbone(inputs_embeds=x, attention_mask=causal_padding_bias(attn, x.dtype), position_ids=positions,
                            output_hidden_states=True, use_cache=False)  # one pass, no generation: no KV cache
        feat = self.task_attn[task](out.hidden_states, attn)
        if self.skip:  # the gated pooled embedding sum_m w_m p_m beside the backbone's readout (w = 0 where absent)
            feat = torch.cat([feat, (weights[..., None] * pooled).sum(1).to(feat.dtype)], -1)
        return self.heads[task](feat)

    def forward(self, batch: dict, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, dict[str, dict]]:
        """Total loss (Eq. 14) and, per task, the rows, outputs, labels and unweighted loss.

        ``reduce`` (data-parallel training) sums a tensor over the ranks. Each task's loss is then the mean over
        the task's rows of the *global* batch, scaled so that the rank average DeepSpeed takes of the gradients
        equals one process on the whole batch; the label statistics (pose scale, blockage counts) and the
        encoder-output statistics of :class:`FeatureStandardizer` are global too, so every rank keeps the same
        buffers. Every rank calls ``reduce`` exactly once per training step."""
        enc = {m: self.encoders[m](batch) for m in self.modalities if m in batch}
        rows = {t: r for t in self.cfg.tasks if (r := self.task_rows(t, batch, enc)) is not None}
        device = next(iter(enc.values())).pooled.device if enc else torch.device("cpu")
        counts = torch.stack([rows[t].sum() if t in rows else torch.zeros((), device=device, dtype=torch.long)
                              for t in self.cfg.tasks]).float()
        world = 1.0
        if self.training:
            # encoder-output moments of modalities whose standardisation is not yet fixed (the same list on
            # every rank: the buffers agree), zeros where this rank's batch lacks the modality
            pending = [m for m in self.modalities if self.feature_norm is not None and not bool(self.feature_norm[m].ready)]
            moments = [self.feature_norm[m].moments(enc[m], batch["present"][m]) if m in enc
                       else torch.zeros(self.feature_norm[m].width, device=device, dtype=torch.float64) for m in pending]
            labels = self.label_stats(batch, rows, device)
            stats = torch.cat([counts.double(), labels.double(), *moments, torch.ones(1, device=device, dtype=torch.float64)])
            if reduce is not None:
                stats = reduce(stats)  # the last entry becomes the number of ranks
                world = float(stats[-1])
            n_tasks, n_label = len(self.cfg.tasks), len(labels)
            counts = stats[:n_tasks].float()
            self.observe(stats[n_tasks:n_tasks + n_label])
            start = n_tasks + n_label
            for m, part in zip(pending, moments):
                self.feature_norm[m].observe(stats[start:start + len(part)])
                start += len(part)
        enc = self.normalise(enc, batch)
        results, losses = {}, {}
        for i, t in enumerate(self.cfg.tasks):
            n_local = int(rows[t].sum()) if t in rows else 0
            if n_local == 0:
                if counts[i] > 0:  # the task is in another rank's share: its log-variance term still counts
                    losses[t] = counts.new_zeros(())
                continue
            label = self.target(t, batch, rows[t])
            out = self.task_forward(t, batch, enc, rows[t])
            kind = self.specs[t].kind
            if kind == "ce":
                loss = F.cross_entropy(out, label)
            elif kind == "mse":  # pelvis and root-relative pose, each in units of its spread; output in metres
                anchor = self.pose_anchor_xy(batch, rows[t])
                goal = self.pose_goal(label, anchor)
                loss = 0.5 * (F.mse_loss(out[:, :3], goal[:, :3]) + F.mse_loss(out[:, 3:], goal[:, 3:]))
                out = self.pose_output(out, anchor)
            elif self.cfg.blockage_state:
                state = self.state_target(batch, rows[t]).to(out.device)
                state_logit = out[:, 0]
                loss, out = blockage_state_loss(out, label, state, self.cfg.blockage_joint)
            else:
                w = self.pos_weight()
                loss = F.binary_cross_entropy_with_logits(out.squeeze(-1), label, pos_weight=w)
                # the weighted loss trains the log-odds under balanced classes; minus log w gives them under the
                # training labels' own prior (prior correction), whose 0.5 threshold is the accuracy-optimal one
                out = out - torch.log(w).to(out.dtype)
            losses[t] = loss * (n_local * world / counts[i]) if self.training else loss
            results[t] = {"rows": rows[t], "output": out, "label": label, "loss": loss}
            if kind == "bce" and self.cfg.blockage_state:
                results[t]["state"] = state  # frame t's state (-1: not recorded), which the head probe fits
                results[t]["state_logit"] = state_logit  # a: the head's log-odds of that state
            if kind == "mse":
                results[t]["goal"] = goal.detach()  # what the head is trained to output (the head probe fits it)
        total = self.loss(losses) if losses else sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)
        return total, results

    def task_rows(self, task: str, batch: dict, available: Iterable[str]) -> torch.Tensor | None:
        """Rows of ``batch`` labelled for ``task`` with at least one of its inputs present, among the
        ``available`` modalities (those encoded); None when the task has no input among them."""
        inputs = [m for m in self.specs[task].inputs if m in available]
        if not inputs:
            return None
        return label_rows(task, batch) & torch.stack([batch["present"][m] for m in inputs]).any(0)

    def label_stats(self, batch: dict, rows: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
        """Sums over this batch's labelled rows: pose count, Σx and Σx² per coordinate of :func:`pose_parts`
        (51 each), blockage negatives and positives, then the poses with a cloud centre: their count, Σ and Σ²
        of pelvis x, y minus the centre (zeros for a task without rows, and for poses once their statistics are
        fixed)."""
        stats = torch.zeros(LABEL_STATS, device=device)
        # the pose statistics are fixed by the first batch with poses (on every rank at once: the flag is
        # global): later batches skip them, and the cloud centre is computed once per step, for the anchor
        if "hpe" in rows and not bool(self.hpe_stats_ready) and bool(rows["hpe"].any()):
            kp = pose_parts(self.target("hpe", batch, rows["hpe"]).float())
            stats[0], stats[1:52], stats[52:103] = len(kp), kp.sum(0), kp.pow(2).sum(0)
            if self.cfg.pose_anchor == "points":
                centre, found = cloud_centre_xy(batch)
                found = found[rows["hpe"]].to(device)
                r = kp[found, :2] - centre[rows["hpe"]].to(device)[found]
                stats[105], stats[106:108], stats[108:110] = len(r), r.sum(0), r.pow(2).sum(0)
        if "blockage" in rows and bool(rows["blockage"].any()):
            y = self.target("blockage", batch, rows["blockage"])
            stats[103], stats[104] = (y < 0.5).sum(), (y >= 0.5).sum()
        return stats

    @torch.no_grad()
    def observe(self, stats: torch.Tensor) -> None:
        """Data-dependent statistics from training labels (:meth:`label_stats`, summed over ranks, or over the
        batches of ``finetune.train.pose_stats_from_labels``): the pose output's offset and scales from the
        first call with poses (training sets them before its first step), the blockage class counts (running)."""
        n = stats[0]
        if "hpe" in self.heads and n > 0 and not bool(self.hpe_stats_ready):
            mean = stats[1:52] / n
            var = (stats[52:103] / n - mean.pow(2)).clamp(min=0)  # per coordinate, around the batch mean
            if self.cfg.pose_anchor == "points":
                self.hpe_root_xy.copy_(mean[:2])
                if stats[105] > 0:  # the pelvis x, y relative to the cloud centre instead
                    mean[:2] = stats[106:108] / stats[105]
                    var[:2] = (stats[108:110] / stats[105] - mean[:2].pow(2)).clamp(min=0)
            self.hpe_mean.copy_(mean)
            self.hpe_scale.copy_(pose_spread(var))
            self.hpe_stats_ready.fill_(True)
        self.blockage_counts += stats[103:105].round().long()

    @torch.no_grad()
    def refit_pose_stats(self, goal: torch.Tensor) -> torch.Tensor:
        """Pose targets (N, 51) of :meth:`pose_goal` under the current statistics → the same poses' targets
        under statistics refitted to all N rows (``hpe_mean`` and ``hpe_scale`` are replaced). The head probe
        calls it with every training pose it read: the first batch with poses holds a few frames of one or
        two sequences, and on the demo its spread of the pelvis y about the cloud centre ranged from 0.021 m
        to 0.42 m between seeds; at 0.021 the pose loss started near 49 against 0.85, drowned the other
        tasks' gradients in the shared layers, and HAR collapsed to one class."""
        scale, mean = self.pose_scale().double().cpu(), self.hpe_mean.double().cpu()
        parts = goal.double().cpu() * scale + mean  # pose parts (pelvis x, y relative to the anchor)
        new_mean = parts.mean(0)
        var = parts.var(0, unbiased=False)
        self.hpe_mean.copy_(new_mean.to(self.hpe_mean))
        self.hpe_scale.copy_(pose_spread(var).to(self.hpe_scale))
        return ((parts - new_mean) / self.pose_scale().double().cpu()).to(goal)

    def pose_anchor_xy(self, batch: dict, rows: torch.Tensor) -> torch.Tensor | None:
        """(rows, 2): the cloud centre of each row, the mean training pelvis x, y where the row has no point;
        None without the anchor."""
        if self.cfg.pose_anchor == "none":
            return None
        centre, found = cloud_centre_xy(batch)
        pick = rows.to(centre.device)
        centre, found = centre[pick].to(self.hpe_root_xy.device), found[pick].to(self.hpe_root_xy.device)
        return torch.where(found[:, None], centre, self.hpe_root_xy)

    def pose_goal(self, keypoints: torch.Tensor, anchor: torch.Tensor | None) -> torch.Tensor:
        """(N, 51) keypoints in metres → the head's target: pose parts (minus the anchor from the pelvis x, y)
        minus their training mean, in units of their spread."""
        parts = pose_parts(keypoints.float())
        if anchor is not None:
            parts = torch.cat([parts[:, :2] - anchor, parts[:, 2:]], 1)
        return (parts - self.hpe_mean) / self.pose_scale()

    def pose_output(self, out: torch.Tensor, anchor: torch.Tensor | None) -> torch.Tensor:
        """Inverse of :meth:`pose_goal`: the head's output → keypoints in metres (float32)."""
        parts = self.hpe_mean + out.float() * self.pose_scale()
        if anchor is not None:
            parts = torch.cat([parts[:, :2] + anchor, parts[:, 2:]], 1)
        return pose_from_parts(parts)

    def pose_scale(self) -> torch.Tensor:
        """The spread of each of the 51 pose parts: the pelvis per axis, then every joint's per-axis one."""
        return torch.cat([self.hpe_scale[:3], self.hpe_scale[3:].repeat(16)])

    def pos_weight(self) -> torch.Tensor:
        """negatives / positives among the blockage labels seen (1 before any positive), at most 20."""
        neg, pos = self.blockage_counts.double()
        return (neg / pos).clamp(1.0, 20.0).float() if pos > 0 else torch.ones((), device=neg.device)

    @staticmethod
    def state_target(batch: dict, rows: torch.Tensor) -> torch.Tensor:
        """Frame t's LoS state (1 blocked, 0 clear, -1 not recorded) of the selected blockage rows: a training
        target of the state head, never an input."""
        if "blocked_now" not in batch:
            return torch.full((int(rows.sum()),), -1.0)
        return batch["blocked_now"][rows.to(batch["blocked_now"].device)].float()

    @staticmethod
    def target(task: str, batch: dict, rows: torch.Tensor) -> torch.Tensor:
        if task == "beam":
            return batch["beam_label"][rows]
        if task == "har":
            return batch["activity"][rows]
        if task == "hpe":
            return batch["keypoints"][rows].reshape(int(rows.sum()), -1)
        return batch["blockage"][rows].float()
