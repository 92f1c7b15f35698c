"""The wallet: what token revocation needs, encrypted under a password that no server stores.

Layout of the wallet file (JSON, written atomically, mode 0600)::

    {"format": "sentinel-wallet", "version": 1,
     "kdf": {"name": "argon2id", "salt": …, "memory_kib": 65536, "iterations": 3, "lanes": 4},
     "check": …,                                  # proves the password (AES-GCM of a constant)
     "providers": {NAME: {"key": …, "data": …}},  # client id / secret per identity provider
     "accounts":  {NAME: {"key": …, "data": …}},  # tokens (or a subject) to revoke per account
     "mac": …}                                    # HMAC-SHA256 over everything above

Each provider and account record is encrypted with its own random AES-256-GCM key (``data``);
that key is wrapped with AES-256-GCM under the key-encryption key (``key``).  The
key-encryption key and the MAC key are derived (HKDF-SHA256) from the master key, which is
derived from the password with Argon2id (scrypt where the OpenSSL build lacks Argon2id); the
parameters are stored, the master key never is.  Record names are bound into the GCM
associated data, so records cannot be swapped between names, and the file MAC catches added,
removed or rolled-back records.  Changing the password re-wraps the record keys only.

Secrets are held in :class:`Secret`, whose ``repr``/``str`` never show the value, and every
decrypted secret is registered with :func:`redact`, which the log, alert and Sentry paths use
to scrub provider answers and error reports.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import getpass
import hmac
import json
import logging
import os
import secrets
import stat
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final, Literal

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)

FORMAT: Final = "sentinel-wallet"
VERSION: Final = 1
#: The systemd credential holding the daemon's wallet password (``LoadCredentialEncrypted=``).
CREDENTIAL_NAME: Final = "wallet-password"
#: An inherited file descriptor to read the password from (``sentinel run --wallet-password-fd``).
PASSWORD_FD_ENV: Final = "SENTINEL_WALLET_PASSWORD_FD"  # noqa: S105 - a variable name
#: FOR TESTS ONLY: the password in the environment (visible in /proc/PID/environ to root and
#: to the process owner, inherited by children).  Never use it in production.
TEST_PASSWORD_ENV: Final = "SENTINEL_TEST_WALLET_PASSWORD"  # noqa: S105 - a variable name
REDACTED: Final = "[redacted]"

_CHECK_PLAINTEXT: Final = b"sentinel-wallet password check v1"
_MIN_SECRET_LEN: Final = 4  # shorter values would scrub ordinary words out of every log line
_MAX_PASSWORD_BYTES: Final = 4096

#: Argon2id, RFC 9106's second recommended option (64 MiB, 3 passes, 4 lanes; ~0.15 s here).
ARGON2_DEFAULT: Final[dict[str, Any]] = {"name": "argon2id", "memory_kib": 65536, "iterations": 3, "lanes": 4}
#: scrypt where Argon2id is unavailable: N=2^17, r=8, p=1 (128 MiB).
SCRYPT_DEFAULT: Final[dict[str, Any]] = {"name": "scrypt", "n": 2**17, "r": 8, "p": 1}
#: Cheap parameters for tests only (never for a real wallet).
TEST_KDF: Final[dict[str, Any]] = {"name": "argon2id", "memory_kib": 8192, "iterations": 1, "lanes": 1}


class WalletError(ValueError):
    """A wallet problem, with a message meant for the operator (no secret in it).

    A ``ValueError`` so that ``sentinel run`` reports it as a start-up configuration error.
    """


class WrongPassword(WalletError):
    """The password does not open this wallet; nothing was decrypted."""


class WalletTampered(WalletError):
    """The wallet file fails authentication: it was modified, truncated or corrupted."""


# -- secrets and their redaction -----------------------------------------------------------------

_known_lock = threading.Lock()
_known: set[str] = set()
#: Short-lived secrets (app access tokens, renewed hourly) are remembered in a bounded window.
_transient: collections.deque[str] = collections.deque(maxlen=48)
_known_sorted: tuple[str, ...] = ()


def register_secret(value: str, *, transient: bool = False) -> None:
    """Have :func:`redact` hide ``value`` (and its URL-encoded forms) from now on.

    ``transient`` values (tokens that expire and are renewed) are remembered only until 16
    newer ones replace them, so the list :func:`redact` scans stays short.
    """
    from urllib.parse import quote, quote_plus

    global _known_sorted
    if len(value) < _MIN_SECRET_LEN:
        return
    forms = {value, quote(value, safe=""), quote_plus(value)}
    with _known_lock:
        if forms <= _known or forms <= set(_transient):
            return
        if transient:
            _transient.extend(sorted(forms))
        else:
            _known.update(forms)
        _known_sorted = tuple(sorted(_known | set(_transient), key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``[redacted]``."""
    for value in _known_sorted:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def redact_obj(obj: Any) -> Any:
    """A copy of a JSON-like structure with registered secrets redacted in every string."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, Mapping):
        return {redact_obj(k): redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [redact_obj(v) for v in obj]
    return obj


class RedactFilter(logging.Filter):
    """A handler filter that passes each record's message, and its exception's text, through :func:`redact`.

    An exception is redacted in place (its string arguments, along the cause chain), so every
    formatter's traceback shows the redacted text.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not _known_sorted:
            return True
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        exc = record.exc_info[1] if record.exc_info else None
        for _ in range(10):
            if exc is None:
                break
            with contextlib.suppress(Exception):
                exc.args = tuple(redact(a) if isinstance(a, str) else a for a in exc.args)
            exc = exc.__cause__ or exc.__context__
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Add :class:`RedactFilter` to the handlers of ``logger`` (the root logger) once."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactFilter) for f in handler.filters):
            handler.addFilter(RedactFilter())


class Secret:
    """A secret string that never shows itself in ``repr``, ``str``, f-strings or pickles."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register_secret(value)

    def reveal(self) -> str:
        """The value, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('[redacted]')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(Secret)

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")


# -- records -------------------------------------------------------------------------------------

EntryKind = Literal["token", "sessions"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One thing to revoke for an account.

    ``kind = "token"``: an OAuth token (``token``, with an RFC 7009 ``hint`` such as
    ``refresh_token``) at ``provider``.  ``kind = "sessions"``: every sign-in session of the
    user ``subject`` at ``provider`` (Microsoft Entra ID ``revokeSignInSessions``).
    """

    id: str
    provider: str
    kind: EntryKind
    token: Secret | None = None
    hint: str | None = None
    subject: str | None = None
    added: str = ""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.id, "provider": self.provider, "kind": self.kind, "added": self.added}
        if self.token is not None:
            doc["token"] = self.token.reveal()
        if self.hint:
            doc["hint"] = self.hint
        if self.subject:
            doc["subject"] = self.subject
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Entry:
        token = doc.get("token")
        return cls(
            id=str(doc["id"]),
            provider=str(doc["provider"]),
            kind="sessions" if doc.get("kind") == "sessions" else "token",
            token=Secret(token) if isinstance(token, str) else None,
            hint=doc.get("hint"),
            subject=doc.get("subject"),
            added=str(doc.get("added", "")),
        )


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """What to revoke for one account."""

    entries: tuple[Entry, ...] = ()


@dataclass(frozen=True, slots=True)
class ProviderCredentials:
    """How Sentinel authenticates to one identity provider (an OAuth client or admin app)."""

    client_id: str | None = None
    client_secret: Secret | None = None
    extra: dict[str, str] = field(default_factory=dict)


# -- key derivation and sealing ------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise WalletTampered("wallet file is malformed (a binary field is not text)")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise WalletTampered("wallet file is malformed (bad base64)") from None


def default_kdf() -> dict[str, Any]:
    """Argon2id parameters when this OpenSSL build has it, scrypt otherwise."""
    try:
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

        Argon2id(salt=b"\0" * 16, length=32, iterations=1, lanes=1, memory_cost=8).derive(b"probe")
    except (ImportError, UnsupportedAlgorithm):
        return dict(SCRYPT_DEFAULT)
    return dict(ARGON2_DEFAULT)


def _derive_master(password: str, kdf: Mapping[str, Any]) -> bytes:
    """The 32-byte master key for ``password`` under the stored KDF parameters."""
    salt = _unb64(kdf.get("salt"))
    secret = password.encode("utf-8")
    try:
        if kdf.get("name") == "argon2id":
            from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

            return Argon2id(
                salt=salt,
                length=32,
                iterations=int(kdf["iterations"]),
                lanes=int(kdf["lanes"]),
                memory_cost=int(kdf["memory_kib"]),
            ).derive(secret)
        if kdf.get("name") == "scrypt":
            return Scrypt(salt=salt, length=32, n=int(kdf["n"]), r=int(kdf["r"]), p=int(kdf["p"])).derive(secret)
    except (KeyError, TypeError, ValueError) as exc:
        raise WalletTampered(f"wallet file has invalid key-derivation parameters ({type(exc).__name__})") from None
    except (ImportError, UnsupportedAlgorithm):
        raise WalletError(f"this system's cryptography library cannot derive {kdf.get('name')} keys") from None
    raise WalletError(f"unknown key-derivation function {kdf.get('name')!r} in the wallet file")


def _subkey(master: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"sentinel-wallet/v1/" + purpose).derive(master)


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> str:
    nonce = os.urandom(12)
    return _b64(nonce + AESGCM(key).encrypt(nonce, plaintext, aad))


def _open(key: bytes, sealed: Any, aad: bytes) -> bytes:
    blob = _unb64(sealed)
    if len(blob) < 12 + 16:
        raise WalletTampered("wallet file is malformed (a sealed field is too short)")
    return AESGCM(key).decrypt(blob[:12], blob[12:], aad)


def _canonical(doc: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _aad(kind: str, name: str, part: str) -> bytes:
    return json.dumps(["sentinel-wallet", VERSION, kind, name, part]).encode()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Keys:
    """The keys derived from the master key; never printed."""

    __slots__ = ("kek", "mac")

    def __init__(self, master: bytes) -> None:
        self.kek = _subkey(master, b"key-encryption")
        self.mac = _subkey(master, b"file-mac")

    def __repr__(self) -> str:
        return "_Keys([redacted])"


# -- the wallet ----------------------------------------------------------------------------------


class Wallet:
    """An opened (unlocked) wallet file: read records on demand, change them, save atomically."""

    def __init__(self, path: Path, doc: dict[str, Any], keys: _Keys) -> None:
        self.path = path
        self._doc = doc
        self._keys = keys
        self._lock = threading.RLock()
        self._stamp = self._file_stamp()

    def __repr__(self) -> str:
        return f"Wallet({str(self.path)!r}, {len(self._doc['accounts'])} accounts)"

    # -- creating and opening --
    @classmethod
    def create(
        cls, path: Path, password: str, *, kdf: Mapping[str, Any] | None = None, overwrite: bool = False
    ) -> Wallet:
        """A new empty wallet at ``path`` locked with ``password``."""
        _check_new_password(password)
        if path.exists() and not overwrite:
            raise WalletError(f"{path} already exists (remove it first to start a new wallet)")
        params = dict(kdf if kdf is not None else default_kdf())
        params["salt"] = _b64(os.urandom(16))
        keys = _Keys(_derive_master(password, params))
        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "kdf": params,
            "check": _seal(keys.kek, _CHECK_PLAINTEXT, _aad("check", "", json.dumps(params, sort_keys=True))),
            "providers": {},
            "accounts": {},
        }
        wallet = cls(path, doc, keys)
        wallet.save()
        return wallet

    @classmethod
    def open(cls, path: Path, password: str) -> Wallet:
        """Unlock ``path``: :class:`WrongPassword` or :class:`WalletTampered` if it cannot be trusted."""
        doc = _read_doc(path)
        keys = _unlock(doc, password)
        _verify_mac(doc, keys, path)
        return cls(path, doc, keys)

    # -- reading --
    def accounts(self) -> list[str]:
        with self._lock:
            return sorted(self._doc["accounts"])

    def providers(self) -> list[str]:
        with self._lock:
            return sorted(self._doc["providers"])

    def account(self, name: str) -> AccountRecord | None:
        """The decrypted record of ``name``, or None if the wallet holds none."""
        with self._lock:
            raw = self._read_record("account", name)
        if raw is None:
            return None
        return AccountRecord(tuple(Entry.from_json(e) for e in raw.get("entries", ())))

    def provider(self, name: str) -> ProviderCredentials | None:
        """The decrypted credentials of provider ``name``, or None."""
        with self._lock:
            raw = self._read_record("provider", name)
        if raw is None:
            return None
        secret = raw.get("client_secret")
        return ProviderCredentials(
            client_id=raw.get("client_id"),
            client_secret=Secret(secret) if isinstance(secret, str) and secret else None,
            extra={str(k): str(v) for k, v in raw.get("extra", {}).items()},
        )

    # -- changing --
    def set_provider(self, name: str, credentials: ProviderCredentials) -> None:
        doc: dict[str, Any] = {"client_id": credentials.client_id, "extra": credentials.extra}
        if credentials.client_secret is not None:
            doc["client_secret"] = credentials.client_secret.reveal()
        with self._lock:
            self._write_record("provider", name, doc)

    def set_account(self, name: str, record: AccountRecord) -> None:
        with self._lock:
            self._write_record("account", name, {"entries": [e.to_json() for e in record.entries]})

    def add_entry(
        self,
        account: str,
        provider: str,
        *,
        token: str | None = None,
        hint: str | None = None,
        subject: str | None = None,
    ) -> Entry:
        """Add a token (or, with ``subject``, a user's sessions) to ``account``; returns it with its id."""
        if (token is None) == (subject is None):
            raise WalletError("give either a token or a subject")
        entry = Entry(
            id=secrets.token_hex(4),
            provider=provider,
            kind="token" if token is not None else "sessions",
            token=Secret(token) if token is not None else None,
            hint=hint,
            subject=subject,
            added=_now(),
        )
        with self._lock:
            current = self.account(account) or AccountRecord()
            self.set_account(account, AccountRecord((*current.entries, entry)))
        return entry

    def remove_account(self, name: str) -> bool:
        with self._lock:
            return self._doc["accounts"].pop(name, None) is not None

    def remove_provider(self, name: str) -> bool:
        with self._lock:
            return self._doc["providers"].pop(name, None) is not None

    def remove_entry(self, account: str, entry_id: str) -> bool:
        with self._lock:
            record = self.account(account)
            if record is None or all(e.id != entry_id for e in record.entries):
                return False
            kept = tuple(e for e in record.entries if e.id != entry_id)
            if kept:
                self.set_account(account, AccountRecord(kept))
            else:
                self.remove_account(account)
            return True

    def rotate_password(self, new_password: str, *, kdf: Mapping[str, Any] | None = None) -> None:
        """Re-wrap every record key under ``new_password`` (record data is not re-encrypted)."""
        _check_new_password(new_password)
        with self._lock:
            params = dict(kdf if kdf is not None else {k: v for k, v in self._doc["kdf"].items() if k != "salt"})
            params["salt"] = _b64(os.urandom(16))
            new_keys = _Keys(_derive_master(new_password, params))
            for kind, table in (("provider", self._doc["providers"]), ("account", self._doc["accounts"])):
                for name, item in table.items():
                    data_key = self._unwrap(kind, name, item)
                    item["key"] = _seal(new_keys.kek, data_key, _aad(kind, name, "key"))
            self._doc["kdf"] = params
            self._doc["check"] = _seal(
                new_keys.kek, _CHECK_PLAINTEXT, _aad("check", "", json.dumps(params, sort_keys=True))
            )
            self._keys = new_keys
            self.save()

    def save(self) -> None:
        """Write the wallet atomically (temporary file, fsync, rename), readable by its owner only."""
        with self._lock:
            self._doc["mac"] = _b64(hmac.digest(self._keys.mac, _canonical(self._doc), "sha256"))
            data = json.dumps(self._doc, indent=1, sort_keys=True).encode() + b"\n"
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            self._stamp = self._file_stamp()

    def reload_if_changed(self) -> bool:
        """Re-read the file if another process (``sentinel wallet add``) changed it.

        The new contents must authenticate with the keys in memory; otherwise (the password was
        rotated, or the file was tampered with) :class:`WalletError` is raised and the records
        already loaded stay in use.
        """
        with self._lock:
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return False
            doc = _read_doc(self.path)
            if doc.get("kdf") != self._doc.get("kdf"):
                raise WalletError(
                    f"{self.path}: the wallet password was changed; restart Sentinel to use the new wallet"
                )
            _verify_mac(doc, self._keys, self.path)
            self._doc = doc
            self._stamp = stamp
            return True

    def check(self) -> int:
        """Prove the wallet still opens: the file on disk authenticates with the keys in memory and
        every record decrypts.  Returns the number of records; raises :class:`WalletError` if not.

        The daemon runs it periodically (the wallet check), so a wallet deleted, tampered with or
        re-keyed under a running daemon is noticed before a revocation needs it.
        """
        with self._lock:
            doc = _read_doc(self.path)
            if doc.get("kdf") != self._doc.get("kdf"):
                raise WalletError(
                    f"{self.path}: the wallet password was changed; restart Sentinel to use the new wallet"
                )
            _verify_mac(doc, self._keys, self.path)
            count = 0
            for kind in ("account", "provider"):
                for name in list(self._table(kind)):
                    self._read_record(kind, name)
                    count += 1
        return count

    # -- internals --
    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _table(self, kind: str) -> dict[str, Any]:
        table: dict[str, Any] = self._doc["accounts" if kind == "account" else "providers"]
        return table

    def _unwrap(self, kind: str, name: str, item: Mapping[str, Any]) -> bytes:
        try:
            return _open(self._keys.kek, item.get("key"), _aad(kind, name, "key"))
        except InvalidTag:
            raise WalletTampered(f"wallet {kind} record {name!r} fails authentication: refusing it") from None

    def _read_record(self, kind: str, name: str) -> dict[str, Any] | None:
        item = self._table(kind).get(name)
        if item is None:
            return None
        data_key = self._unwrap(kind, name, item)
        try:
            plaintext = _open(data_key, item.get("data"), _aad(kind, name, "data"))
        except InvalidTag:
            raise WalletTampered(f"wallet {kind} record {name!r} fails authentication: refusing it") from None
        doc: dict[str, Any] = json.loads(plaintext)
        return doc

    def _write_record(self, kind: str, name: str, doc: Mapping[str, Any]) -> None:
        if not name or any(ord(c) < 32 for c in name):
            raise WalletError(f"invalid {kind} name {name!r}")
        data_key = AESGCM.generate_key(bit_length=256)
        self._table(kind)[name] = {
            "key": _seal(self._keys.kek, data_key, _aad(kind, name, "key")),
            "data": _seal(data_key, json.dumps(doc, sort_keys=True).encode(), _aad(kind, name, "data")),
        }


def _check_new_password(password: str) -> None:
    if len(password) < 8:
        raise WalletError("the wallet password must have at least 8 characters")


def _read_doc(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise WalletError(f"{path}: no wallet here (create one with `sentinel wallet init`)") from None
    except OSError as exc:
        raise WalletError(f"{path}: cannot read the wallet: {exc.strerror or exc}") from None
    try:
        doc = json.loads(raw)
    except ValueError:
        raise WalletTampered(
            f"{path}: the wallet file is not valid JSON (modified or truncated): refusing it"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise WalletTampered(f"{path}: not a Sentinel wallet file")
    if doc.get("version") != VERSION:
        raise WalletError(f"{path}: wallet format version {doc.get('version')!r} is not supported")
    if not isinstance(doc.get("kdf"), dict) or not isinstance(doc.get("providers"), dict):
        raise WalletTampered(f"{path}: the wallet file is malformed: refusing it")
    if not isinstance(doc.get("accounts"), dict):
        raise WalletTampered(f"{path}: the wallet file is malformed: refusing it")
    return doc


def _unlock(doc: Mapping[str, Any], password: str) -> _Keys:
    kdf = doc["kdf"]
    keys = _Keys(_derive_master(password, kdf))
    try:
        plaintext = _open(keys.kek, doc.get("check"), _aad("check", "", json.dumps(kdf, sort_keys=True)))
    except InvalidTag:
        raise WrongPassword("wrong wallet password (nothing was decrypted)") from None
    if not hmac.compare_digest(plaintext, _CHECK_PLAINTEXT):
        raise WrongPassword("wrong wallet password (nothing was decrypted)")
    return keys


def _verify_mac(doc: Mapping[str, Any], keys: _Keys, path: Path) -> None:
    expected = hmac.digest(keys.mac, _canonical(doc), "sha256")
    if not hmac.compare_digest(expected, _unb64(doc.get("mac", ""))):
        raise WalletTampered(f"{path}: the wallet file was modified (authentication failed): refusing it")


# -- where the password comes from ---------------------------------------------------------------


class WalletSettings(BaseModel):
    """``[wallet]``: where the wallet is and which systemd credential unlocks it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The wallet file (default: ``<state_dir>/wallet.json``).
    path: Path | None = None
    #: Name of the systemd credential holding the password, read from ``$CREDENTIALS_DIRECTORY``.
    credential: str = CREDENTIAL_NAME

    def file(self, state_dir: Path) -> Path:
        return self.path if self.path is not None else state_dir / "wallet.json"


def read_password_fd(fd: int) -> str:
    """The password written to inherited file descriptor ``fd`` (first line; the fd is closed)."""
    try:
        with os.fdopen(fd, "rb", closefd=True) as fh:
            data = fh.read(_MAX_PASSWORD_BYTES + 1)
    except OSError as exc:
        raise WalletError(f"cannot read the wallet password from file descriptor {fd}: {exc.strerror or exc}") from None
    return _password_text(data, f"file descriptor {fd}")


def _password_text(data: bytes, origin: str) -> str:
    if len(data) > _MAX_PASSWORD_BYTES:
        raise WalletError(f"the wallet password from {origin} is too long")
    text = data.decode("utf-8", errors="strict").split("\n", 1)[0].rstrip("\r")
    if not text:
        raise WalletError(f"the wallet password from {origin} is empty")
    return text


def daemon_password(
    settings: WalletSettings,
    *,
    fd: int | None = None,
    environ: dict[str, str] | os._Environ[str] | None = None,
    stdin: IO[str] | None = None,
) -> str:
    """The wallet password for ``sentinel run``, from (first found):

    1. an inherited file descriptor (``--wallet-password-fd N`` or ``SENTINEL_WALLET_PASSWORD_FD``);
    2. the systemd credential ``$CREDENTIALS_DIRECTORY/<credential>`` (``LoadCredentialEncrypted=``);
    3. ``SENTINEL_TEST_WALLET_PASSWORD`` — for tests only, with a warning, removed from the
       environment once read so that no child inherits it;
    4. a prompt, when standard input is a terminal.

    Never from the configuration file or the command line.
    """
    env = os.environ if environ is None else environ
    if fd is None and env.get(PASSWORD_FD_ENV):
        try:
            fd = int(env[PASSWORD_FD_ENV])
        except ValueError:
            raise WalletError(f"{PASSWORD_FD_ENV} must be a file descriptor number") from None
    if fd is not None:
        return read_password_fd(fd)
    creds = env.get("CREDENTIALS_DIRECTORY")
    if creds:
        path = Path(creds) / settings.credential
        if path.is_file():
            try:
                return _password_text(path.read_bytes(), f"credential {settings.credential}")
            except OSError as exc:
                raise WalletError(f"cannot read credential {path}: {exc.strerror or exc}") from None
    test = env.get(TEST_PASSWORD_ENV)
    if test is not None:
        log.warning("wallet password taken from %s: for tests only, never in production", TEST_PASSWORD_ENV)
        env.pop(TEST_PASSWORD_ENV, None)
        return _password_text(test.encode(), TEST_PASSWORD_ENV)
    stream = stdin if stdin is not None else sys.stdin
    if stream is not None and stream.isatty():
        return getpass.getpass("Sentinel wallet password: ")
    raise WalletError(
        "no wallet password: provide it as the systemd credential "
        f"{settings.credential!r} (LoadCredentialEncrypted=), on an inherited file descriptor "
        f"(--wallet-password-fd N / {PASSWORD_FD_ENV}), or start Sentinel on a terminal to be asked"
    )


def open_wallet(path: Path, password: str) -> Wallet:
    """Open ``path``, check every record's tag now (not at the first revocation), warn if others can read it.

    Decrypting every record also registers every secret with :func:`redact` from the start.
    """
    wallet = Wallet.open(path, password)
    for name in wallet.providers():
        wallet.provider(name)
    for name in wallet.accounts():
        wallet.account(name)
    with contextlib.suppress(OSError):
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            log.warning("%s is readable by other users: chmod 600 it", path)
    return wallet
