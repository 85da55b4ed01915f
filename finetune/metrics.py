"""Task metrics (the DESIGN.md task table): top-k and beam power loss, accuracy and macro-F1, MSE / MPJPE /
PA-MPJPE (Procrustes with scale), blockage accuracy / F1 / AUC."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    top = np.argsort(-scores, axis=1)[:, :k]
    return float((top == labels[:, None]).any(1).mean())


def power_loss_db(pred: np.ndarray, power: np.ndarray) -> float:
    """Mean of 10 log10(P_best / P_predicted) over samples (0 dB = always the best beam)."""
    picked = power[np.arange(len(pred)), pred]
    return float(np.mean(10 * np.log10(power.max(1) / np.maximum(picked, 1e-30))))


def macro_f1(pred: np.ndarray, labels: np.ndarray) -> float:
    return float(f1_score(labels, pred, average="macro", zero_division=0))


def majority_class(labels: np.ndarray | Sequence) -> Any:
    """The most frequent label (the trivial classifier's answer); first seen wins a tie."""
    return Counter(np.asarray(labels).reshape(-1).tolist()).most_common(1)[0][0]


def mpjpe_per_frame_mm(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-frame mean per-joint position error in millimetres; pred/true (N, 17, 3) in metres → (N,)."""
    return np.linalg.norm(pred - true, axis=-1).mean(-1) * 1000.0


def mpjpe_mm(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean per-joint position error in millimetres; pred/true (N, 17, 3) in metres."""
    return float(mpjpe_per_frame_mm(pred, true).mean())


def procrustes_align(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """pred (J, 3) aligned to true by the similarity transform (rotation, scale, translation) that minimises
    the squared error (Umeyama 1991)."""
    mu_p, mu_t = pred.mean(0), true.mean(0)
    p, t = pred - mu_p, true - mu_t
    u, s, vt = np.linalg.svd(p.T @ t)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.diag([1.0, 1.0, d])
    rot = u @ fix @ vt
    scale = (s * np.diag(fix)).sum() / max((p ** 2).sum(), 1e-12)
    return scale * p @ rot + mu_t


def pa_mpjpe_per_frame_mm(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-frame MPJPE after aligning each predicted pose to its true pose (:func:`procrustes_align`)."""
    aligned = np.stack([procrustes_align(p, t) for p, t in zip(pred, true)])
    return mpjpe_per_frame_mm(aligned, true)


def pa_mpjpe_mm(pred: np.ndarray, true: np.ndarray) -> float:
    return float(pa_mpjpe_per_frame_mm(pred, true).mean())


def balanced_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Mean of the recalls of the classes present: with two classes 0.5 for any constant decision (the
    majority class included)."""
    return float(np.mean([(pred[labels == c] == c).mean() for c in np.unique(labels)]))


def binary_metrics(prob: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    pred = (prob >= 0.5).astype(int)
    out = {"accuracy": float((pred == labels).mean()), "balanced_accuracy": balanced_accuracy(pred, labels),
           "f1": float(f1_score(labels, pred, zero_division=0))}
    out["auc"] = float(roc_auc_score(labels, prob)) if len(np.unique(labels)) == 2 else float("nan")
    return out


def task_metrics(task: str, outputs: np.ndarray, labels: np.ndarray, extra: np.ndarray | None = None) -> dict[str, float]:
    """Metrics of one task from its raw outputs (logits / keypoints / blockage logit)."""
    if task == "beam":
        pred = outputs.argmax(1)
        out = {f"top{k}": topk_accuracy(outputs, labels, k) for k in (1, 3, 5)}
        if extra is not None:
            out["power_loss_db"] = power_loss_db(pred, extra)
        return out
    if task == "har":
        pred = outputs.argmax(1)
        return {"top1": float((pred == labels).mean()), "macro_f1": macro_f1(pred, labels)}
    if task == "hpe":
        pred, true = outputs.reshape(-1, 17, 3), labels.reshape(-1, 17, 3)
        return {"mse": float(((pred - true) ** 2).mean()), "mpjpe_mm": mpjpe_mm(pred, true),
                "pa_mpjpe_mm": pa_mpjpe_mm(pred, true)}
    if task == "blockage":
        return binary_metrics(1.0 / (1.0 + np.exp(-outputs.reshape(-1))), labels.astype(int))
    raise KeyError(task)
