"""How sure is a model-vs-baseline difference? A paired bootstrap over sequences.

Frames of one sequence (a vehicle's pass, a subject's activity) are strongly correlated, so a bootstrap that
resamples frames would give intervals far too narrow. Here whole sequences (the key ``{source}/{scenario or
env}/{seq}/{index}`` without its index) are resampled with replacement (a cluster bootstrap, Davison & Hinkley
1997, Sec. 3.8), and every statistic is the mean over the resampled frames. The model and its trivial
baseline are scored on the same frames, so their difference is paired. The interval covers the variation
between the split's sequences only: with one held-out subject or street it says nothing about another one.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from finetune.metrics import balanced_accuracy, majority_class, mpjpe_per_frame_mm, pa_mpjpe_per_frame_mm

N_BOOT = 2000
LEVEL = 0.95
MIN_SEQUENCES = 10  # below this a bootstrap over sequences says little: intervals are NaN


def sequence_of(key: str) -> str:
    """The sequence a sample key belongs to: the key without its last (frame index) part."""
    return str(key).rsplit("/", 1)[0]


def _clusters(keys: np.ndarray) -> tuple[np.ndarray, int]:
    _, idx = np.unique([sequence_of(k) for k in keys], return_inverse=True)
    return idx, int(idx.max()) + 1 if len(idx) else 0


def _resampled_weights(n_clusters: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_clusters): how often each sequence is drawn in each bootstrap replicate."""
    draws = np.random.default_rng(seed).integers(0, n_clusters, (n_boot, n_clusters))
    return np.stack([np.bincount(d, minlength=n_clusters) for d in draws])


def paired_difference(model: np.ndarray, base: np.ndarray, keys: np.ndarray, n_boot: int = N_BOOT,
                      seed: int = 0, level: float = LEVEL) -> dict[str, float]:
    """Mean of ``model - base`` per frame, with its percentile interval from the cluster bootstrap (NaN with
    fewer than :data:`MIN_SEQUENCES` sequences)."""
    cl, n_cl = _clusters(keys)
    diff = np.asarray(model, float) - np.asarray(base, float)
    if n_cl < MIN_SEQUENCES:
        return {"diff": float(diff.mean()), "ci_low": float("nan"), "ci_high": float("nan"), "sequences": float(n_cl)}
    sums, counts = np.bincount(cl, diff, n_cl), np.bincount(cl, minlength=n_cl).astype(float)
    w = _resampled_weights(n_cl, n_boot, seed)
    reps = (w @ sums) / np.maximum(w @ counts, 1)
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return {"diff": float(diff.mean()), "ci_low": float(lo), "ci_high": float(hi), "sequences": float(n_cl)}


def _auc(prob: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count one half), as sklearn's roc_auc_score gives it."""
    ranks = rankdata(prob)
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def two_class_interval(stat, score: np.ndarray, labels: np.ndarray, keys: np.ndarray, n_boot: int = N_BOOT,
                       seed: int = 0, level: float = LEVEL) -> dict[str, float]:
    """Percentile interval of ``stat(score, labels)`` (a statistic of both classes: ROC AUC, balanced
    accuracy) under the cluster bootstrap; replicates with one class are skipped; NaN when fewer than half of
    them have both classes, or with fewer than :data:`MIN_SEQUENCES` sequences."""
    cl, n_cl = _clusters(keys)
    if n_cl < MIN_SEQUENCES:
        return {"ci_low": float("nan"), "ci_high": float("nan")}
    members = [np.flatnonzero(cl == c) for c in range(n_cl)]
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        rows = np.concatenate([members[c] for c in rng.integers(0, n_cl, n_cl)])
        if len(np.unique(labels[rows])) == 2:
            reps.append(stat(score[rows], labels[rows]))
    if len(reps) < n_boot / 2:
        return {"ci_low": float("nan"), "ci_high": float("nan")}
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return {"ci_low": float(lo), "ci_high": float(hi)}


def auc_interval(prob: np.ndarray, labels: np.ndarray, keys: np.ndarray, n_boot: int = N_BOOT, seed: int = 0,
                 level: float = LEVEL) -> dict[str, float]:
    """Percentile interval of the ROC AUC under the cluster bootstrap (:func:`two_class_interval`)."""
    return two_class_interval(_auc, prob, labels, keys, n_boot, seed, level)


def per_frame_scores(task: str, output: np.ndarray, label: np.ndarray, train_labels: list) -> dict[str, tuple]:
    """Per frame, (model, trivial baseline) of each headline metric: top-1 hit for beam / HAR, correct
    decision for blockage (majority class of the training labels as baseline), MPJPE and PA-MPJPE in mm for
    pose (the mean training pose, aligned to each true pose for PA)."""
    if task in ("beam", "har", "blockage"):
        major = majority_class(train_labels)
        pred = output.argmax(1) if task != "blockage" else (output.reshape(-1) >= 0).astype(int)
        name = "accuracy" if task == "blockage" else "top1"
        return {name: ((pred == label).astype(float), (label == major).astype(float))}
    pred, true = output.reshape(-1, 17, 3), label.reshape(-1, 17, 3)
    mean = np.broadcast_to(np.asarray(train_labels).reshape(-1, 51).mean(0).reshape(17, 3), true.shape)
    return {"mpjpe_mm": (mpjpe_per_frame_mm(pred, true), mpjpe_per_frame_mm(mean, true)),
            "pa_mpjpe_mm": (pa_mpjpe_per_frame_mm(pred, true), pa_mpjpe_per_frame_mm(mean, true))}


def recorded_state(a: dict[str, np.ndarray]) -> np.ndarray | None:
    """Frame t's link state of every blockage frame (``blocked_now``), or None unless every frame records it."""
    now = a.get("blocked_now")
    return now if now is not None and len(now) and bool((now >= 0).all()) else None


def persistence_intervals(a: dict[str, np.ndarray], train_labels: list, n_boot: int = N_BOOT,
                          seed: int = 0) -> dict[str, float]:
    """Where every blockage frame records the link's state at frame t (:func:`recorded_state`): how far the
    persistence reference (frame t's own state as the answer) lies above the majority class, and the model
    from it, each with its interval. The first says how much room the split leaves a model that reads frame
    t's state perfectly but foresees no onset; on a split of few sequences it can itself be near zero."""
    now = recorded_state(a)
    if now is None:
        return {}
    model, major = per_frame_scores("blockage", a["output"], a["label"], train_labels)["accuracy"]
    persist = (now == a["label"]).astype(float)
    out = {}
    for name, (x, y) in {"persistence_minus_baseline": (persist, major),
                         "accuracy_minus_persistence": (model, persist)}.items():
        r = paired_difference(x, y, a["key"], n_boot, seed)
        out.update({f"blockage/{name}": r["diff"], f"blockage/{name}_ci_low": r["ci_low"],
                    f"blockage/{name}_ci_high": r["ci_high"]})
    return out


def compare_to_baselines(train_labels: dict[str, list], arrays: dict[str, dict[str, np.ndarray]],
                         n_boot: int = N_BOOT, seed: int = 0) -> dict[str, float]:
    """``{task}/{metric}_minus_baseline`` with ``_ci_low`` / ``_ci_high`` (95 %, bootstrap over sequences),
    ``{task}/sequences``, and ``blockage/auc_ci_low`` / ``_ci_high``, for every task with outputs, keys and
    training labels. Positive differences favour the model for accuracies, negative ones for errors."""
    out: dict[str, float] = {}
    for t, a in arrays.items():
        if not len(train_labels.get(t, [])) or "output" not in a or "key" not in a or not len(a["key"]):
            continue
        for name, (model, base) in per_frame_scores(t, a["output"], a["label"], train_labels[t]).items():
            r = paired_difference(model, base, a["key"], n_boot, seed)
            out[f"{t}/{name}_minus_baseline"] = r["diff"]
            out[f"{t}/{name}_minus_baseline_ci_low"] = r["ci_low"]
            out[f"{t}/{name}_minus_baseline_ci_high"] = r["ci_high"]
            out[f"{t}/sequences"] = r["sequences"]
        if t == "blockage":  # rare positives: the ranking (AUC) and the decision's balanced accuracy, 0.5 for
            # the majority class (or any constant), so the difference to the trivial baseline is BA - 0.5;
            # and the persistence reference where every frame records its state
            out.update(persistence_intervals(a, train_labels[t], n_boot, seed))
            labels, logit = a["label"].astype(int), a["output"].reshape(-1)
            for k, v in auc_interval(1.0 / (1.0 + np.exp(-logit)), labels, a["key"], n_boot, seed).items():
                out[f"blockage/auc_{k}"] = v
            if len(np.unique(labels)) == 2:
                decide = (logit >= 0).astype(int)
                out["blockage/balanced_accuracy_minus_baseline"] = balanced_accuracy(decide, labels) - 0.5
                ci = two_class_interval(balanced_accuracy, decide, labels, a["key"], n_boot, seed)
                for k, v in ci.items():
                    out[f"blockage/balanced_accuracy_minus_baseline_{k}"] = v - 0.5
    return out
