"""Linear probes (scikit-learn) on frozen features: logistic regression for classes, ridge for poses."""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler


def subset(labels: np.ndarray, fraction: float | None = None, shots: int | None = None, seed: int = 0) -> np.ndarray:
    """Indices of a seeded share ``fraction`` of the rows (at least 2), or ``shots`` rows per class."""
    rng = np.random.default_rng(seed)
    if shots is not None:
        picked = [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in np.unique(labels)]
        return np.sort(np.concatenate(picked))
    n = max(2, int(round(len(labels) * float(fraction))))
    return np.sort(rng.permutation(len(labels))[:n])


def probe_classifier(x_train, y_train, x_test, y_test) -> dict[str, float]:
    """Top-1 (and top-3 when there are more than 3 classes) of a logistic-regression probe."""
    if len(np.unique(y_train)) < 2:  # one class seen: the probe can only predict it
        pred = np.full(len(y_test), y_train[0])
        return {"top1": float((pred == y_test).mean())}
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(scaler.transform(x_train), y_train)
    proba = clf.predict_proba(scaler.transform(x_test))
    order = clf.classes_[np.argsort(-proba, axis=1)]
    out = {"top1": float((order[:, 0] == y_test).mean())}
    if len(clf.classes_) > 3:
        out["top3"] = float((order[:, :3] == y_test[:, None]).any(1).mean())
    return out


def probe_regressor(x_train, y_train, x_test, y_test, alpha: float = 1.0) -> dict[str, float]:
    """MPJPE and PA-MPJPE (mm) of a ridge probe predicting 17 x 3 keypoints (metres), and the PA-MPJPE of the
    mean training pose aligned to each test pose: the probe's PA-MPJPE below it means the features carry
    articulation, not only where the person stands."""
    from finetune.metrics import mpjpe_mm, pa_mpjpe_mm
    scaler = StandardScaler().fit(x_train)
    pred = Ridge(alpha=alpha).fit(scaler.transform(x_train), y_train).predict(scaler.transform(x_test))
    true = y_test.reshape(-1, 17, 3)
    mean = np.broadcast_to(y_train.reshape(-1, 17, 3).mean(0), true.shape)
    return {"mpjpe_mm": mpjpe_mm(pred.reshape(-1, 17, 3), true), "pa_mpjpe_mm": pa_mpjpe_mm(pred.reshape(-1, 17, 3), true),
            "baseline_pa_mpjpe_mm": pa_mpjpe_mm(mean, true)}
