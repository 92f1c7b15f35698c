"""Configuration: one TOML file plus ``SENTINEL_*`` environment overrides (pydantic-settings).

Every model forbids unknown keys, so a typo is an error at start-up rather than a silently
ignored setting.  :func:`load_settings` turns every failure into one :class:`ConfigError`
whose message names the file (or environment variable) and the key.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from sentinel.collectors.sources.packets import PacketSensorSettings
from sentinel.collectors.sources.ports import PortAuditSettings
from sentinel.engine.durations import Duration
from sentinel.enrich.geoip import GeoIPSettings
from sentinel.responders.alerts import AlertSettings
from sentinel.responders.firewall.settings import FirewallSettings
from sentinel.responders.oauth import OAuthSettings
from sentinel.wallet import WalletSettings

ENV_PREFIX = "SENTINEL_"
ENV_DELIMITER = "__"
DEFAULT_CONFIG_PATH = Path("/etc/sentinel/config.toml")

LogFormat = Literal["auto", "syslog", "journal", "nginx", "apache", "jsonl"]


class ConfigError(Exception):
    """A configuration problem, with a message meant for the operator (no traceback)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileSourceSettings(_Strict):
    """Log files followed like ``tail -F``."""

    type: Literal["file"] = "file"
    name: str | None = None
    paths: list[Path] = Field(min_length=1)
    format: LogFormat = "auto"
    start_at: Literal["beginning", "end"] = "end"
    year: int | None = Field(default=None, ge=1970, le=9999)

    @field_validator("paths")
    @classmethod
    def _no_patterns(cls, value: list[Path]) -> list[Path]:
        # A pattern would be waited for as a file of that name, for ever: say so instead.
        for path in value:
            if any(ch in str(path) for ch in "*?["):
                raise ValueError(f"{str(path)!r}: patterns are not expanded; list each file")
        return value


class JournaldSourceSettings(_Strict):
    """The systemd journal, read with a persisted cursor."""

    type: Literal["journald"] = "journald"
    name: str | None = None
    matches: list[str] = Field(
        default_factory=lambda: [
            # Trusted fields only (set by journald, not by the sender): any local user can log
            # with SYSLOG_IDENTIFIER=sshd (`logger -t sshd`) and forge an attacker's address.
            "_SYSTEMD_UNIT=ssh.service",
            "_SYSTEMD_UNIT=sshd.service",
            "_COMM=sshd",
            "_COMM=sshd-session",
            "_COMM=sudo",
            "_COMM=su",
        ]
    )
    directory: Path | None = None
    files: list[Path] = Field(default_factory=list)
    start_at: Literal["beginning", "end"] = "end"


SourceSettings = Annotated[FileSourceSettings | JournaldSourceSettings, Field(discriminator="type")]


class DaemonSettings(_Strict):
    state_dir: Path = Path("/var/lib/sentinel")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    hostname: str | None = None


class CollectorSettings(_Strict):
    poll_interval: float = Field(default=1.0, gt=0, le=60)
    max_line_bytes: int = Field(default=65536, ge=256, le=16 * 1024 * 1024)
    checkpoint_interval: float = Field(default=1.0, gt=0, le=300)
    queue_size: int = Field(default=10000, ge=10)
    #: A full queue (a stuck store or stage): "block" makes sources wait (lossless: they read on
    #: from where they stand); "drop_newest" drops their batches (counted, reported) and they read on.
    overflow: Literal["block", "drop_newest"] = "block"
    #: How long a source waits for room before the queue counts as overflowing (event, metric).
    overflow_wait: Annotated[Duration, Field(gt=0, le=3600)] = 5.0
    #: Seconds between two self-checks that every source still advances.
    self_check_interval: Annotated[Duration, Field(ge=1, le=86400)] = 60.0
    #: A source is stalled after this many self-checks without progress while its input waited.
    stall_checks: int = Field(default=3, ge=1, le=1000)


class ElasticsearchSettings(_Strict):
    """Shipping to Elasticsearch (``[store] backend = "elasticsearch"``): see sentinel.store.shipper."""

    hosts: list[str] = ["https://127.0.0.1:9200"]
    #: CA bundle that signed the server's certificate (default: the system's CAs).  Always verified.
    ca_certs: Path | None = None
    auth: Literal["api_key", "basic", "none"] = "api_key"
    #: For ``basic``; the password, like an API key, never comes from this file.
    username: str | None = None
    #: Where the password or API key comes from: a systemd credential or the wallet.
    secret_from: Literal["credential", "wallet"] = "credential"  # noqa: S105  (where from, not a secret)
    #: The credential name ($CREDENTIALS_DIRECTORY/<name>) or the wallet provider entry's name.
    secret_name: str = "elasticsearch"  # noqa: S105  (a name, not a secret)
    data_stream: str = Field(default="logs-sentinel-default", pattern=r"^[a-z0-9][a-z0-9._-]*-[a-z0-9._]+$")
    ilm_policy: str = "sentinel"
    rollover_max_age: str = Field(default="30d", pattern=r"^\d+[dhm]$")
    rollover_max_primary_shard_size: str = Field(default="50gb", pattern=r"^\d+(b|kb|mb|gb|tb)$")
    spool_dir: Path | None = None
    spool_max_bytes: int = Field(default=1 << 30, ge=1 << 20)
    overflow: Literal["block", "drop_oldest"] = "block"
    bulk_max_docs: int = Field(default=2000, ge=1, le=100_000)
    bulk_max_bytes: int = Field(default=8 << 20, ge=64 << 10)
    request_timeout: float = Field(default=30.0, gt=0)

    def spool_path(self, state_dir: Path) -> Path:
        return self.spool_dir if self.spool_dir is not None else state_dir / "spool"


class StoreSettings(_Strict):
    backend: Literal["sqlite", "elasticsearch"] = "sqlite"
    path: Path | None = None
    #: Sealed monthly partitions are dropped this long after their month ended (by arrival).
    retention_days: float = Field(default=730, gt=0)
    elasticsearch: ElasticsearchSettings = ElasticsearchSettings()

    def sqlite_path(self, state_dir: Path) -> Path:
        return self.path if self.path is not None else state_dir / "events.db"


class ResponderSettings(_Strict):
    dry_run: bool = True


class MetricsSettings(_Strict):
    enabled: bool = True
    address: str = "127.0.0.1"
    port: int = Field(default=9477, ge=1, le=65535)


class RulesSettings(_Strict):
    directories: list[Path] = Field(default_factory=list)
    disabled: list[str] = Field(default_factory=list)


class EngineSettings(_Strict):
    allowlist: list[str] = Field(default_factory=list)
    max_keys: int = Field(default=1_000_000, ge=1000)
    late_tolerance: Duration = 60.0
    ban_duration: Duration = 600.0
    ban_max_duration: Duration = 7 * 86400.0

    @field_validator("allowlist")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an address or CIDR network") from None
        return value


class Settings(BaseSettings):
    """The whole configuration, as loaded from TOML and the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        extra="forbid",
        frozen=True,
    )

    daemon: DaemonSettings = DaemonSettings()
    collectors: CollectorSettings = CollectorSettings()
    sources: list[SourceSettings] = Field(default_factory=list)
    store: StoreSettings = StoreSettings()
    responders: ResponderSettings = ResponderSettings()
    rules: RulesSettings = RulesSettings()
    metrics: MetricsSettings = MetricsSettings()
    engine: EngineSettings = EngineSettings()
    geoip: GeoIPSettings = Field(default_factory=GeoIPSettings)
    firewall: FirewallSettings = FirewallSettings()
    wallet: WalletSettings = WalletSettings()
    oauth: OAuthSettings = Field(default_factory=OAuthSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    ports: PortAuditSettings = Field(default_factory=PortAuditSettings)
    packet_sensor: PacketSensorSettings = Field(default_factory=PacketSensorSettings)


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else p for p in loc).replace(".[", "[")


def _origin(loc: tuple[int | str, ...], path: Path | None) -> str:
    """Name the environment variable a bad value came from, or else the file."""
    parts = [str(p).upper() for p in loc if isinstance(p, str)]
    for n in range(len(parts), 0, -1):
        name = ENV_PREFIX + ENV_DELIMITER.join(parts[:n])
        if name in os.environ:
            return f"environment variable {name}"
    return str(path) if path is not None else "defaults"


def _describe(err: ValidationError, path: Path | None) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        # Discriminated unions put the variant's tag in the location: drop it for readability.
        loc = tuple(p for p in loc if p not in ("file", "journald") or p == loc[-1])
        key = _location(loc) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{_origin(loc, path)}: {key}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(path: Path | None, **overrides: Any) -> Settings:
    """Load ``path`` (TOML) under ``SENTINEL_*`` overrides; raise :class:`ConfigError` if bad.

    ``path=None`` uses the built-in defaults plus the environment only.
    """
    if path is not None:
        try:
            with path.open("rb") as fh:
                tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{path}: configuration file not found") from None
        except PermissionError:
            raise ConfigError(f"{path}: permission denied reading configuration file") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: is a directory, not a configuration file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None

    class _FromFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            if path is None:
                return (init_settings, env_settings)
            return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=path))

    try:
        return _FromFile(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None
    except ValueError as exc:  # e.g. an environment variable holding invalid JSON
        raise ConfigError(f"invalid configuration in environment: {exc}") from None
