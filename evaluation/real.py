"""Real data: DeepSense 6G scenario 5 (GPS → beam, the official train/val/test CSVs of the development set)
from ``../shared/data/deepsense/scenario5`` when it is there. The project's stage-two model (GPS is the only
modality present) trained on the train split, next to a kNN-on-GPS baseline tuned on val and the published
position-only baseline of the challenge."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from airbind.paths import build_once, cache_dir
from evaluation.common import EvalConfig, finetune_checkpoint, markdown_table, write_report
from evaluation.training import base_config, budgeted, train_or_reuse
from finetune.metrics import majority_class, power_loss_db, topk_accuracy

# Published position-only baseline of the DeepSense 6G beam-prediction challenge, scenario 5 test set
# (cited, not measured here).
PUBLISHED = {"top1": 0.286, "top3": 0.575}


def default_root() -> Path:
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "deepsense" / "scenario5"


def scenario5_shards(root: Path) -> Path:
    """Shards of the official split of ``root`` (written once into the cache)."""
    from shards.write import WriteConfig, write_dataset
    digest = hashlib.sha256(f"{root.resolve()}shuffled".encode()).hexdigest()[:10]
    return build_once(cache_dir() / "shards" / f"scenario5-{digest}", "report.json",
                      lambda tmp: write_dataset(WriteConfig("deepsense", root, tmp, split="official", progress=False)))


def gps_beam(dirs: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(east/north metres, 0-based beam label, 64-beam power) of every sample."""
    from shards.stream import StreamConfig, make_loader
    xs, ys, ps = [], [], []
    for batch in make_loader(dirs, StreamConfig(batch_size=256, always=("gps", "beam"))):
        xs.append(batch["gps"][:, :2].numpy())
        ys.append(batch["beam_label"].numpy())
        ps.append(batch["beam"].numpy())
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ps)


def knn_scores(xtr, ytr, xte, k: int) -> np.ndarray:
    """Class scores (n, 64) of a distance-weighted kNN on position."""
    from sklearn.neighbors import KNeighborsClassifier
    clf = KNeighborsClassifier(n_neighbors=min(k, len(xtr)), weights="distance").fit(xtr, ytr)
    scores = np.zeros((len(xte), 64))
    scores[:, clf.classes_] = clf.predict_proba(xte)
    return scores


def beam_metrics(scores: np.ndarray, labels: np.ndarray, power: np.ndarray) -> dict[str, float]:
    out = {f"top{k}": topk_accuracy(scores, labels, k) for k in (1, 3, 5)}
    out["power_loss_db"] = power_loss_db(scores.argmax(1), power)
    return out


def run_real(ev: EvalConfig, root: Path | None = None) -> dict[str, Any] | None:
    root = Path(root) if root else default_root()
    if not (root / "scenario5_dev_train.csv").is_file():
        print(f"real data: {root} not found, skipped")
        return None
    shards = scenario5_shards(root)
    xtr, ytr, _ = gps_beam([shards / "train"])
    xva, yva, pva = gps_beam([shards / "val"])
    xte, yte, pte = gps_beam([shards / "test"])
    ks = (1, 3, 5, 10, 20, 40)
    val_top1 = {k: topk_accuracy(knn_scores(xtr, ytr, xva, k), yva, 1) for k in ks}
    best_k = max(ks, key=lambda k: val_top1[k])
    rows = {f"kNN on GPS (k={best_k}, chosen on val)": beam_metrics(knn_scores(xtr, ytr, xte, best_k), yte, pte)}
    from finetune.predict import evaluate_checkpoint
    base = base_config(finetune_checkpoint(ev))
    for name, body in (("airbind stage two (GPS only, LLM backbone)", "llm"), ("airbind MLP (GPS only)", "mlp")):
        cfg = budgeted(base, ev, Path(ev.work) / "real" / body, data=[str(shards)], encoders=None,
                       steps_per_epoch=max(1, ev.real_steps // ev.epochs), model=dict(tasks=["beam"], body=body))
        metrics, _ = evaluate_checkpoint(train_or_reuse(cfg), [shards / "test"], None)
        rows[name] = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("beam/") and "/gate/" not in k}
    majority = int(majority_class(ytr))  # the same trivial classifier as the twin's baselines
    rows["majority beam of train"] = beam_metrics(np.eye(64)[np.full(len(yte), majority)], yte, pte)
    data = {"root": str(root), "samples": {"train": len(ytr), "val": len(yva), "test": len(yte)},
            "knn_val_top1": {str(k): v for k, v in val_top1.items()}, "test": rows, "published_position_only": PUBLISHED}
    md = (f"## Real DeepSense 6G scenario 5: GPS → beam (official split, test {len(yte)} samples)\n\n"
          + markdown_table(["model", "top-1", "top-3", "top-5", "power loss dB"],
                           [[n, r.get("top1"), r.get("top3"), r.get("top5"), r.get("power_loss_db")] for n, r in rows.items()]
                           + [["published position-only baseline (cited)", PUBLISHED["top1"], PUBLISHED["top3"], None, None]]))
    write_report(Path(ev.out), "real_scenario5", data, md)
    return data
