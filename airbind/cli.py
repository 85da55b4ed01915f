"""Command-line helpers shared by the entry points: options generated from dataclass configs, and
knowing which options were given (so that they override a preset, which overrides the defaults)."""
from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any, Callable, Iterable


class OptionParser(argparse.ArgumentParser):
    """An ArgumentParser whose ``option`` shows defaults, or (``suppress``) records only given options."""

    def __init__(self, *args, suppress: bool = False, **kw):
        super().__init__(*args, formatter_class=argparse.ArgumentDefaultsHelpFormatter, **kw)
        self.suppress = suppress

    def option(self, flag: str, default: Any, **kw) -> None:
        self.add_argument(flag, default=argparse.SUPPRESS if self.suppress else default, **kw)

    def dataclass_options(self, cls: type, skip: Iterable[str], help_texts: dict[str, str],
                          int_fields: Iterable[str] = ()) -> None:
        """One ``--field-name`` option per field of ``cls`` (typed by its default)."""
        defaults = cls()
        for f in fields(cls):
            if f.name in skip:
                continue
            value = getattr(defaults, f.name)
            kind = float if isinstance(value, float) else int if isinstance(value, int) else str
            kind = int if f.name in int_fields else kind
            self.option("--" + f.name.replace("_", "-"), value, type=kind, help=help_texts[f.name])


def given(build: Callable[..., OptionParser], argv: list[str] | None) -> set[str]:
    """Destinations of the options present on the command line."""
    return set(vars(build(suppress=True).parse_args(argv)))
