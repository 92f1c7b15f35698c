"""The shipped rules against generated ground truth: exactly the addresses that cross
5 failures in 600 s are banned (precision and recall 1.0), and nothing allowlisted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

GEN = Path(__file__).resolve().parents[2] / "shared" / "tools" / "gen_authlog.py"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    if not GEN.is_file():
        pytest.fail(f"{GEN} is missing (the shared tools must sit beside the repository)")
    out = tmp_path_factory.mktemp("truth")
    log, truth = out / "auth.log", out / "truth.json"
    subprocess.run(
        [
            sys.executable,
            str(GEN),
            "--lines",
            "300000",
            "--seed",
            "11",
            "--attack-share",
            "0.6",
            "--out",
            str(log),
            "--truth",
            str(truth),
        ],
        check=True,
        timeout=120,
    )
    return log, json.loads(truth.read_text())


def replay(log: Path, config: Path) -> list[dict[str, object]]:
    proc = subprocess.run(
        [sys.executable, "-m", "sentinel", "replay", "-c", str(config), "--year", "2026", str(log)],
        capture_output=True,
        check=True,
        timeout=600,
    )
    return [json.loads(line) for line in proc.stdout.splitlines()]


def banned(findings: list[dict[str, object]]) -> set[str]:
    """The attacking addresses of findings with a ban action."""
    out = set()
    for f in findings:
        actions = f["sentinel.actions"]
        assert isinstance(actions, list)
        if any(a["type"] == "ban" for a in actions):
            out.add(str(f["source.ip"]))
    return out


def test_bans_exactly_the_truth(corpus: tuple[Path, dict[str, object]], tmp_path: Path) -> None:
    log, truth = corpus
    config = tmp_path / "c.toml"
    config.write_text("")
    expected = set(truth["crossing_5_in_600s"])  # type: ignore[call-overload]
    assert len(expected) > 20
    got = banned(replay(log, config))
    assert got - expected == set(), "precision below 1.0"
    assert expected - got == set(), "recall below 1.0"


def test_allowlisted_attackers_are_never_banned(corpus: tuple[Path, dict[str, object]], tmp_path: Path) -> None:
    log, truth = corpus
    expected = sorted(truth["crossing_5_in_600s"])  # type: ignore[call-overload]
    spared = [a for a in expected if ":" not in a][:3]
    config = tmp_path / "c.toml"
    config.write_text(f"[engine]\nallowlist = {json.dumps([f'{a}/32' for a in spared])}\n")
    findings = replay(log, config)
    assert banned(findings) == set(expected) - set(spared)
    suppressed = {str(f["source.ip"]) for f in findings if f.get("sentinel.suppressed")}
    assert set(spared) <= suppressed, "the attempts of allowlisted addresses are still recorded"
