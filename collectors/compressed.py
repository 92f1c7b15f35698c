"""Compressed rotations (``auth.log.2.gz``, as logrotate's ``compress`` leaves them) for
``sentinel parse`` and ``sentinel replay``.

They are recognised by their magic bytes, not their name, and read through the standard
library's decompressors (gzip, bzip2, xz).  A zstd file is named as such and refused with a
clear message: read as text it would only yield garbage, and replaying last week's attacks
must never silently find nothing.  The live file source never reads compressed rotations.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import zlib
from collections.abc import Callable
from typing import BinaryIO, Final

_MAGIC: Final = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"), (b"(\xb5/\xfd", "zstd"))

#: What a damaged or truncated compressed file raises while it is read (besides OSError).
DECOMPRESSION_ERRORS: Final = (EOFError, lzma.LZMAError, zlib.error)


class UnsupportedCompression(ValueError):
    """A compressed file this Python cannot decompress."""


def compression(fh: BinaryIO) -> str | None:
    """The compression of what ``fh`` reads (its start is peeked at, nothing consumed), or None."""
    if isinstance(fh, io.BufferedReader):  # standard input too, pipe or not
        head = fh.peek(6)[:6]
    elif stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
        position = fh.tell()
        head = fh.read(6)
        fh.seek(position)
    else:
        return None
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


def compression_of(path: str) -> str | None:
    """The compression of the file at ``path``, or None."""
    with open(path, "rb") as fh:
        return compression(fh)


def reader(raw: BinaryIO) -> tuple[Callable[[int], bytes], bool]:
    """How to read what ``raw`` holds: its own ``read``, or for a compressed file the decompressor's
    ``read1`` (so what comes before a damaged or truncated part is still read); and whether it was
    compressed (``raw.tell()`` then tells how far the file itself has been read)."""
    kind = compression(raw)
    if kind is None:
        return raw.read, False
    return _decompressor(raw, kind).read1, True


def _decompressor(raw: BinaryIO, kind: str) -> io.BufferedIOBase:
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if kind == "bzip2":
        return bz2.BZ2File(raw, "rb")
    if kind == "xz":
        return lzma.LZMAFile(raw, "rb")
    raise UnsupportedCompression(f"compressed with {kind}, which this Python cannot read: decompress it first")
