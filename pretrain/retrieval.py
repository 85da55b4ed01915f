"""Cross-modal retrieval recall@k with faiss (exact inner product on L2-normalised embeddings)."""
from __future__ import annotations

import faiss
import numpy as np

# the label that scores a retrieval of each anchor: (metric prefix, batch key). A vehicle scene's power vector by
# its best beam, a human frame's CSI by its activity; rows without the label carry -1
ANCHOR_LABELS = {"beam": ("beam", "beam_label"), "wifi": ("activity", "activity")}


def nearest(queries: np.ndarray, database: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` database rows with the largest inner product to each query (faiss, exact)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    db = np.ascontiguousarray(database, dtype=np.float32)
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(db)
    _, nn = index.search(q, min(k, len(db)))
    return nn


def recall_at_k(queries: np.ndarray, database: np.ndarray, ks=(1, 5)) -> dict[int, float]:
    """Row i of ``queries`` should retrieve row i of ``database``; fraction found within the top k."""
    hit = nearest(queries, database, max(ks)) == np.arange(len(queries))[:, None]
    return {k: float(hit[:, :k].any(1).mean()) for k in ks}


def label_recall_at_k(queries: np.ndarray, database: np.ndarray, labels: np.ndarray, ks=(1, 5)) -> dict[int, float]:
    """Fraction of queries whose top k database rows include one with the query's label (e.g. the same
    optimal beam). Consecutive frames of a pass share almost the same beam vector, so instance recall alone
    asks the model to tell apart near-duplicates; this asks whether it retrieves the right beam."""
    nn = nearest(queries, database, max(ks))
    hit = labels[nn] == labels[:, None]
    return {k: float(hit[:, :k].any(1).mean()) for k in ks}


def label_chance(labels: np.ndarray, k: int) -> float:
    """Expected label recall@k of a random ranking: P(at least one of k draws without replacement matches)."""
    n = len(labels)
    _, counts = np.unique(labels, return_counts=True)
    out = 0.0
    for c in counts:  # a query of this label: c - 1 other rows share it (itself counts too: it is in the db)
        miss = 1.0
        for j in range(min(k, n)):
            miss *= max(n - c - j, 0) / (n - j)
        out += c / n * (1.0 - miss)
    return out
