"""``sentinel wallet init|add|list|remove|rotate-password``: manage the encrypted wallet.

Passwords and secrets are never taken from the command line (it shows in ``ps`` and shell
history): the password comes from ``--password-fd N`` or a prompt, a token or client secret
from ``--secret-fd N``, standard input when it is not a terminal, or a prompt.  Values are
never printed back; ``list`` shows names, ids and providers only.

Importing this module is cheap (the ``sentinel`` parser imports it for every command);
cryptography is loaded only when a wallet command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sentinel.wallet import Wallet

_HINTS = ("refresh_token", "access_token")


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="configuration file (default: $SENTINEL_CONFIG or /etc/sentinel/config.toml)",
    )
    common.add_argument(
        "--wallet", type=Path, default=None, metavar="PATH", help="wallet file (default: [wallet] path)"
    )
    common.add_argument(
        "--password-fd",
        type=int,
        default=None,
        metavar="N",
        help="read the wallet password from file descriptor N instead of prompting",
    )
    return common


def add_wallet_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``wallet`` and its actions to the ``sentinel`` subparsers ``sub``."""
    common = _common()
    wallet: argparse.ArgumentParser = sub.add_parser(
        "wallet",
        help="manage the encrypted wallet of tokens to revoke",
        description="The wallet holds, encrypted under a password that is stored on no server, what "
        "OAuth token revocation needs: per account the tokens (or the provider's user id) to revoke, "
        "per identity provider the client credentials.  Secrets are read from a prompt, from standard "
        "input or from an inherited file descriptor, never from the command line.",
    )
    actions = wallet.add_subparsers(dest="wallet_command", metavar="ACTION", required=True)

    p = actions.add_parser("init", parents=[common], help="create a new, empty wallet")
    p.add_argument("--force", action="store_true", help="replace an existing wallet (its contents are lost)")
    p.add_argument(
        "--kdf",
        choices=("argon2id", "scrypt"),
        default=None,
        help="password key derivation (default: argon2id when available)",
    )

    add = actions.add_parser("add", help="add a provider's credentials or an account's token")
    add_kinds = add.add_subparsers(dest="add_kind", metavar="KIND", required=True)
    p = add_kinds.add_parser(
        "provider",
        parents=[common],
        help="store the client credentials Sentinel authenticates with at an identity provider",
        description="Store (or replace) the OAuth client id and secret for provider NAME (the name of an "
        "[oauth.providers.NAME] table).  The secret is read from --secret-fd, standard input, or a prompt.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--client-id", default=None, help="the OAuth client id (application id for Entra ID)")
    p.add_argument("--no-secret", action="store_true", help="a public client: store no secret")
    p.add_argument("--secret-fd", type=int, default=None, metavar="N", help="read the secret from file descriptor N")
    p = add_kinds.add_parser(
        "token",
        parents=[common],
        help="add a token to revoke for an account",
        description="Add an OAuth token issued by PROVIDER to revoke when ACCOUNT is compromised.  The token "
        "is read from --secret-fd, standard input, or a prompt.",
    )
    p.add_argument("account", metavar="ACCOUNT", help="the account name as the logs show it (user.name)")
    p.add_argument("--provider", required=True, help="the [oauth.providers.NAME] that issued the token")
    p.add_argument("--hint", choices=_HINTS, default=None, help="RFC 7009 token_type_hint")
    p.add_argument("--secret-fd", type=int, default=None, metavar="N", help="read the token from file descriptor N")
    p = add_kinds.add_parser(
        "sessions",
        parents=[common],
        help="revoke all of a user's sign-in sessions at a provider (Microsoft Entra ID)",
    )
    p.add_argument("account", metavar="ACCOUNT", help="the account name as the logs show it (user.name)")
    p.add_argument("--provider", required=True, help="the [oauth.providers.NAME] of type entra")
    p.add_argument("--subject", required=True, help="the user's object id or userPrincipalName at the provider")

    p = actions.add_parser("list", parents=[common], help="list providers and accounts (never the secrets)")
    p.add_argument("--json", action="store_true", help="one JSON document")

    remove = actions.add_parser("remove", help="remove an account, one of its entries, or a provider")
    remove_kinds = remove.add_subparsers(dest="remove_kind", metavar="KIND", required=True)
    p = remove_kinds.add_parser("account", parents=[common], help="remove an account (or one entry with --entry)")
    p.add_argument("account", metavar="ACCOUNT")
    p.add_argument("--entry", default=None, metavar="ID", help="remove only this entry (see `list`)")
    p = remove_kinds.add_parser("provider", parents=[common], help="remove a provider's credentials")
    p.add_argument("name", metavar="NAME")

    p = actions.add_parser(
        "rotate-password",
        parents=[common],
        help="change the wallet password (re-wraps the record keys; data is not re-encrypted)",
    )
    p.add_argument(
        "--new-password-fd", type=int, default=None, metavar="N", help="read the new password from file descriptor N"
    )
    return wallet


# -- reading passwords and secrets ---------------------------------------------------------------


class _Refused(Exception):
    """A usage problem; the message is printed and the exit status is 2."""


def _password(fd: int | None, prompt: str) -> str:
    from sentinel.wallet import TEST_PASSWORD_ENV, read_password_fd

    if fd is not None:
        return read_password_fd(fd)
    test = os.environ.get(TEST_PASSWORD_ENV)
    if test is not None:  # tests only (documented in sentinel.wallet)
        return test
    if not sys.stdin.isatty():
        raise _Refused("standard input is not a terminal: give the wallet password with --password-fd N")
    return getpass.getpass(prompt)


def _new_password(fd: int | None) -> str:
    if fd is not None:
        return _password(fd, "")
    from sentinel.wallet import TEST_PASSWORD_ENV

    if os.environ.get(TEST_PASSWORD_ENV) is not None:
        return os.environ[TEST_PASSWORD_ENV]
    first = _password(None, "New wallet password: ")
    if getpass.getpass("Repeat the new wallet password: ") != first:
        raise _Refused("the passwords do not match")
    return first


def _secret(fd: int | None, what: str) -> str:
    from sentinel.wallet import read_password_fd

    if fd is not None:
        return read_password_fd(fd)
    value = getpass.getpass(f"{what}: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise _Refused(f"empty {what}")
    return value


# -- the commands --------------------------------------------------------------------------------


def run_wallet(args: argparse.Namespace, default_path: Path) -> int:
    """Run one ``sentinel wallet`` action; 0 on success, 1 on a wallet error, 2 on a usage error."""
    from sentinel.wallet import WalletError

    path: Path = args.wallet if args.wallet is not None else default_path
    try:
        with _locked(path):  # two administrators editing at once must not lose a change
            return _run(args, path)
    except _Refused as exc:
        print(f"sentinel wallet: {exc}", file=sys.stderr)
        return 2
    except WalletError as exc:
        print(f"sentinel wallet: {exc}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<wallet>.lock`` (beside the wallet) while a command runs."""
    import fcntl

    from sentinel.wallet import WalletError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise WalletError(f"cannot lock {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _open(args: argparse.Namespace, path: Path) -> Wallet:
    from sentinel.wallet import Wallet

    if not path.exists():
        from sentinel.wallet import WalletError

        raise WalletError(f"{path}: no wallet here (create one with `sentinel wallet init`)")
    return Wallet.open(path, _password(args.password_fd, "Wallet password: "))


def _run(args: argparse.Namespace, path: Path) -> int:
    from sentinel.wallet import SCRYPT_DEFAULT, ProviderCredentials, Secret, Wallet, default_kdf

    action = args.wallet_command
    if action == "init":
        if path.exists() and not args.force:
            raise _Refused(f"{path} already exists (--force replaces it; its contents are lost)")
        kdf = dict(SCRYPT_DEFAULT) if args.kdf == "scrypt" else default_kdf()
        wallet = Wallet.create(path, _new_password(args.password_fd), kdf=kdf, overwrite=True)
        print(f"created {path} ({kdf['name']})")
        return 0
    if action == "rotate-password":
        wallet = _open(args, path)
        wallet.rotate_password(_new_password(args.new_password_fd))
        print(f"{path}: password changed ({len(wallet.accounts())} accounts, {len(wallet.providers())} providers)")
        return 0
    if action == "list":
        return _list(_open(args, path), args.json)
    if action == "add":
        wallet = _open(args, path)
        if args.add_kind == "provider":
            secret = None if args.no_secret else Secret(_secret(args.secret_fd, f"client secret for {args.name}"))
            wallet.set_provider(args.name, ProviderCredentials(client_id=args.client_id, client_secret=secret))
            wallet.save()
            print(f"provider {args.name}: credentials stored")
            return 0
        if args.add_kind == "token":
            token = _secret(args.secret_fd, f"token for {args.account}")
            entry = wallet.add_entry(args.account, args.provider, token=token, hint=args.hint)
        else:
            entry = wallet.add_entry(args.account, args.provider, subject=args.subject)
        wallet.save()
        print(f"account {args.account}: added {entry.kind} entry {entry.id} ({entry.provider})")
        return 0
    # remove
    wallet = _open(args, path)
    if args.remove_kind == "provider":
        found = wallet.remove_provider(args.name)
        what = f"provider {args.name}"
    elif args.entry:
        found = wallet.remove_entry(args.account, args.entry)
        what = f"entry {args.entry} of account {args.account}"
    else:
        found = wallet.remove_account(args.account)
        what = f"account {args.account}"
    if not found:
        print(f"sentinel wallet: no {what} in {path}", file=sys.stderr)
        return 1
    wallet.save()
    print(f"removed {what}")
    return 0


def _list(wallet: Wallet, as_json: bool) -> int:
    providers: dict[str, Any] = {}
    for name in wallet.providers():
        creds = wallet.provider(name)
        assert creds is not None
        providers[name] = {"client_id": creds.client_id, "secret": creds.client_secret is not None}
    accounts: dict[str, Any] = {}
    for name in wallet.accounts():
        record = wallet.account(name)
        assert record is not None
        accounts[name] = [
            {"id": e.id, "kind": e.kind, "provider": e.provider, "hint": e.hint, "subject": e.subject, "added": e.added}
            for e in record.entries
        ]
    if as_json:
        print(json.dumps({"wallet": str(wallet.path), "providers": providers, "accounts": accounts}, indent=2))
        return 0
    print(f"wallet {wallet.path}: {len(providers)} providers, {len(accounts)} accounts")
    for name, p in providers.items():
        print(f"  provider {name}: client_id={p['client_id'] or '-'} secret={'stored' if p['secret'] else 'none'}")
    for name, entries in accounts.items():
        for e in entries:
            detail = f"subject={e['subject']}" if e["kind"] == "sessions" else (e["hint"] or "token")
            print(f"  account {name}: {e['id']} {e['kind']} at {e['provider']} ({detail}) added {e['added']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m sentinel.wallet_cli ACTION …``: the same commands without the ``sentinel`` front end."""
    parser = argparse.ArgumentParser(prog="sentinel")
    add_wallet_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["wallet", *(sys.argv[1:] if argv is None else argv)])
    default = args.wallet
    if default is None:
        from sentinel.config import ConfigError, load_settings
        from sentinel.wallet import WalletSettings

        config = args.config or Path(os.environ.get("SENTINEL_CONFIG", "/etc/sentinel/config.toml"))
        try:
            settings = load_settings(config if args.config is not None or config.exists() else None)
        except ConfigError as exc:
            print(f"sentinel: {exc}", file=sys.stderr)
            return 2
        wallet_settings = getattr(settings, "wallet", None) or WalletSettings()
        default = wallet_settings.file(settings.daemon.state_dir)
    return run_wallet(args, default)


if __name__ == "__main__":
    sys.exit(main())
