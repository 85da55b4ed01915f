"""A lean streaming reader of tar shards, in place of ``tarfile``'s ``r|*`` mode inside WebDataset.

The shards this project writes are POSIX ustar (shards/writer.py); ``tarfile`` parses each 512-byte header
through its general machinery (all fields, pax/GNU dispatch, member bookkeeping), which was about half of the
data loader's CPU time per sample. This reader takes only what a WebDataset sample needs: the name (ustar
prefix + name, GNU long names and pax ``path`` records are honoured too), the size (octal or base-256) and
the type; it verifies every header's checksum and refuses a truncated member, naming the shard. Directories,
links and other non-regular members are skipped, as WebDataset does.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import webdataset as wds

BLOCK = 512
REGULAR = (b"0", b"\0", b"7")


class TarFormatError(ValueError):
    """A shard that is not a readable tar stream (bad header checksum, truncated member)."""


def _read(stream, n: int) -> bytes:
    """Exactly ``n`` bytes, fewer only at the end of the stream (pipes may return short reads)."""
    data = stream.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = stream.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _field(raw: bytes) -> bytes:
    return raw.split(b"\0", 1)[0]


def _number(raw: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 when the high bit of the first byte is set."""
    if raw[0] & 0x80:
        value = int.from_bytes(raw[1:], "big")
        return value - (1 << (8 * len(raw) - 8)) if raw[0] & 0x40 else value
    text = _field(raw).strip()
    return int(text, 8) if text else 0


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header (records are ``"<len> key=value\\n"``)."""
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        if key == b"path":
            return value.decode("utf-8")
        pos += length
    return None


def iter_members(stream, where: str) -> Iterator[tuple[str, bytes]]:
    """(name, data) of every regular file of a tar stream, in order; raises TarFormatError naming ``where``."""
    long_name: str | None = None
    while True:
        header = _read(stream, BLOCK)
        if not header:
            return  # end of stream without the two zero blocks: tolerated, as tarfile does
        if len(header) < BLOCK:
            raise TarFormatError(f"{where}: truncated tar header at the end of the shard")
        if header.count(0) == BLOCK:
            return  # end-of-archive marker
        if _number(header[148:156]) != sum(header[:148]) + 8 * 32 + sum(header[156:]):
            raise TarFormatError(f"{where}: bad tar header checksum (corrupt shard or not a tar file)")
        size, kind = _number(header[124:136]), header[156:157]
        data = _read(stream, size)
        if len(data) < size:
            raise TarFormatError(f"{where}: member truncated ({len(data)} of {size} bytes; incomplete shard?)")
        _read(stream, -size % BLOCK)
        if kind == b"L":  # GNU long name of the next member
            long_name = _field(data).decode("utf-8")
            continue
        if kind == b"x":  # pax header of the next member
            long_name = _pax_path(data) or long_name
            continue
        if kind not in REGULAR:
            long_name = None
            continue
        if long_name is not None:
            name, long_name = long_name, None
        else:
            name = _field(header[:100]).decode("utf-8")
            if header[257:262] == b"ustar":
                prefix = _field(header[345:500]).decode("utf-8")
                name = f"{prefix}/{name}" if prefix else name
        yield name, data


def _expand(sources: Iterable[dict[str, Any]], handler: Callable[[BaseException], bool]) -> Iterator[dict[str, Any]]:
    """WebDataset's tar_file_expander with :func:`iter_members`: file dicts, then ``{}`` at each shard's end."""
    for source in sources:
        url = source["url"]
        try:
            for name, data in iter_members(source["stream"], url):
                if name.startswith("__") and name.split("/", 1)[0].endswith("__"):
                    continue  # WebDataset's own metadata members
                yield {"fname": name, "data": data, "__url__": url}
        except Exception as exc:  # noqa: BLE001 — the handler decides (SkipCounter: warn, count, go on)
            if not handler(exc):
                break
        finally:
            close = getattr(source["stream"], "close", None)
            if close is not None:
                close()
        yield {}  # the last (possibly partial) sample of a shard never merges with the next shard's first


def _tar_samples(src, handler: Callable[[BaseException], bool] = wds.reraise_exception):
    streams = wds.tariterators.url_opener(src, handler=handler)
    return wds.tariterators.group_by_keys(_expand(streams, handler), handler=handler)


tar_samples = wds.filters.pipelinefilter(_tar_samples)
"""Pipeline stage: shard URLs → grouped samples, like ``wds.tarfile_to_samples(handler=...)``."""
