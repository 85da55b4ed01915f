"""The future-blockage label of a frame t from the LoS states of the frames after it.

``within`` (the default): 1 when the link is blocked in any of the next Δ frames t+1..t+Δ. This is DeepSense
6G's "Future-Δ" blockage prediction (Charan and Alkhateeb, "Computer vision aided blockage prediction in
real-world millimeter wave deployments", GLOBECOM Wkshps 2022: blockages "happening within the future 0.1 s /
1 s"; Wu et al., IEEE OJ-COMS 2022), the question a base station must answer to hand off before the link
fails. ``at``: 1 when frame t+Δ alone is blocked (a link blocked at t+1..t+Δ-1 and clear again at t+Δ counts
as 0).
"""
from __future__ import annotations

from collections.abc import Sequence

BLOCKAGE_LABELS = ("within", "at")
DEFAULT_BLOCKAGE_LABEL = "within"


def check_blockage_label(kind: str, horizon: int) -> None:
    """Refuse an unknown label kind or a horizon below one frame."""
    if kind not in BLOCKAGE_LABELS:
        raise ValueError(f"blockage label must be one of {BLOCKAGE_LABELS}, got {kind!r}")
    if horizon < 1:
        raise ValueError(f"blockage horizon must be at least 1 frame, got {horizon}")


def future_blockage(ahead: Sequence[int], kind: str = DEFAULT_BLOCKAGE_LABEL) -> int:
    """The label from the states (0/1) of frames t+1..t+Δ, in time order."""
    check_blockage_label(kind, len(ahead))
    return int(max(ahead)) if kind == "within" else int(ahead[-1])
