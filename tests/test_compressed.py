"""`sentinel parse` and `replay` read compressed rotations (auth.log.2.gz) like the plain file."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

GEN = Path(__file__).resolve().parents[2] / "shared" / "tools" / "gen_authlog.py"
COMPRESS: dict[str, Callable[[bytes], bytes]] = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    log = tmp_path_factory.mktemp("rotated") / "auth.log.2"
    gen = [sys.executable, str(GEN), "--lines", "40000", "--seed", "5", "--year", "2026", "--out", str(log)]
    subprocess.run(gen, check=True, capture_output=True)
    return log


def sentinel(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "sentinel", *args], input=stdin, capture_output=True, timeout=120)


def events(out: bytes) -> list[dict[str, Any]]:
    """The events, without the file path (which names the compressed file)."""
    return [{k: v for k, v in json.loads(line).items() if k != "log.file.path"} for line in out.splitlines()]


@pytest.mark.parametrize("suffix", sorted(COMPRESS))
def test_a_compressed_rotation_parses_like_the_plain_file(plain: Path, suffix: str) -> None:
    packed = plain.with_name(f"{plain.name}.{suffix}")
    packed.write_bytes(COMPRESS[suffix](plain.read_bytes()))
    expected = sentinel("parse", "--year", "2026", str(plain))
    got = sentinel("parse", "--year", "2026", str(packed))
    assert got.returncode == 0, got.stderr
    assert events(got.stdout) == events(expected.stdout)  # log.offset counts decompressed bytes
    assert len(events(expected.stdout)) > 15_000
    assert all(json.loads(line)["log.file.path"] == str(packed) for line in got.stdout.splitlines())
    piped = sentinel("parse", "--year", "2026", "-", stdin=packed.read_bytes())
    assert events(piped.stdout) == events(expected.stdout)


def test_a_truncated_rotation_gives_what_it_holds_and_says_it_is_damaged(plain: Path, tmp_path: Path) -> None:
    whole = gzip.compress(plain.read_bytes())
    cut = tmp_path / "auth.log.3.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    got = sentinel("parse", "--year", "2026", str(cut))
    assert got.returncode == 1
    assert b"auth.log.3.gz: Compressed file ended before the end-of-stream marker was reached" in got.stderr
    expected = events(sentinel("parse", "--year", "2026", str(plain)).stdout)
    parsed = events(got.stdout)
    assert len(expected) // 4 < len(parsed) < len(expected)
    assert parsed == expected[: len(parsed)]


def test_a_zstd_rotation_is_refused_by_name_not_read_as_garbage(tmp_path: Path) -> None:
    zst = tmp_path / "auth.log.2.zst"
    zst.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(range(256)))  # a zstd frame's magic number
    for command in ("parse", "replay"):
        got = sentinel(command, str(zst))
        assert got.returncode == 1
        assert b"compressed with zstd, which this Python cannot read: decompress it first" in got.stderr
        assert got.stdout == b""


def test_replaying_a_compressed_rotation_finds_what_the_plain_file_gives(plain: Path) -> None:
    packed = plain.with_name(plain.name + ".gz")
    packed.write_bytes(gzip.compress(plain.read_bytes()))

    def findings(path: Path) -> list[tuple[str, str, str]]:
        got = sentinel("replay", "--year", "2026", str(path))
        assert got.returncode == 0, got.stderr
        found = [json.loads(line) for line in got.stdout.splitlines()]
        return [(f["@timestamp"], f["rule.id"], f.get("source.ip", "")) for f in found]

    expected = findings(plain)
    assert any(rule == "ssh-brute-force" for _, rule, _ in expected)
    assert findings(packed) == expected
