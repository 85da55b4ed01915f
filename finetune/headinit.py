"""Task heads initialised by a linear probe before fine-tuning (LP-FT: Kumar et al., "Fine-Tuning can Distort
Pretrained Features and Underperform Out-of-Distribution", ICLR 2022).

Stage two starts from trained encoders and a trained backbone, but every head (the inputs of Eq. 14) starts
at random, and with a random head the first steps' gradients mostly move the features towards whatever the
head happens to read. So before the first step, the model reads ``batches`` training batches (no
gradients; one at a time, keeping only each head's inputs), and each task's head (``LayerNorm -> Linear``)
gets the linear map fitted to its inputs, in float64 on the CPU:

- ``ce`` tasks (beam, HAR): multinomial logistic regression (L-BFGS) with an L2 penalty on weights and
  biases (the bias is penalised too, so a class the probe rows lack keeps a finite logit that fine-tuning
  can still raise);
- ``bce`` (blockage): logistic regression weighting the positives as the loss does (negatives / positives
  among the probe rows); the state head (``ModelConfig.blockage_state``) gets three unweighted ones, as its
  loss is: frame t's state on the rows that record it (on the state head's input, frame t's beam embedding,
  where the task reads frame t's powers), the label on the rows blocked at t, the label on the clear ones
  (:func:`fit_state_head`);
- ``mse`` (pose): ridge regression on the normalised pose parts the loss compares.

Each penalty is chosen by a 3-fold cross-validation that holds out whole sequences, on the held-out loss:
with more features (the backbone's width) than probe rows the rows are separable, and a weakly penalised
fit (scikit-learn's C = 1) starts fine-tuning over-confident (on the demo: HAR losses of 4.3 and 4.7 at
steps 10 and 20, beam 5.4 at step 20, above the ln 27 = 3.3 and ln 64 = 4.2 of a uniform guess). The
logistic fits are compared after temperature scaling (Guo et al., "On Calibration of Modern Neural
Networks", ICML 2017): each penalty's held-out logits get the one scale that minimises their loss, and the
head starts from the chosen fit times its scale. Uncalibrated, a penalty strong enough to be calibrated can
win over a weaker, better-ranking one: on the seed-3 stage-one checkpoint of the 16-subject twin the HAR
fits held out 2-9 % accuracy (chance 3.7 %), each above the ln 27 of a uniform guess, so the strongest
penalty won and fine-tuning started from a head near zero, whose HAR loss stayed near ln 27 for all 150
steps (HAR 0.075 on validation). Calibrated, the weakest penalty's fit (8.8 % held out) at scale 0.12 holds
out 3.19 nats, the logged HAR losses fall to 2.45-2.74 over the last 30 steps, and the run ends at HAR 0.106.

The probe reads the LayerNorm's output standardised per channel over the probe rows, and that scaling is
folded into the Linear weights, so the model's layout does not change. Rows come from every rank (padded
``all_gather``) in rank order, and every rank fits the same heads from them. The first probe batch is read
in training mode, so it is the batch that fixes the feature standardisation and label statistics (as the first
training batch otherwise does); the probe rows are read in evaluation mode (no modality dropout). The pose
statistics are then refitted to every pose the probe read (:meth:`MMSenseModel.refit_pose_stats`): one
batch's few sequences can put the pelvis spread near its floor."""
from __future__ import annotations

import itertools
import zlib
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from finetune.model import MMSenseModel
from finetune.significance import sequence_of


def _gather_rows(x: torch.Tensor, world: int, device: torch.device) -> torch.Tensor:
    """``x`` (n, ...) of every rank, concatenated in rank order on the CPU (ranks may hold different n);
    the collectives run on ``device`` (NCCL needs CUDA tensors)."""
    if world == 1:
        return x
    n = torch.tensor([len(x)], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    torch.distributed.all_gather(sizes, n)
    most = int(max(int(s) for s in sizes))
    padded = torch.zeros((most, *x.shape[1:]), dtype=x.dtype, device=device)
    padded[:len(x)] = x.to(device)
    parts = [torch.zeros_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([p[:int(s)].cpu() for p, s in zip(parts, sizes)])


def standardise(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel mean and spread of ``z`` (spread floored at a thousandth of its mean) and ``z`` scaled."""
    mean, std = z.mean(0), z.std(0)
    std = std.clamp(min=1e-3 * float(std.mean()) + 1e-12)
    return (z - mean) / std, mean, std


def _loss(logits: torch.Tensor, y: torch.Tensor, pos_weight: float | None, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy (``pos_weight`` None: multinomial) or binary cross-entropy weighting the positives."""
    if pos_weight is None:
        return F.cross_entropy(logits, y, reduction=reduction)
    return F.binary_cross_entropy_with_logits(logits[:, 0], y.to(logits.dtype), reduction=reduction,
                                              pos_weight=torch.tensor(pos_weight, dtype=logits.dtype))


def fit_logistic(s: torch.Tensor, y: torch.Tensor, classes: int, pos_weight: float | None = None,
                 penalty: float | None = None, iters: int = 200,
                 start: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (classes, k) and biases of a logistic regression on ``s``: multinomial for ``classes`` > 1 labels
    ``y`` (int), binary (one output) with ``pos_weight`` for labels 0/1; mean loss + (penalty / 2) (|W|² + |b|²),
    ``penalty`` 1 / n by default (scikit-learn's C = 1); L-BFGS from ``start`` (zeros by default)."""
    n, k = s.shape
    lam = 1.0 / n if penalty is None else penalty
    if start is None:
        start = (torch.zeros(classes, k, dtype=s.dtype), torch.zeros(classes, dtype=s.dtype))
    w0, b0 = start
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, tolerance_grad=1e-7, tolerance_change=1e-10,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _loss(s @ w.T + b, y, pos_weight) + 0.5 * lam * (w.pow(2).sum() + b.pow(2).sum())
        loss.backward()
        return loss
    opt.step(closure)
    return w.detach(), b.detach()


RIDGE_ALPHAS = tuple(10.0 ** (e / 2) for e in range(9))  # 1 ... 10^4
LOGISTIC_PENALTIES = tuple(10.0 ** (1.5 - e / 2) for e in range(10))  # 31.6 ... 10^-3, strongest first
FOLDS = 3
CV_ITERS = 50  # L-BFGS iterations of a cross-validation fit (warm-started along the path; the final fit takes 200)


def group_folds(groups: torch.Tensor, folds: int = FOLDS) -> list[torch.Tensor]:
    """Held-out row masks of a ``folds``-fold cross-validation that keeps each group (a sequence id per row)
    whole, groups dealt to folds in a seeded random order; none with fewer than 2 groups. Frames of one
    sequence are near-duplicates, so a split by frames would reward the weakest penalty."""
    ids = torch.unique(groups)
    if len(ids) < 2:
        return []
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))
    fold_of = {int(g): i % folds for i, g in enumerate(ids[order])}
    fold = torch.tensor([fold_of[int(g)] for g in groups])
    return [fold == f for f in range(min(folds, len(ids)))]


def ridge_path(s: torch.Tensor, y: torch.Tensor, alphas: tuple[float, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Ridge regressions of ``y`` (n, m) on ``s`` (n, k), one per alpha (from one eigendecomposition):
    weights (m, k) and biases, with ``s`` and ``y`` centred over the rows."""
    sm, ym = s.mean(0), y.mean(0)
    sc = s - sm
    lam, vec = torch.linalg.eigh(sc.T @ sc)
    proj = vec.T @ (sc.T @ (y - ym))
    out = []
    for a in alphas:
        w = (vec @ (proj / (lam.clamp(min=0) + a)[:, None])).T
        out.append((w, ym - w @ sm))
    return out


def choose_alpha(s: torch.Tensor, y: torch.Tensor, groups: torch.Tensor, alphas: tuple[float, ...] = RIDGE_ALPHAS,
                 folds: int = FOLDS) -> float:
    """The ridge alpha of lowest squared error on held-out groups (:func:`group_folds`); the middle of
    ``alphas`` with fewer than 2 groups."""
    masks = group_folds(groups, folds)
    if not masks:
        return alphas[len(alphas) // 2]
    err = torch.zeros(len(alphas), dtype=s.dtype)
    for held in masks:
        for i, (w, b) in enumerate(ridge_path(s[~held], y[~held], alphas)):
            err[i] += (s[held] @ w.T + b - y[held]).pow(2).sum()
    return alphas[int(err.argmin())]


def fit_logit_scale(logits: torch.Tensor, y: torch.Tensor, pos_weight: float | None = None,
                    most: float = 100.0, steps: int = 40) -> float:
    """Temperature scaling (Guo et al., ICML 2017): the factor a in [0, ``most``] (one over the temperature)
    that minimises the mean loss of ``a * logits`` on labels ``y``. The loss is convex in a, so its slope
    rises with a: bisection on the slope's sign. 0: the logits rank no better than chance, and the calibrated
    prediction is flat."""
    def slope(a: float) -> float:  # d/da of the mean loss of a * logits
        if pos_weight is None:  # cross-entropy: E_p[z] - z_y
            z = logits
            return float(((torch.softmax(a * z, 1) * z).sum(1) - z.gather(1, y[:, None])[:, 0]).mean())
        z, t = logits[:, 0], y.to(logits.dtype)  # weighted binary cross-entropy
        p = torch.sigmoid(a * z)
        return float((z * ((1 - t) * p - pos_weight * t * (1 - p))).mean())
    if slope(0.0) >= 0:
        return 0.0
    lo, hi = 0.0, 1.0
    while slope(hi) < 0 and hi < most:  # the minimum lies beyond hi
        lo, hi = hi, min(2 * hi, most)
    if slope(hi) < 0:
        return most
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


def held_out_logits(s: torch.Tensor, y: torch.Tensor, groups: torch.Tensor, classes: int,
                    pos_weight: float | None = None, penalties: tuple[float, ...] = LOGISTIC_PENALTIES,
                    folds: int = FOLDS) -> torch.Tensor | None:
    """Logits (len(penalties), rows, classes) of every row from the logistic fit of each penalty on the other
    folds (:func:`group_folds`: each row held out once; each fold's fits warm-started along the path, strongest
    penalty first); None with fewer than 2 groups."""
    masks = group_folds(groups, folds)
    if not masks:
        return None
    out = torch.zeros(len(penalties), len(s), classes, dtype=s.dtype)
    for held in masks:
        start = None
        for i, lam in enumerate(penalties):
            start = fit_logistic(s[~held], y[~held], classes, pos_weight, lam, CV_ITERS, start)
            out[i, held] = s[held] @ start[0].T + start[1]
    return out


def choose_penalty(s: torch.Tensor, y: torch.Tensor, groups: torch.Tensor, classes: int,
                   pos_weight: float | None = None, penalties: tuple[float, ...] = LOGISTIC_PENALTIES,
                   folds: int = FOLDS) -> tuple[float, float]:
    """The logistic penalty (strongest first in ``penalties``) of lowest cross-entropy on held-out groups
    (:func:`held_out_logits`) after temperature scaling, and its logit scale (:func:`fit_logit_scale` on all
    its held-out logits). The held-out loss, not the accuracy: the head starts fine-tuning from this fit,
    and an over-confident one starts it with large, wrong gradients. Calibrated, because the scale fixes the
    confidence and the loss then rates how well the fit ranks the classes of unseen sequences. The middle of
    ``penalties`` at scale 1 with fewer than 2 groups."""
    held_logits = held_out_logits(s, y, groups, classes, pos_weight, penalties, folds)
    if held_logits is None:
        return penalties[len(penalties) // 2], 1.0
    scales = [fit_logit_scale(lg, y, pos_weight) for lg in held_logits]
    with torch.no_grad():
        err = torch.stack([_loss(a * lg, y, pos_weight) for a, lg in zip(scales, held_logits)])
    best = int(err.argmin())
    return penalties[best], scales[best]


def fit_ridge(s: torch.Tensor, y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge regression of ``y`` (n, m) on ``s`` (n, k): weights (m, k) and biases."""
    return ridge_path(s, y, (alpha,))[0]


@torch.no_grad()
def set_linear(head: torch.nn.Sequential, w: torch.Tensor, b: torch.Tensor, mean: torch.Tensor,
               std: torch.Tensor) -> None:
    """Load ``w``, ``b`` fitted on (LayerNorm output - mean) / std into the head's Linear."""
    linear = head[1]
    w_in = w / std
    linear.weight.copy_(w_in.to(linear.weight))
    linear.bias.copy_((b - w_in @ mean).to(linear.bias))


def positive_weight(y: torch.Tensor) -> float:
    """negatives / positives of 0/1 labels ``y``, within the bounds of :meth:`MMSenseModel.pos_weight`: the
    weight the blockage loss gives its positives once it has counted labels like these (the model's running
    count holds only the first batch's when the probe runs)."""
    pos = float(y.sum())
    return min(max((len(y) - pos) / pos, 1.0), 20.0)


def fit_calibrated(s: torch.Tensor, y: torch.Tensor, groups: torch.Tensor, classes: int,
                   pos_weight: float | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """The logistic fit of the penalty :func:`choose_penalty` picks, times its logit scale, and both."""
    lam, scale = choose_penalty(s, y, groups, classes, pos_weight)
    w, b = fit_logistic(s, y, classes, pos_weight, lam)
    return scale * w, scale * b, {"penalty": lam, "logit_scale": scale}


def fit_binary(s: torch.Tensor, y: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """An unweighted logistic regression (1, k) of 0/1 labels ``y`` on ``s`` (penalty and temperature chosen
    as for the other heads), or, where ``y`` holds one class (or none), the constant log-odds of its rate
    smoothed by half a sample of each class."""
    pos = float(y.sum())
    if not 0 < pos < len(y):
        rate = (pos + 0.5) / (len(y) + 1.0)
        return s.new_zeros(1, s.shape[1]), s.new_full((1,), float(torch.logit(torch.tensor(rate)))), {"constant": 1.0}
    return fit_calibrated(s, y, groups, 1, 1.0)


def fit_state_head(s: torch.Tensor, y: torch.Tensor, state: torch.Tensor, groups: torch.Tensor,
                   s_state: torch.Tensor | None = None) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], dict[str, float]]:
    """The fits (weights (1, k), bias) of a, c and o of the state blockage head
    (:func:`finetune.model.blockage_mixture`): a on frame t's state where recorded, from ``s_state`` (the state
    head's input; default ``s``), c on the labels of the rows blocked at t, o on those of the clear rows. With
    no state recorded, a is 0 (σ = 1/2) and c and o both the fit on every label, so p is that fit."""
    s_state = s if s_state is None else s_state
    known = state >= 0
    if not bool(known.any()):
        w, b, info = fit_binary(s, y, groups)
        return [(s_state.new_zeros(1, s_state.shape[1]), s_state.new_zeros(1)), (w, b), (w, b)], info
    parts = [fit_binary(x[m], v[m], groups[m]) for x, m, v in ((s_state, known, state), (s, state == 1, y), (s, state == 0, y))]
    info = {f"{name}_{k}": v for name, (_, _, i) in zip(("state", "blocked", "clear"), parts) for k, v in i.items()}
    return [(w, b) for w, b, _ in parts], info


def normed(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    """``x`` through a head's LayerNorm as it stands, in float64 on the CPU."""
    with torch.no_grad():
        return F.layer_norm(x.double(), norm.normalized_shape, norm.weight.double().cpu(), norm.bias.double().cpu(),
                            norm.eps)


def fit_head(model: MMSenseModel, task: str, x: torch.Tensor, label: torch.Tensor,
             groups: torch.Tensor, state: torch.Tensor | None = None, state_x: torch.Tensor | None = None
             ) -> dict[str, float]:
    """Fit ``task``'s head to head inputs ``x``, labels (for the pose: the head's target, the model's
    ``goal``) and sequence ids ``groups`` (rows), and for the state blockage head frame t's ``state``
    (-1 where not recorded) and, with ``model.state_head``, that head's inputs ``state_x``; returns the
    penalty and logit scale (logistic) or the alpha (ridge) chosen, or ``skipped`` = 1 when the rows cannot be
    fitted."""
    kind = model.specs[task].kind
    if len(x) < 2:
        return {"skipped": 1.0}
    head = model.heads[task]
    s, mean, std = standardise(normed(x, head[0]))
    if kind in ("ce", "bce"):
        y = label.long() if kind == "ce" else label.double()
        if (len(torch.unique(y)) < 2) if kind == "ce" else not 0 < float(y.sum()) < len(y):
            return {"skipped": 1.0}  # one class only
    if kind == "bce" and model.cfg.blockage_state:
        state = torch.full((len(x),), -1.0) if state is None else state
        s_a = None
        if model.state_head is not None:
            s_a, mean_a, std_a = standardise(normed(state_x, model.state_head[0]))
        parts, info = fit_state_head(s, y, state.double(), groups, s_a)
        if model.state_head is not None:
            set_linear(model.state_head, *parts[0], mean_a, std_a)
            parts = parts[1:]
        w, b = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    elif kind in ("ce", "bce"):
        classes, pw = (model.specs[task].outputs, None) if kind == "ce" else (1, positive_weight(y))
        w, b, info = fit_calibrated(s, y, groups, classes, pw)
    else:  # the pose parts in units of their spread around their mean, as the loss compares them
        goal = label.double()  # already the head's target (MMSenseModel.pose_goal), collected by the probe
        alpha = choose_alpha(s, goal, groups)
        w, b = fit_ridge(s, goal, alpha)
        info = {"alpha": alpha}
    set_linear(head, w, b, mean, std)
    return info


def init_heads_by_probe(model: MMSenseModel, batches: Iterable[dict], reduce: Callable | None = None,
                        world: int = 1, device: torch.device | None = None) -> dict[str, float]:
    """Fit every task head to the model's head inputs on ``batches`` (already on the model's device; each rank
    its own; any iterable, read once, so a loader's batches need not be held in memory together). ``reduce``
    sums over ranks (the training-mode pass of the first batch needs it, as a training step does). Returns
    rows per task (``head_init/<task>/rows``), the penalty and logit scale or alpha chosen, and skipped tasks
    (``.../skipped`` = 1)."""
    was_training = model.training
    inputs: dict[str, list[torch.Tensor]] = {t: [] for t in model.cfg.tasks}
    hooks = [model.heads[t].register_forward_pre_hook(
        lambda _m, args, t=t: inputs[t].append(args[0].detach().float().cpu())) for t in model.cfg.tasks]
    labels: dict[str, list[torch.Tensor]] = {t: [] for t in model.cfg.tasks}
    groups: dict[str, list[torch.Tensor]] = {t: [] for t in model.cfg.tasks}
    states: dict[str, list[torch.Tensor]] = {t: [] for t in model.cfg.tasks}  # the state blockage head's
    state_inputs: list[torch.Tensor] = []  # the inputs of model.state_head (frame t's beam embedding)
    if model.state_head is not None:
        hooks.append(model.state_head.register_forward_pre_hook(
            lambda _m, args: state_inputs.append(args[0].detach().float().cpu())))
    try:
        with torch.no_grad():
            it = iter(batches)
            first = next(it, None)
            if world > 1 and reduce is not None:  # the training-mode pass sums over ranks: all or none take it
                have = int(reduce(torch.tensor([float(first is not None)], device=device)).item())
                if 0 < have < world:
                    raise ValueError(f"head probe: {world - have} of {world} ranks read no training batch (fewer "
                                     "training samples than ranks?); pass --head-init none")
            if first is not None:
                model.train()
                model(first, reduce=reduce)  # fixes the feature and label statistics, like a first step
                for t in inputs:
                    inputs[t].clear()
                state_inputs.clear()
            model.eval()
            for batch in itertools.chain([] if first is None else [first], it):
                _, results = model(batch)
                seq = torch.tensor([zlib.crc32(sequence_of(k).encode()) for k in batch["key"]], dtype=torch.long)
                for t, r in results.items():
                    labels[t].append(r.get("goal", r["label"]).detach().float().cpu())  # pose: the head's target
                    groups[t].append(seq[r["rows"].cpu()])
                    if "state" in r:
                        states[t].append(r["state"].detach().float().cpu())
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out: dict[str, float] = {}
    for t in model.cfg.tasks:
        x = torch.cat(inputs[t]) if inputs[t] else torch.zeros(0, model.heads[t][0].normalized_shape[0])
        y = torch.cat(labels[t]) if labels[t] else torch.zeros((0, 51) if model.specs[t].kind == "mse" else 0)
        g = torch.cat(groups[t]) if groups[t] else torch.zeros(0, dtype=torch.long)
        z = torch.cat(states[t]) if states[t] else None
        x, y, g = (_gather_rows(v, world, device or torch.device("cpu")) for v in (x, y, g))
        xs = None
        if model.specs[t].kind == "bce" and model.cfg.blockage_state:  # every rank gathers, with rows or not
            z = _gather_rows(z if z is not None else torch.zeros(0), world, device or torch.device("cpu"))
            if model.state_head is not None:
                xs = torch.cat(state_inputs) if state_inputs else torch.zeros(0, model.cfg.binding.d)
                xs = _gather_rows(xs, world, device or torch.device("cpu"))
        if model.specs[t].kind == "mse" and len(y) > 1:  # every rank gathered the same rows: the same statistics
            y = model.refit_pose_stats(y)
            out.update({f"head_init/{t}/pelvis_spread_{a}_m": float(v) for a, v in zip("xyz", model.hpe_scale[:3])})
        out[f"head_init/{t}/rows"] = float(len(x))
        out.update({f"head_init/{t}/{k}": v for k, v in fit_head(model, t, x, y, g, z, xs).items()})
    return out
