"""What a reader hands the writer: cheap index records, and a policy for bad input."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from shards.errors import DataError


@dataclass
class Record:
    """One sample as found in a dataset index, before its files are read.

    ``meta`` holds labels and bookkeeping known from the index; ``load`` reads and validates the files and
    returns the schema sample (DESIGN.md).
    """

    key: str
    source: str
    group: str
    seq: str
    meta: dict[str, Any]
    load: Callable[[], dict[str, Any]] = field(repr=False)
    official_split: str | None = None


class BadInput:
    """Raise on the first bad file, or (``skip_bad``) count it, warn, and go on."""

    def __init__(self, skip_bad: bool = False):
        self.skip_bad = skip_bad
        self.errors: list[str] = []

    def __call__(self, exc: DataError) -> None:
        if not self.skip_bad:
            raise exc
        self.errors.append(str(exc))
        warnings.warn(f"skipped bad input: {exc}", stacklevel=2)

    def report(self) -> dict[str, Any]:
        return {"skipped": len(self.errors), "errors": self.errors[:1000]}


def resolve(base: Path, value: str) -> Path:
    """A CSV cell path (``./unit1/...``) relative to the CSV's folder."""
    return (base / value.strip()).resolve() if not Path(value.strip()).is_absolute() else Path(value.strip())
