"""Cross-modal retrieval recall@k with faiss (exact inner product on L2-normalised embeddings)."""
from __future__ import annotations

import faiss
import numpy as np


def recall_at_k(queries: np.ndarray, database: np.ndarray, ks=(1, 5)) -> dict[int, float]:
    """Row i of ``queries`` should retrieve row i of ``database``; fraction found within the top k."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    db = np.ascontiguousarray(database, dtype=np.float32)
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(db)
    _, nn = index.search(q, max(ks))
    hit = nn == np.arange(len(q))[:, None]
    return {k: float(hit[:, :k].any(1).mean()) for k in ks}
