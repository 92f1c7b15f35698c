"""The wallet: per-record AES-256-GCM keys wrapped under a password-derived key, tamper
detection, password rotation, where the daemon's password comes from, the CLI, and secrets
that never show in repr/str/messages."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sentinel import wallet as wallet_mod
from sentinel.config import Settings, load_settings
from sentinel.responders.alerts import AlertSettings
from sentinel.responders.oauth import OAuthSettings
from sentinel.wallet import (
    TEST_KDF,
    AccountRecord,
    Entry,
    ProviderCredentials,
    Secret,
    Wallet,
    WalletError,
    WalletSettings,
    WalletTampered,
    WrongPassword,
    daemon_password,
    redact,
)
from sentinel.wallet_cli import main as wallet_main

PASSWORD = "correct horse battery staple"
TOKEN_A = "ya29.token-A-0123456789abcdefghij"
TOKEN_B = "1//refresh-token-B-9876543210zyxw"
CLIENT_SECRET = "client-secret-XYZ-0123456789"


@pytest.fixture
def wallet(tmp_path: Path) -> Wallet:
    w = Wallet.create(tmp_path / "wallet.json", PASSWORD, kdf=TEST_KDF)
    w.set_provider("corp", ProviderCredentials("sentinel-app", Secret(CLIENT_SECRET)))
    w.add_entry("alice", "corp", token=TOKEN_A, hint="access_token")
    w.add_entry("alice", "corp", token=TOKEN_B, hint="refresh_token")
    w.add_entry("bob", "entra", subject="bob@contoso.example")
    w.save()
    return w


def _doc(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def test_round_trip_and_nothing_in_clear(wallet: Wallet) -> None:
    raw = wallet.path.read_bytes()
    for secret in (TOKEN_A, TOKEN_B, CLIENT_SECRET, PASSWORD, "sentinel-app", "bob@contoso.example"):
        assert secret.encode() not in raw
    assert oct(wallet.path.stat().st_mode & 0o777) == "0o600"
    doc = _doc(wallet.path)
    assert doc["kdf"]["name"] == "argon2id" and "salt" in doc["kdf"] and "memory_kib" in doc["kdf"]
    # Each record has its own wrapped key: no two records share key or data blobs.
    blobs = [r["key"] for table in ("accounts", "providers") for r in doc[table].values()]
    assert len(set(blobs)) == len(blobs) == 3

    again = Wallet.open(wallet.path, PASSWORD)
    assert again.accounts() == ["alice", "bob"] and again.providers() == ["corp"]
    alice = again.account("alice")
    assert alice is not None
    assert [e.token.reveal() for e in alice.entries if e.token] == [TOKEN_A, TOKEN_B]
    assert [e.hint for e in alice.entries] == ["access_token", "refresh_token"]
    bob = again.account("bob")
    assert bob is not None and bob.entries[0].kind == "sessions" and bob.entries[0].subject == "bob@contoso.example"
    creds = again.provider("corp")
    assert creds is not None and creds.client_id == "sentinel-app"
    assert creds.client_secret is not None and creds.client_secret.reveal() == CLIENT_SECRET
    assert again.account("carol") is None and again.provider("nope") is None


def test_default_kdf_parameters_are_strong() -> None:
    kdf = wallet_mod.default_kdf()
    if kdf["name"] == "argon2id":
        assert kdf["memory_kib"] >= 65536 and kdf["iterations"] >= 3
    else:
        assert kdf["n"] >= 2**17


def test_scrypt_wallets_open_too(tmp_path: Path) -> None:
    w = Wallet.create(tmp_path / "w.json", PASSWORD, kdf={"name": "scrypt", "n": 2**12, "r": 8, "p": 1})
    w.add_entry("alice", "corp", token=TOKEN_A)
    w.save()
    record = Wallet.open(tmp_path / "w.json", PASSWORD).account("alice")
    assert record is not None and record.entries[0].token == Secret(TOKEN_A)


def test_wrong_password_is_one_clear_error_and_decrypts_nothing(
    wallet: Wallet, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bytes] = []
    real_open = wallet_mod._open

    def counting_open(key: bytes, sealed: Any, aad: bytes) -> bytes:
        calls.append(aad)
        return real_open(key, sealed, aad)

    monkeypatch.setattr(wallet_mod, "_open", counting_open)
    with pytest.raises(WrongPassword) as info:
        Wallet.open(wallet.path, "not the password")
    assert str(info.value) == "wrong wallet password (nothing was decrypted)"
    assert len(calls) == 1 and b'"check"' in calls[0], "only the password check was attempted"


def _rewrite(path: Path, change: Any) -> None:
    doc = _doc(path)
    change(doc)
    path.write_text(json.dumps(doc))


def _flip(blob: str) -> str:
    raw = bytearray(base64.b64decode(blob))
    raw[-1] ^= 1
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda d: d["accounts"]["alice"].update(data=_flip(d["accounts"]["alice"]["data"])), id="data"),
        pytest.param(lambda d: d["accounts"]["alice"].update(key=_flip(d["accounts"]["alice"]["key"])), id="key"),
        pytest.param(lambda d: d["accounts"].pop("bob"), id="removed-record"),
        pytest.param(
            lambda d: d["accounts"].update(alice=d["accounts"]["bob"], bob=d["accounts"]["alice"]), id="swapped"
        ),
        pytest.param(lambda d: d["providers"].update(evil=d["providers"]["corp"]), id="copied-record"),
        pytest.param(lambda d: d.update(mac=_flip(d["mac"])), id="mac"),
    ],
)
def test_modified_wallet_is_refused(wallet: Wallet, change: Any) -> None:
    _rewrite(wallet.path, change)
    with pytest.raises(WalletTampered, match="modified"):
        Wallet.open(wallet.path, PASSWORD)


def test_truncated_or_foreign_file_is_refused(wallet: Wallet) -> None:
    data = wallet.path.read_bytes()
    wallet.path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WalletTampered):
        Wallet.open(wallet.path, PASSWORD)
    wallet.path.write_text('{"hello": "world"}')
    with pytest.raises(WalletTampered, match="not a Sentinel wallet"):
        Wallet.open(wallet.path, PASSWORD)


def test_each_record_is_authenticated_by_its_gcm_tag(wallet: Wallet) -> None:
    """Even past the file MAC, a record's own tag refuses changed data or a record moved to another name."""
    doc = _doc(wallet.path)
    keys = wallet._keys
    flipped = json.loads(json.dumps(doc))
    flipped["accounts"]["alice"]["data"] = _flip(doc["accounts"]["alice"]["data"])
    with pytest.raises(WalletTampered, match="alice"):
        Wallet(wallet.path, flipped, keys).account("alice")
    moved = json.loads(json.dumps(doc))
    moved["accounts"]["mallory"] = moved["accounts"]["alice"]
    with pytest.raises(WalletTampered, match="mallory"):
        Wallet(wallet.path, moved, keys).account("mallory")


def test_changed_kdf_parameters_cannot_open(wallet: Wallet) -> None:
    _rewrite(wallet.path, lambda d: d["kdf"].update(iterations=2))
    with pytest.raises(WrongPassword):
        Wallet.open(wallet.path, PASSWORD)


def test_rotate_password_rewraps_keys_without_reencrypting_data(wallet: Wallet) -> None:
    before = _doc(wallet.path)
    wallet.rotate_password("a new password for the wallet")
    after = _doc(wallet.path)
    for table in ("accounts", "providers"):
        for name in before[table]:
            assert after[table][name]["data"] == before[table][name]["data"], "data is not re-encrypted"
            assert after[table][name]["key"] != before[table][name]["key"], "the record key is re-wrapped"
    assert after["kdf"]["salt"] != before["kdf"]["salt"]
    with pytest.raises(WrongPassword):
        Wallet.open(wallet.path, PASSWORD)
    reopened = Wallet.open(wallet.path, "a new password for the wallet")
    record = reopened.account("alice")
    assert record is not None and record.entries[1].token == Secret(TOKEN_B)


def test_short_password_refused(tmp_path: Path) -> None:
    with pytest.raises(WalletError, match="at least 8"):
        Wallet.create(tmp_path / "w.json", "short", kdf=TEST_KDF)


def test_running_daemon_sees_additions_but_not_a_rotated_wallet(wallet: Wallet) -> None:
    daemon_copy = Wallet.open(wallet.path, PASSWORD)
    assert daemon_copy.reload_if_changed() is False
    editor = Wallet.open(wallet.path, PASSWORD)
    editor.add_entry("carol", "corp", token="carol-token-0123456789")
    editor.save()
    assert daemon_copy.reload_if_changed() is True
    assert daemon_copy.account("carol") is not None
    editor.rotate_password("another password entirely")
    with pytest.raises(WalletError, match="password was changed"):
        daemon_copy.reload_if_changed()
    assert daemon_copy.account("carol") is not None, "the loaded records stay usable"


def test_remove_entry_account_provider(wallet: Wallet) -> None:
    record = wallet.account("alice")
    assert record is not None
    assert wallet.remove_entry("alice", record.entries[0].id)
    remaining = wallet.account("alice")
    assert remaining is not None and len(remaining.entries) == 1
    assert wallet.remove_entry("alice", remaining.entries[0].id)
    assert wallet.account("alice") is None, "an account without entries is removed"
    assert not wallet.remove_entry("alice", "nope")
    assert wallet.remove_provider("corp") and not wallet.remove_provider("corp")
    wallet.save()
    assert Wallet.open(wallet.path, PASSWORD).accounts() == ["bob"]


def test_secrets_never_show_in_repr_str_or_messages(wallet: Wallet) -> None:
    creds = wallet.provider("corp")
    record = wallet.account("alice")
    assert creds is not None and record is not None
    shown = [
        repr(wallet),
        str(wallet),
        repr(creds),
        str(creds),
        repr(record),
        str(record),
        repr(record.entries[0]),
        f"{record.entries[0].token}",
        "%s" % creds.client_secret,  # noqa: UP031 - the old style is what logging uses
        repr(wallet._keys),
    ]
    for text in shown:
        for secret in (TOKEN_A, TOKEN_B, CLIENT_SECRET, PASSWORD):
            assert secret not in text
    with pytest.raises(TypeError):
        pickle.dumps(Secret("never pickled"))
    assert Secret("abcd1234") == Secret("abcd1234") and Secret("abcd1234") != Secret("abcd12345")


def test_redact_hides_registered_secrets_in_any_form() -> None:
    Secret("s3cr3t+value/with=chars")
    text = "a=s3cr3t+value/with=chars b=s3cr3t%2Bvalue%2Fwith%3Dchars c=s3cr3t%2Bvalue%2Fwith%3Dchars"
    assert redact(text) == "a=[redacted] b=[redacted] c=[redacted]"
    assert redact("abc") == "abc"


# -- where the daemon's password comes from ------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_password_from_an_inherited_fd() -> None:
    read, write = os.pipe()
    os.write(write, b"from the pipe\n")
    os.close(write)
    assert daemon_password(WalletSettings(), fd=read, environ={}) == "from the pipe"
    with pytest.raises(OSError):
        os.fstat(read)  # closed after reading

    read, write = os.pipe()
    os.write(write, b"via the environment\n")
    os.close(write)
    env = {"SENTINEL_WALLET_PASSWORD_FD": str(read)}
    assert daemon_password(WalletSettings(), environ=env) == "via the environment"


def test_password_from_a_systemd_credential(tmp_path: Path) -> None:
    (tmp_path / "wallet-password").write_text("from systemd\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path), "SENTINEL_TEST_WALLET_PASSWORD": "not this one"}
    assert daemon_password(WalletSettings(), environ=env) == "from systemd"
    (tmp_path / "other").write_text("named credential")
    assert daemon_password(WalletSettings(credential="other"), environ=env) == "named credential"


def test_test_only_environment_variable_is_consumed_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    env = {"SENTINEL_TEST_WALLET_PASSWORD": "test password"}
    with caplog.at_level(logging.WARNING):
        assert daemon_password(WalletSettings(), environ=env, stdin=io.StringIO()) == "test password"
    assert "SENTINEL_TEST_WALLET_PASSWORD" not in env, "removed so children do not inherit it"
    assert "tests only" in caplog.text


def test_password_prompt_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    prompts: list[str] = []

    def fake_getpass(prompt: str) -> str:
        prompts.append(prompt)
        return "typed"

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    assert daemon_password(WalletSettings(), environ={}, stdin=_Tty()) == "typed"
    assert prompts == ["Sentinel wallet password: "]


def test_no_password_source_is_a_clear_error() -> None:
    with pytest.raises(WalletError, match="no wallet password"):
        daemon_password(WalletSettings(), environ={}, stdin=io.StringIO())


def test_settings_loader_ignores_the_password_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SENTINEL_* variables are read by pydantic-settings: these two must match no field."""
    monkeypatch.setenv("SENTINEL_TEST_WALLET_PASSWORD", "x" * 12)
    monkeypatch.setenv("SENTINEL_WALLET_PASSWORD_FD", "9")
    assert load_settings(None) is not None

    class Wired(Settings):  # the configuration once [wallet], [oauth] and [alerts] are wired in
        wallet: WalletSettings = WalletSettings()
        oauth: OAuthSettings = OAuthSettings()
        alerts: AlertSettings = AlertSettings()

    wired = Wired()
    assert wired.wallet == WalletSettings()
    dumped = wired.model_dump_json()
    assert "x" * 12 not in dumped


# -- the command line ----------------------------------------------------------------------------


@pytest.fixture
def fds() -> Iterator[Any]:
    """``fd(text)``: a readable file descriptor holding ``text``."""
    opened: list[int] = []

    def make(text: str) -> int:
        read, write = os.pipe()
        os.write(write, text.encode() + b"\n")
        os.close(write)
        opened.append(read)
        return read

    yield make
    for fd in opened:
        with contextlib.suppress(OSError):
            os.close(fd)


@pytest.fixture(autouse=False)
def cheap_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wallet_mod, "default_kdf", lambda: dict(TEST_KDF))


def test_cli_init_add_list_remove_rotate(
    tmp_path: Path, fds: Any, cheap_kdf: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "w.json"
    w = ["--wallet", str(path)]

    def run(*args: str, stdin: str | None = None) -> int:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        return wallet_main(list(args))

    assert run("init", *w, "--password-fd", str(fds(PASSWORD))) == 0
    assert run("init", *w, "--password-fd", str(fds(PASSWORD))) == 2, "never overwrite by accident"
    assert (
        run(
            "add",
            "provider",
            "corp",
            *w,
            "--client-id",
            "app-1",
            "--password-fd",
            str(fds(PASSWORD)),
            "--secret-fd",
            str(fds(CLIENT_SECRET)),
        )
        == 0
    )
    assert (
        run(
            "add",
            "token",
            "alice",
            "--provider",
            "corp",
            "--hint",
            "refresh_token",
            *w,
            "--password-fd",
            str(fds(PASSWORD)),
            stdin=TOKEN_A + "\n",
        )
        == 0
    )
    assert (
        run(
            "add",
            "sessions",
            "bob",
            "--provider",
            "entra",
            "--subject",
            "bob@contoso.example",
            *w,
            "--password-fd",
            str(fds(PASSWORD)),
        )
        == 0
    )
    capsys.readouterr()
    assert run("list", *w, "--json", "--password-fd", str(fds(PASSWORD))) == 0
    out = capsys.readouterr().out
    listing = json.loads(out)
    assert listing["providers"] == {"corp": {"client_id": "app-1", "secret": True}}
    assert [e["hint"] for e in listing["accounts"]["alice"]] == ["refresh_token"]
    assert listing["accounts"]["bob"][0]["subject"] == "bob@contoso.example"
    assert run("list", *w, "--password-fd", str(fds(PASSWORD))) == 0
    out += capsys.readouterr().out
    assert TOKEN_A not in out and CLIENT_SECRET not in out

    assert run("list", *w, "--password-fd", str(fds("wrong password!"))) == 1
    err = capsys.readouterr().err
    assert err.strip() == "sentinel wallet: wrong wallet password (nothing was decrypted)"

    entry = listing["accounts"]["alice"][0]["id"]
    assert run("remove", "account", "alice", "--entry", entry, *w, "--password-fd", str(fds(PASSWORD))) == 0
    assert run("remove", "account", "alice", *w, "--password-fd", str(fds(PASSWORD))) == 1
    assert run("remove", "provider", "corp", *w, "--password-fd", str(fds(PASSWORD))) == 0
    assert (
        run(
            "rotate-password",
            *w,
            "--password-fd",
            str(fds(PASSWORD)),
            "--new-password-fd",
            str(fds("rotated password")),
        )
        == 0
    )
    assert Wallet.open(path, "rotated password").accounts() == ["bob"]


def test_cli_refuses_to_prompt_without_a_terminal(tmp_path: Path, cheap_kdf: None, fds: Any) -> None:
    path = tmp_path / "w.json"
    assert wallet_main(["init", "--wallet", str(path), "--password-fd", str(fds(PASSWORD))]) == 0
    proc = subprocess.run(
        [sys.executable, "-m", "sentinel.wallet_cli", "list", "--wallet", str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")},
        timeout=30,
    )
    assert proc.returncode == 2
    assert "--password-fd" in proc.stderr


def test_account_record_type() -> None:
    entry = Entry(id="1", provider="p", kind="token", token=Secret("tok-0123456789"))
    assert Entry.from_json(entry.to_json()) == entry
    assert AccountRecord((entry,)).entries[0].token == Secret("tok-0123456789")
