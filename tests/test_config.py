"""Configuration: TOML plus SENTINEL_* environment, and clear errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from sentinel.config import ConfigError, FileSourceSettings, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_example_config_is_valid_and_documents_every_key() -> None:
    settings = load_settings(ROOT / "config.example.toml")
    assert settings.responders.dry_run is True
    assert settings.store.backend == "sqlite"
    text = (ROOT / "config.example.toml").read_text()

    def check(section: str, model: BaseModel) -> None:
        assert f"[{section}]" in text, f"config.example.toml has no [{section}] section"
        for key in type(model).model_fields:
            value = getattr(model, key)
            if isinstance(value, BaseModel):  # a sub-section, e.g. [store.elasticsearch]
                check(f"{section}.{key}", value)
            else:
                assert f"{key} =" in text, f"config.example.toml does not document {section}.{key}"

    for section in type(settings).model_fields:
        model = getattr(settings, section)
        if isinstance(model, BaseModel):
            check(section, model)
    for source_model in {type(s) for s in settings.sources}:
        for key in source_model.model_fields:
            assert f"{key}" in text, f"config.example.toml does not document sources.{key}"


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[daemon]\nstate_dir = "/from/file"\nlog_level = "info"\n')
    monkeypatch.setenv("SENTINEL_DAEMON__LOG_LEVEL", "debug")
    settings = load_settings(cfg)
    assert settings.daemon.log_level == "debug"
    assert settings.daemon.state_dir == Path("/from/file")


def test_sources_from_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[sources]]\ntype = "file"\npaths = ["/var/log/auth.log"]\nformat = "syslog"\n')
    (source,) = load_settings(cfg).sources
    assert isinstance(source, FileSourceSettings)
    assert source.paths == [Path("/var/log/auth.log")]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[daemon]\nstat_dir = '/x'\n", "daemon.stat_dir: unknown key"),
        ("[collectors]\npoll_interval = 'fast'\n", "collectors.poll_interval: Input should be a valid number"),
        ("[[sources]]\ntype = 'file'\npaths = '/x'\n", "sources[0].paths"),
        ("[[sources]]\ntype = 'carrier-pigeon'\n", "sources[0]"),
        (
            "[[sources]]\ntype = 'file'\npaths = ['/var/log/nginx/*.log']\n",
            "sources[0].paths: Value error, '/var/log/nginx/*.log': patterns are not expanded; list each file",
        ),
        ("[daemon\n", "invalid TOML"),
        ("colour = 'blue'\n", "colour: unknown key"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, body: str, expected: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert str(cfg) in str(err.value)
    assert expected in str(err.value)


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTINEL_DAEMON__LOG_LEVEL", "loud")
    with pytest.raises(ConfigError, match="environment variable SENTINEL_DAEMON__LOG_LEVEL"):
        load_settings(None)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_settings(tmp_path / "nope.toml")


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_cli_bad_config_is_one_clear_message(tmp_path: Path, command: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[daemon]\nlog_level = 3\nextra = true\n")
    proc = subprocess.run(
        [sys.executable, "-m", "sentinel", command, "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{cfg}: daemon.extra: unknown key" in proc.stderr
    assert f"{cfg}: daemon.log_level:" in proc.stderr


def test_check_config_show_hides_the_secrets_a_config_may_hold(tmp_path: Path) -> None:
    """A Slack webhook URL is a bearer capability and a Sentry DSN holds the project's key."""
    cfg = tmp_path / "sentinel.toml"
    hook = "https://hooks.slack.com/services/T0AAAA/B0BBBB/c2VjcmV0LXdlYmhvb2stdG9rZW4"
    dsn = "https://0123456789abcdef0123456789abcdef@o1.ingest.sentry.io/42"
    cfg.write_text(
        f'[[alerts.webhooks]]\nname = "chat"\nurl = "{hook}"\nformat = "slack"\n[alerts.sentry]\ndsn = "{dsn}"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "sentinel", "check-config", "--show", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    shown = json.loads(proc.stdout)
    assert shown["alerts"]["webhooks"][0]["name"] == "chat"
    assert shown["alerts"]["webhooks"][0]["url"] == shown["alerts"]["sentry"]["dsn"] == "**********"
    assert "c2VjcmV0" not in proc.stdout and "0123456789abcdef" not in proc.stdout
    assert load_settings(cfg).alerts.webhooks[0].url.get_secret_value() == hook
