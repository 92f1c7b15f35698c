"""Elasticsearch as a backend: the authenticated client, and the auditor's queries on the data stream.

Connection rules a security tool owes its operators: TLS certificates are always verified
(against ``ca_certs`` or the system's CAs); plain ``http://`` is accepted for a node on loopback
only; the API key or password comes from a systemd credential or the wallet — never from the
configuration file — and is registered for redaction, so no log line, exception or Sentry
report can carry it.

Auditor semantics are those of :mod:`sentinel.store.audit`.  Erasure deletes the person's
documents with delete-by-query (Elasticsearch has no hash chain to keep verifiable) and indexes
the same ``audit-erase`` event the embedded store writes: who erased, when, why, how many — not
whose.  Documents naming the person that are still in a running daemon's spool are shipped
afterwards: ``sentinel audit erase`` warns while this host's spool is not empty, and erasing
again once it has drained removes them.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from elasticsearch import Elasticsearch

from sentinel.event import Event, event_id
from sentinel.responders.http import is_loopback
from sentinel.store.audit import Erasure, Hit, Page, Query, export_pages
from sentinel.store.base import StoreConfigError
from sentinel.store.maintenance import audit_event
from sentinel.store.records import AUDIT_DATASET, ERASE_ACTION, RELATED_USER, USER_FIELDS
from sentinel.wallet import register_secret

if TYPE_CHECKING:
    from sentinel.config import ElasticsearchSettings, Settings


class ElasticsearchConfigError(StoreConfigError):
    """The connection cannot be set up as configured (message meant for the operator)."""


def read_secret(es: ElasticsearchSettings, settings: Settings | None = None) -> str:
    """The API key or password: from ``$CREDENTIALS_DIRECTORY/<secret_name>`` or the wallet.

    Outside systemd (an operator running ``sentinel audit``), a terminal is asked instead.
    """
    if es.secret_from == "wallet":  # noqa: S105  (a source's name, not a secret)
        from sentinel.wallet import WalletError, WalletSettings, daemon_password, open_wallet

        wallet_settings = settings.wallet if settings is not None else WalletSettings()
        state_dir = settings.daemon.state_dir if settings is not None else Path("/var/lib/sentinel")
        path = wallet_settings.file(state_dir)
        if not path.exists():
            raise ElasticsearchConfigError(
                f"the Elasticsearch secret is to come from the wallet, but there is no wallet at {path}"
            )
        try:
            credentials = open_wallet(path, daemon_password(wallet_settings)).provider(es.secret_name)
        except WalletError as exc:
            raise ElasticsearchConfigError(f"cannot read the Elasticsearch secret from the wallet: {exc}") from None
        if credentials is None or credentials.client_secret is None:
            raise ElasticsearchConfigError(
                f"the wallet has no secret for {es.secret_name!r} "
                f"(add it: sentinel wallet add provider {es.secret_name} --client-id USER)"
            )
        return credentials.client_secret.reveal()
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory:
        path = Path(directory) / es.secret_name
        try:
            secret = path.read_text().strip()
        except OSError as exc:
            raise ElasticsearchConfigError(f"cannot read the credential {path}: {exc.strerror or exc}") from None
        if not secret:
            raise ElasticsearchConfigError(f"the credential {path} is empty")
        return secret
    if sys.stdin.isatty():
        return getpass.getpass(f"Elasticsearch {'API key' if es.auth == 'api_key' else 'password'}: ")
    raise ElasticsearchConfigError(
        f"no Elasticsearch secret: the systemd credential {es.secret_name!r} is not loaded "
        "($CREDENTIALS_DIRECTORY is unset; LoadCredentialEncrypted= in the unit provides it)"
    )


def connect(es: ElasticsearchSettings, settings: Settings | None = None, *, secret: str | None = None) -> Elasticsearch:
    """A client for ``es.hosts``, authenticated as configured; no retries of its own."""
    for host in es.hosts:
        if host.startswith("http://") and not is_loopback(host):
            raise ElasticsearchConfigError(
                f"refusing plain http to {host}: events and credentials would cross the network unencrypted (use https)"
            )
    if es.ca_certs is not None and not es.ca_certs.is_file():
        raise ElasticsearchConfigError(f"[store.elasticsearch] ca_certs: no such file {es.ca_certs}")
    options: dict[str, Any] = {}
    if es.auth != "none":
        value = secret if secret is not None else read_secret(es, settings)
        register_secret(value)
        if es.auth == "api_key":
            options["api_key"] = value
            if ":" not in value:  # the encoded form: its decoded "id:key" must not leak either
                with contextlib.suppress(ValueError, UnicodeDecodeError):
                    register_secret(base64.b64decode(value, validate=True).decode().split(":", 1)[-1])
        else:
            if not es.username:
                raise ElasticsearchConfigError('[store.elasticsearch] auth = "basic" needs a username')
            options["basic_auth"] = (es.username, value)
    if es.ca_certs is not None and any(h.startswith("https://") for h in es.hosts):
        options["ca_certs"] = str(es.ca_certs)
    return Elasticsearch(
        es.hosts,
        verify_certs=True,
        request_timeout=es.request_timeout,
        max_retries=0,
        retry_on_timeout=False,
        **options,
    )


# -- the auditor's interface ------------------------------------------------------------------


def user_query(user: str) -> dict[str, Any]:
    """Documents naming ``user`` in any of the user fields."""
    fields = [*USER_FIELDS, RELATED_USER]
    return {"bool": {"should": [{"term": {f: user}} for f in fields], "minimum_should_match": 1}}


def to_es_query(query: Query) -> dict[str, Any]:
    """The filters of ``query`` as an Elasticsearch bool query."""
    filters: list[dict[str, Any]] = []
    if query.since is not None or query.until is not None:
        span: dict[str, Any] = {"format": "epoch_millis"}
        if query.since is not None:
            span["gte"] = int(query.since * 1000)
        if query.until is not None:
            span["lt"] = int(query.until * 1000)
        filters.append({"range": {"@timestamp": span}})
    if query.network is not None:
        filters.append({"term": {"source.ip": str(query.network)}})
    if query.user is not None:
        filters.append(user_query(query.user))
    for field, value in (
        ("event.category", query.category),
        ("event.action", query.action),
        ("event.outcome", query.outcome),
        ("rule.id", query.rule),
        ("host.hostname", query.host),
    ):
        if value is not None:
            filters.append({"term": {field: value}})
    return {"bool": {"filter": filters}}


def _cursor(sort: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(sort)).decode()


def _uncursor(text: str) -> list[Any]:
    try:
        value = orjson.loads(base64.urlsafe_b64decode(text.encode()))
    except (ValueError, orjson.JSONDecodeError):
        raise ValueError(f"{text!r} is not a page cursor of this backend") from None
    if not isinstance(value, list):
        raise ValueError(f"{text!r} is not a page cursor of this backend")
    return value


class ElasticsearchAudit:
    """:class:`~sentinel.store.audit.AuditBackend` over the data stream."""

    def __init__(self, client: Elasticsearch, data_stream: str, hostname: str | None = None) -> None:
        self.client = client
        self.data_stream = data_stream
        self.hostname = hostname
        self.clock = time.time

    def search(self, query: Query) -> Page:
        limit = max(1, query.limit)
        extra: dict[str, Any] = {}
        if query.after is not None:
            extra["search_after"] = _uncursor(query.after)
        response = self.client.search(
            index=self.data_stream,
            query=to_es_query(query),
            sort=[{"@timestamp": "asc"}, {"event.id": "asc"}],
            size=limit + 1,
            track_total_hits=False,
            ignore_unavailable=True,
            **extra,
        )
        raw = response["hits"]["hits"]
        hits = [Hit(h["_id"], h["_source"]) for h in raw[:limit]]
        more = len(raw) > limit
        return Page(hits, _cursor(raw[limit - 1]["sort"]) if more else None)

    def export_user(self, user: str) -> Iterator[Hit]:
        return export_pages(self.search, user)

    def erase_user(self, user: str, *, actor: str, reason: str) -> Erasure:
        """Delete ``user``'s documents (delete-by-query), then index the erasure's audit event."""
        if not user:
            raise ValueError("a user name is required")
        request = uuid.uuid4().hex
        query = {"bool": {"filter": [user_query(user)], "must_not": [{"term": {"event.dataset": AUDIT_DATASET}}]}}
        # delete-by-query sees what a refresh made searchable: without one, documents indexed in
        # the last second (the refresh interval) would escape the erasure.
        self.client.indices.refresh(index=self.data_stream, ignore_unavailable=True)
        result = self.client.delete_by_query(
            index=self.data_stream, query=query, conflicts="proceed", refresh=True, wait_for_completion=True
        )
        deleted = int(result.get("deleted", 0))
        if result.get("failures"):
            raise RuntimeError(f"delete-by-query failed for some documents: {result['failures'][:3]}")
        event = audit_event(
            ERASE_ACTION,
            f"erased the personal data of {deleted} records at a data subject's request",
            self.clock(),
            self.hostname,
            **{
                "sentinel.audit.actor": actor,
                "sentinel.audit.reason": reason,
                "sentinel.erasure.request": request,
                "sentinel.erasure.count": deleted,
            },
        )
        event["event.id"] = event_id(event)
        self.client.create(index=self.data_stream, id=event["event.id"], document=event, refresh=True)
        return Erasure(request, deleted, [event["event.id"]])

    def close(self) -> None:
        self.client.close()


def audit_backend(settings: Settings, path: Path | None = None) -> ElasticsearchAudit:
    """The factory :func:`sentinel.store.audit.open_backend` looks for (``path`` is unused)."""
    es = settings.store.elasticsearch
    return ElasticsearchAudit(connect(es, settings), es.data_stream, settings.daemon.hostname)


def document(event: Event) -> tuple[str, bytes]:
    """The id and JSON body an event is indexed with (the id is also its ``event.id``)."""
    eid = event_id(event)
    if event.get("event.id") != eid:
        event = {**event, "event.id": eid}
    return eid, orjson.dumps(event)
