"""Errors raised for bad input: each one names the file and the problem."""
from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A dataset file is missing, malformed or holds invalid values."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
