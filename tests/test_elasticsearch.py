"""Shipping to a real Elasticsearch 8.12 (TLS, API keys, ILM, data streams) and querying it.

The node (tests/es_server.py) starts once per run with security on.  Each test ships to its own
data stream; the client authenticates with an API key limited to the role the README documents
for Sentinel, so the documented privileges are proven sufficient.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from elasticsearch import AuthenticationException, Elasticsearch
from elasticsearch import ConnectionError as ESConnectionError

from sentinel.collectors.parsers import get_parser
from sentinel.collectors.sources.base import Batch
from sentinel.config import ElasticsearchSettings
from sentinel.event import Event, event_id
from sentinel.store.audit import Query, parse_network
from sentinel.store.elasticsearch import (
    ElasticsearchAudit,
    ElasticsearchConfigError,
    connect,
    read_secret,
    user_query,
)
from sentinel.store.es_schema import ilm_policy
from sentinel.store.records import users
from sentinel.store.shipper import OVERFLOW_ACTION, Shipper, ShippingStore
from sentinel.store.spool import Spool
from sentinel.store.sqlite import SQLiteStore
from sentinel.store.sqlite_audit import SQLiteAudit
from sentinel.store.withhold import WITHHELD, wait_for_in_flight, withhold
from tests.conftest import clean_env, wait_until
from tests.es_server import ElasticsearchServer
from tests.oidc.provider import free_port

GEN = Path(__file__).resolve().parents[2] / "shared" / "tools" / "gen_authlog.py"
MIB = 1024 * 1024
_streams = itertools.count(1)

#: What Sentinel needs in Elasticsearch (the README's role): set up its ILM policy and template,
#: create its data stream, append, read and (for erasure) delete its documents.
SENTINEL_ROLE: dict[str, Any] = {
    "cluster": ["monitor", "manage_ilm", "manage_index_templates"],
    "indices": [
        {
            "names": ["logs-sentinel-*"],
            # manage: ILM runs its rollover and delete steps with the privileges of whoever put
            # the policy, i.e. Sentinel's; delete: erasure by delete-by-query.
            "privileges": ["create_doc", "manage", "read", "delete"],
        }
    ],
}


@pytest.fixture(scope="module")
def server(elasticsearch_server: ElasticsearchServer) -> ElasticsearchServer:
    return elasticsearch_server


@pytest.fixture(scope="module")
def api_key(server: ElasticsearchServer) -> str:
    """An API key with Sentinel's role only (the base64 ``encoded`` form)."""
    admin = server.admin()
    key = admin.security.create_api_key(name="sentinel-test", role_descriptors={"sentinel": SENTINEL_ROLE})
    return str(key["encoded"])


@pytest.fixture
def es(server: ElasticsearchServer, tmp_path: Path) -> ElasticsearchSettings:
    """Settings for a data stream of this test's own."""
    return ElasticsearchSettings(
        hosts=[server.url],
        ca_certs=server.ca,
        auth="api_key",
        data_stream=f"logs-sentinel-t{next(_streams)}",
        spool_dir=tmp_path / "spool",
        bulk_max_docs=500,
    )


@pytest.fixture
def client(es: ElasticsearchSettings, api_key: str) -> Iterator[Elasticsearch]:
    c = connect(es, secret=api_key)
    yield c
    c.close()


def auth_events(lines: int, seed: int, tmp_path: Path) -> list[Event]:
    """Events parsed from a generated auth.log (real sshd/PAM/sudo lines)."""
    log = tmp_path / f"auth-{seed}.log"
    subprocess.run(
        [sys.executable, str(GEN), "--lines", str(lines), "--seed", str(seed), "--out", str(log)],
        check=True,
        capture_output=True,
    )
    parse = get_parser("syslog", 2026)
    events = [e for line in log.read_text().splitlines() if (e := parse(line)) is not None]
    assert len(events) > lines // 2
    return events


def open_store(
    es: ElasticsearchSettings, client: Elasticsearch, tmp_path: Path, retention_days: float = 730
) -> ShippingStore:
    spool = Spool(es.spool_path(tmp_path), es.spool_max_bytes, es.overflow)
    shipper = Shipper(client, es, retention_days, spool)
    shipper.start()
    return ShippingStore(SQLiteStore(tmp_path / "events.db"), spool, shipper, "test-host")


def driven_store(es: ElasticsearchSettings, client: Elasticsearch, tmp_path: Path) -> ShippingStore:
    """A ShippingStore whose shipper the test drives itself (set up; its thread not started)."""
    spool = Spool(es.spool_path(tmp_path), es.spool_max_bytes)
    shipper = Shipper(client, es, 730, spool)
    shipper.setup()
    return ShippingStore(SQLiteStore(tmp_path / "events.db"), spool, shipper)


def commit(store: ShippingStore, events: list[Event], size: int = 700) -> None:
    for i in range(0, len(events), size):
        store.commit_many([Batch("auth", events[i : i + size], {"offset": i + size})])


def wait_shipped(store: ShippingStore, timeout: float = 60.0) -> None:
    wait_until(lambda: store.spool.pending_bytes == 0, timeout=timeout, interval=0.1)


def ship_all(es: ElasticsearchSettings, client: Elasticsearch, tmp_path: Path, events: list[Event]) -> None:
    """Ship ``events`` through a ShippingStore and wait until Elasticsearch acknowledged them all."""
    store = open_store(es, client, tmp_path)
    commit(store, events)
    wait_shipped(store)
    store.close()


def count(admin: Elasticsearch, stream: str, query: dict[str, Any] | None = None) -> int:
    admin.indices.refresh(index=stream)
    return int(admin.count(index=stream, query=query or {"match_all": {}})["count"])


def duplicated_ids(admin: Elasticsearch, stream: str) -> list[str]:
    """``event.id`` values held by more than one document (exact: a terms aggregation, one shard)."""
    admin.indices.refresh(index=stream)
    result = admin.search(
        index=stream, size=0, aggs={"ids": {"terms": {"field": "event.id", "min_doc_count": 2, "size": 10}}}
    )
    return [b["key"] for b in result["aggregations"]["ids"]["buckets"]]


# -- set-up ----------------------------------------------------------------------------------------


def test_start_creates_ilm_policy_template_and_data_stream_once(
    es: ElasticsearchSettings, client: Elasticsearch, server: ElasticsearchServer, tmp_path: Path
) -> None:
    shipper = Shipper(client, es, 730, Spool(es.spool_path(tmp_path), MIB))
    shipper.setup()
    admin = server.admin()
    policy = admin.ilm.get_lifecycle(name=es.ilm_policy)[es.ilm_policy]
    phases = policy["policy"]["phases"]
    assert phases["hot"]["actions"]["rollover"] == {"max_age": "30d", "max_primary_shard_size": "50gb"}
    assert phases["delete"]["min_age"] == "63072000s"  # 730 days
    assert "delete" in phases["delete"]["actions"]
    template = admin.indices.get_index_template(name=es.data_stream)["index_templates"][0]["index_template"]
    props = template["template"]["mappings"]["properties"]
    assert props["source"]["properties"]["ip"] == {"type": "ip"}
    assert props["@timestamp"] == {"type": "date"}
    stream = admin.indices.get_data_stream(name=es.data_stream)["data_streams"][0]
    assert stream["ilm_policy"] == es.ilm_policy
    versions = (policy["version"], template.get("version"))
    # Idempotent: a second start changes nothing (the policy's version does not move).
    again = Shipper(client, es, 730, shipper.spool)
    again.setup()
    assert admin.ilm.get_lifecycle(name=es.ilm_policy)[es.ilm_policy]["version"] == versions[0]
    # A changed retention is an update.
    Shipper(client, es, 365, shipper.spool).setup()
    updated = admin.ilm.get_lifecycle(name=es.ilm_policy)[es.ilm_policy]
    assert updated["policy"]["phases"]["delete"]["min_age"] == "31536000s"
    assert updated["version"] == versions[0] + 1
    Shipper(client, es, 730, shipper.spool).setup()
    shipper.spool.close()


def test_ilm_deletes_rolled_over_indices_after_the_retention(
    es: ElasticsearchSettings, client: Elasticsearch, server: ElasticsearchServer, tmp_path: Path
) -> None:
    """The policy acts: a rolled-over backing index is deleted once its retention passed (here 2 s)."""
    es = es.model_copy(update={"ilm_policy": f"sentinel-short-{es.data_stream}"})
    store = open_store(es, client, tmp_path, retention_days=2 / 86400)
    commit(store, auth_events(300, 3, tmp_path)[:50])
    wait_shipped(store)
    admin = server.admin()
    first = admin.indices.get_data_stream(name=es.data_stream)["data_streams"][0]["indices"][0]["index_name"]
    admin.indices.rollover(alias=es.data_stream)
    try:
        wait_until(lambda: not admin.indices.exists(index=first), timeout=60, interval=0.5)
    except AssertionError:
        raise AssertionError(f"not deleted: {admin.ilm.explain_lifecycle(index=first)}") from None
    store.close()


# -- shipping and querying ------------------------------------------------------------------------


def test_shipped_events_answer_the_auditor_queries_like_the_embedded_store(
    es: ElasticsearchSettings, client: Elasticsearch, server: ElasticsearchServer, tmp_path: Path
) -> None:
    events = auth_events(4000, 5, tmp_path)
    ship_all(es, client, tmp_path, events)
    embedded = SQLiteStore(tmp_path / "embedded.db")
    embedded.commit_many([Batch("auth", events, {})])
    embedded.close()
    sql = SQLiteAudit(tmp_path / "embedded.db")
    remote = ElasticsearchAudit(client, es.data_stream)
    server.admin().indices.refresh(index=es.data_stream)  # Sentinel's role need not refresh
    failed = next(e for e in events if e.get("event.outcome") == "failure" and "source.ip" in e)
    user = next(e["user.name"] for e in events if e.get("user.name") and e.get("event.outcome") == "success")
    ip = str(failed["source.ip"])
    queries = [
        Query(network=parse_network(ip)),
        Query(network=parse_network(ip.rsplit(".", 2)[0] + ".0.0/16" if "." in ip else ip + "/64")),
        Query(user=user),
        Query(category="authentication", outcome="failure"),
        Query(action=str(failed.get("event.action")), since=1.0, until=4e9),
        Query(category="process"),
    ]
    for query in queries:
        both = []
        for backend in (sql, remote):
            ids: list[str] = []
            times: list[str] = []
            q = Query(**{**query.__dict__, "limit": 97})
            while True:
                page = backend.search(q)
                ids.extend(event_id(h.event) for h in page.hits)
                times.extend(str(h.event["@timestamp"]) for h in page.hits)
                if page.next is None:
                    break
                q = Query(**{**q.__dict__, "after": page.next})
            assert times == sorted(times), "results come in time order"
            assert len(ids) == len(set(ids)), "paging returns each event once"
            both.append(set(ids))
        assert both[0] == both[1], f"{query}: the backends disagree"
        assert both[0], f"{query}: the corpus should match something"
    exported = list(remote.export_user(user))
    assert {event_id(h.event) for h in exported} == {
        event_id(e)
        for e in events
        if user in (e.get("user.name"), e.get("user.effective.name"), e.get("user.target.name"))
    } | {event_id(e) for e in events if user in (e.get("related.user") or [])}
    sql.close()


def test_a_stopped_then_restarted_server_loses_and_duplicates_nothing(
    es: ElasticsearchSettings, client: Elasticsearch, server: ElasticsearchServer, tmp_path: Path
) -> None:
    events = auth_events(6000, 7, tmp_path)
    half = len(events) // 2
    store = open_store(es, client, tmp_path)
    commit(store, events[:half])
    wait_shipped(store)
    server.stop()
    try:
        commit(store, events[half:])  # spooled while the server is down
        wait_until(lambda: store.shipper.stats.requests_failed > 0, timeout=30)
        assert store.spool.pending_bytes > 0
        assert store.shipper.lag() is not None
    finally:
        server.start()
    wait_shipped(store, timeout=120)
    store.close()
    admin = server.admin()
    assert count(admin, es.data_stream) == len(events)
    assert duplicated_ids(admin, es.data_stream) == []


def test_a_resend_after_a_crash_before_the_acknowledgement_indexes_nothing_twice(
    es: ElasticsearchSettings, client: Elasticsearch, server: ElasticsearchServer, tmp_path: Path
) -> None:
    events = auth_events(2000, 9, tmp_path)
    store = driven_store(es, client, tmp_path)
    spool, shipper = store.spool, store.shipper
    commit(store, events)
    lines, _end = spool.read(len(events), 1 << 30, timeout=0)
    shipper._deliver(lines)  # delivered, then the process dies before spool.ack
    assert shipper.stats.shipped == len(events)
    spool.close()
    again = Spool(es.spool_path(tmp_path), es.spool_max_bytes)
    second = Shipper(client, es, 730, again)
    while second.ship_once(0):
        pass
    assert second.stats.duplicates == len(events)
    assert second.stats.shipped == 0
    assert count(server.admin(), es.data_stream) == len(events)
    again.close()


@pytest.mark.parametrize("restart", [False, True], ids=["same-process", "after-restart"])
def test_a_resend_after_a_lost_answer_and_a_rollover_indexes_nothing_twice(
    es: ElasticsearchSettings, client: Elasticsearch, server: ElasticsearchServer, tmp_path: Path, restart: bool
) -> None:
    """The first batch reaches Elasticsearch but its answer is lost (a timeout, or the daemon dies);
    the data stream rolls over before the re-send, so ``create`` alone would index the batch again
    in the new write index."""
    events = auth_events(2000, 11, tmp_path)
    store = driven_store(es, client, tmp_path)
    shipper = store.shipper
    commit(store, events)
    bulk = shipper._bulk

    def answer_lost(docs: Any) -> list[dict[str, Any]]:
        bulk(docs)
        raise TimeoutError("the answer was lost")

    shipper._bulk = answer_lost  # type: ignore[method-assign]
    with pytest.raises(TimeoutError):
        shipper.ship_once(0)
    shipper._bulk = bulk  # type: ignore[method-assign]
    admin = server.admin()
    admin.indices.rollover(alias=es.data_stream)
    if restart:
        store.close()
        store = driven_store(es, client, tmp_path)
        shipper = store.shipper
    while shipper.ship_once(0):
        pass
    store.close()
    assert len(admin.indices.get_data_stream(name=es.data_stream)["data_streams"][0]["indices"]) == 2
    assert shipper.stats.duplicates == es.bulk_max_docs  # the lost batch, found in the old backing index
    assert count(admin, es.data_stream) == len(events)
    assert duplicated_ids(admin, es.data_stream) == []


def test_a_refused_document_is_kept_as_a_pipeline_error_event(
    es: ElasticsearchSettings, client: Elasticsearch, server: ElasticsearchServer, tmp_path: Path
) -> None:
    store = open_store(es, client, tmp_path)
    bad: Event = {
        "@timestamp": "2026-11-22T10:00:00.000000Z",
        "event.kind": "event",
        "source.ip": "not-an-address",
        "message": "a document the ip mapping refuses",
    }
    good: Event = {"@timestamp": "2026-11-22T10:00:01.000000Z", "event.kind": "event", "source.ip": "203.0.113.9"}
    store.commit_many([Batch("x", [bad, good], {})])
    wait_shipped(store)
    store.close()
    admin = server.admin()
    assert count(admin, es.data_stream) == 2
    hit = admin.search(index=es.data_stream, query={"term": {"event.kind": "pipeline_error"}})["hits"]["hits"][0][
        "_source"
    ]
    assert orjson.loads(hit["event.original"]) == {**bad, "event.id": event_id(bad)}
    assert "failed to parse field [source.ip]" in hit["error.message"]
    assert store.shipper.stats.rejected == 1


def test_a_full_spool_with_drop_oldest_records_how_many_it_dropped(
    es: ElasticsearchSettings, client: Elasticsearch, server: ElasticsearchServer, tmp_path: Path
) -> None:
    es = es.model_copy(update={"spool_max_bytes": MIB, "overflow": "drop_oldest"})
    offline = connect(es.model_copy(update={"hosts": ["https://127.0.0.1:9"]}), secret="unused")
    events = auth_events(12000, 13, tmp_path)
    spool = Spool(es.spool_path(tmp_path), es.spool_max_bytes, es.overflow)
    stalled = Shipper(offline, es, 730, spool)
    store = ShippingStore(SQLiteStore(tmp_path / "events.db"), spool, stalled)
    commit(store, events, size=200)
    dropped, drops = stalled.stats.dropped, stalled.stats.overflows
    assert dropped > 0 and drops > 0
    spool.close()
    # Elasticsearch is back: what is left arrives, with the audit events saying what went.
    again = Spool(es.spool_path(tmp_path), es.spool_max_bytes, es.overflow)
    shipper = Shipper(client, es, 730, again)
    shipper.setup()
    while shipper.ship_once(0):
        pass
    again.close()
    admin = server.admin()
    # Every document appended (the events and one audit event per drop) was either shipped or
    # counted as dropped (an audit event can itself be dropped by a later drop, and counted then).
    assert count(admin, es.data_stream) == len(events) + drops - dropped
    audits = admin.search(index=es.data_stream, query={"term": {"event.action": OVERFLOW_ACTION}}, size=1000)
    recorded = [h["_source"]["sentinel.spool.dropped"] for h in audits["hits"]["hits"]]
    assert recorded, "the last drop's audit event is never dropped before it is shipped"
    assert all(n > 0 for n in recorded) and sum(recorded) <= dropped
    kept = {h["_source"]["event.id"] for h in admin.search(index=es.data_stream, size=10000)["hits"]["hits"]}
    newest = [event_id(e) for e in events[-100:]]
    assert set(newest) <= kept, "drop_oldest keeps the newest events"


def test_erasure_deletes_the_persons_documents_and_records_who_did_it(
    es: ElasticsearchSettings, client: Elasticsearch, server: ElasticsearchServer, tmp_path: Path
) -> None:
    events = auth_events(3000, 17, tmp_path)
    ship_all(es, client, tmp_path, events)
    remote = ElasticsearchAudit(client, es.data_stream, "auditor-host")
    server.admin().indices.refresh(index=es.data_stream)
    user = next(e["user.name"] for e in events if e.get("user.name") and e.get("event.outcome") == "success")
    naming = len(list(remote.export_user(user)))
    assert naming > 0
    erasure = remote.erase_user(user, actor="dpo@example.org", reason="GDPR art. 17 request #42")
    assert erasure.records == naming
    assert list(remote.export_user(user)) == []
    admin = server.admin()
    assert count(admin, es.data_stream) == len(events) - naming + 1
    found = admin.search(index=es.data_stream, query={"term": {"event.action": "audit-erase"}})["hits"]["hits"]
    assert len(found) == 1
    doc = found[0]["_source"]
    assert doc["sentinel.audit.actor"] == "dpo@example.org"
    assert doc["sentinel.erasure.count"] == naming
    assert user not in orjson.dumps(doc).decode()


def test_documents_of_an_erased_person_still_in_the_spool_are_never_shipped(
    es: ElasticsearchSettings, client: Elasticsearch, server: ElasticsearchServer, tmp_path: Path
) -> None:
    """Half the events are shipped, half still wait in the spool (Elasticsearch lagging) when the
    erasure runs, as ``sentinel audit erase`` does it: withhold, then delete-by-query."""
    events = auth_events(3000, 19, tmp_path)
    user = next(e["user.name"] for e in events if e.get("user.name") and e.get("event.outcome") == "success")
    naming = sum(1 for e in events if user in users(e))
    half = len(events) // 2
    store = driven_store(es, client, tmp_path)
    commit(store, events[:half])
    while store.shipper.ship_once(0):
        pass
    commit(store, events[half:])
    spooled = sum(1 for e in events[half:] if user in users(e))
    assert 0 < spooled < naming

    assert withhold(es.spool_path(tmp_path), user) == spooled
    assert wait_for_in_flight(es.spool_path(tmp_path), daemon_running=False)
    remote = ElasticsearchAudit(client, es.data_stream, "auditor-host")
    assert remote.erase_user(user, actor="dpo@example.org", reason="request #43").records == naming - spooled
    while store.shipper.ship_once(0):
        pass
    assert store.shipper.stats.withheld == spooled
    store.shipper.ship_once(0)  # the spool is empty: the withheld ids are forgotten
    assert (es.spool_path(tmp_path) / WITHHELD).read_bytes() == b""
    store.close()
    admin = server.admin()
    assert count(admin, es.data_stream, user_query(user)) == 0
    assert count(admin, es.data_stream) == len(events) - naming + 1  # and the erasure's audit event


# -- TLS and credentials ------------------------------------------------------------------------


def test_the_server_certificate_is_verified(es: ElasticsearchSettings, api_key: str) -> None:
    untrusted = connect(es.model_copy(update={"ca_certs": None}), secret=api_key)
    with pytest.raises(ESConnectionError) as failure:
        untrusted.info()
    assert "CERTIFICATE_VERIFY_FAILED" in repr(failure.value)


def test_a_wrong_api_key_is_refused_and_never_logged(
    es: ElasticsearchSettings, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    wrong = "V3JvbmdJZDp3cm9uZy1rZXktdGhhdC1tdXN0LW5vdC1sZWFr"
    store = open_store(es, connect(es, secret=wrong), tmp_path)
    store.commit_many([Batch("x", [{"@timestamp": "2026-11-22T10:00:00Z", "event.kind": "event"}], {})])
    wait_until(lambda: store.shipper.stats.last_error is not None, timeout=20)
    assert (store.shipper.stats.last_error or "").startswith("401")
    assert store.spool.pending_bytes > 0  # kept for when the key is fixed
    store.close()
    with pytest.raises(AuthenticationException):
        connect(es, secret=wrong).info()
    assert wrong not in caplog.text and "wrong-key-that-must-not-leak" not in caplog.text


def test_basic_auth_and_secrets_from_a_systemd_credential(
    es: ElasticsearchSettings, server: ElasticsearchServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.es_server import PASSWORD

    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "es-password").write_text(PASSWORD + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    basic = es.model_copy(update={"auth": "basic", "username": "elastic", "secret_name": "es-password"})
    assert read_secret(basic) == PASSWORD
    assert connect(basic).info()["version"]["number"] == "8.12.2"
    with pytest.raises(ElasticsearchConfigError, match="cannot read the credential"):
        read_secret(basic.model_copy(update={"secret_name": "missing"}))


def test_plain_http_is_refused_except_on_loopback(es: ElasticsearchSettings) -> None:
    with pytest.raises(ElasticsearchConfigError, match="refusing plain http"):
        connect(es.model_copy(update={"hosts": ["http://10.1.2.3:9200"]}), secret="k")
    connect(es.model_copy(update={"hosts": ["http://127.0.0.1:9200"]}), secret="k").close()


def test_ilm_policy_retention_follows_the_store_setting() -> None:
    assert ilm_policy(730, "30d", "50gb")["phases"]["delete"]["min_age"] == "63072000s"
    assert ilm_policy(1.5, "1d", "1gb")["phases"]["delete"]["min_age"] == "129600s"


# -- through `sentinel run` and `sentinel audit` --------------------------------------------------


METRICS_OFF = "[metrics]\nenabled = false\n"


def daemon_config(
    tmp_path: Path, es: ElasticsearchSettings, server: ElasticsearchServer, api_key: str, extra: str = ""
) -> tuple[Path, dict[str, str], Path]:
    """A `sentinel run` config shipping an (empty) auth.log to ``es``; its env, with the key as a credential."""
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "elasticsearch").write_text(api_key)
    log = tmp_path / "auth.log"
    log.write_bytes(b"")
    config = tmp_path / "sentinel.toml"
    config.write_text(
        f"""
[daemon]
state_dir = "{tmp_path / "state"}"
hostname = "web1"
[ports]
enabled = false
[store]
backend = "elasticsearch"
[store.elasticsearch]
hosts = ["{server.url}"]
ca_certs = "{server.ca}"
data_stream = "{es.data_stream}"
[[sources]]
type = "file"
name = "auth"
paths = ["{log}"]
format = "syslog"
start_at = "beginning"
{extra or METRICS_OFF}"""
    )
    return config, clean_env(CREDENTIALS_DIRECTORY=str(creds)), log


def test_sentinel_run_ships_to_elasticsearch_and_audit_queries_it(
    es: ElasticsearchSettings,
    api_key: str,
    server: ElasticsearchServer,
    tmp_path: Path,
    sentinel_process: Any,
) -> None:
    """A real daemon with the key in a systemd credential: lines in, documents out, key nowhere."""
    metrics_port = free_port()
    config, env, log = daemon_config(tmp_path, es, server, api_key, f"[metrics]\nport = {metrics_port}\n")
    state = tmp_path / "state"

    def status() -> str:
        out = subprocess.run(
            [sys.executable, "-m", "sentinel", "status", "-c", str(config)], env=env, capture_output=True, text=True
        )
        return out.stdout + out.stderr

    proc = sentinel_process(config, env)
    lines = [
        f"Nov 22 10:00:{i:02d} web1 sshd[{100 + i}]: Failed password for invalid user admin{i} from 198.51.100.{i + 1} "
        f"port {40000 + i} ssh2\n"
        for i in range(30)
    ]
    with log.open("a") as fh:
        fh.writelines(lines)
    admin = server.admin()

    def arrived() -> bool:
        if not admin.indices.exists(index=es.data_stream):
            return False
        return count(admin, es.data_stream, {"term": {"log.file.path": str(log)}}) >= 30

    wait_until(arrived, timeout=60, interval=0.5)
    wait_until(lambda: "spool 0 bytes" in status(), timeout=30, interval=0.5)
    shown = status()
    assert "Elasticsearch: spool 0 bytes, lag none; shipped=" in shown
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    shipped = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^sentinel_shipped_events_total\{result="(\w+)"\} (\S+)', metrics, re.M)
    }
    # Each line was acknowledged once: created, or — when a request timed out after Elasticsearch
    # had indexed it, and the re-send was answered 409 — a duplicate.
    assert shipped["created"] + shipped["duplicate"] >= 30, (shipped, proc.log())
    assert "sentinel_spool_bytes 0.0" in metrics
    assert proc.stop() == 0
    assert count(admin, es.data_stream, {"term": {"log.file.path": str(log)}}) == 30
    out = subprocess.run(
        [sys.executable, "-m", "sentinel", "audit", "query", "-c", str(config), "--ip", "198.51.100.0/28", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    hits = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert sorted(h["source.ip"] for h in hits if h.get("log.file.path")) == sorted(
        f"198.51.100.{i + 1}"
        for i in range(15)  # .1 to .15 are in the /28
    )
    # Erasure from the command line; what still waits in this host's spool is withheld.
    erase = [sys.executable, "-m", "sentinel", "audit", "erase", "-c", str(config), "--user", "admin3", "--yes"]
    done = subprocess.run(erase, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "erased the personal data of 1 events" in done.stdout and "warning" not in done.stderr
    assert "never be shipped" not in done.stdout
    spool = Spool(state / "spool", MIB)
    waiting = {"@timestamp": "2026-11-22T10:00:00Z", "user.name": "admin3", "message": "as if ES were down"}
    spool.append([b"waiting1\t" + orjson.dumps(waiting)])
    spool.close()
    count_only = subprocess.run(erase[:-1], env=env, capture_output=True, text=True, timeout=60)
    assert "0 events name admin3 (and 1 not yet shipped)" in count_only.stdout, count_only.stderr
    again = subprocess.run(erase, env=env, capture_output=True, text=True, timeout=60)
    assert "erased the personal data of 0 events" in again.stdout, again.stderr
    assert "1 events naming admin3 in this host's spool will never be shipped" in again.stdout
    assert (state / "spool" / WITHHELD).read_text() == "waiting1\n"
    (state / "spool" / "cursor.json").write_text("{torn")  # an unreadable spool: nothing is erased
    refused = subprocess.run(erase, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "cannot withhold the spooled events naming admin3" in refused.stderr
    assert "erased" not in refused.stdout
    for text in (proc.log(), out.stdout, out.stderr, done.stdout, done.stderr):
        assert api_key not in text
    assert "no Elasticsearch secret" not in proc.log()


def test_the_api_key_from_the_wallet(
    es: ElasticsearchSettings, api_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """secret_from = "wallet": the key is a provider entry of the encrypted wallet."""
    from sentinel.config import Settings
    from sentinel.wallet import TEST_KDF, TEST_PASSWORD_ENV, ProviderCredentials, Secret, Wallet

    password = "wallet pass phrase for the ES test"
    wallet = Wallet.create(tmp_path / "wallet.json", password, kdf=TEST_KDF)
    wallet.set_provider("es-prod", ProviderCredentials(client_id="sentinel", client_secret=Secret(api_key)))
    wallet.save()
    settings = Settings.model_validate({"daemon": {"state_dir": str(tmp_path)}})
    from_wallet = es.model_copy(update={"secret_from": "wallet", "secret_name": "es-prod"})
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv(TEST_PASSWORD_ENV, password)
    client = connect(from_wallet, settings)
    assert client.info()["version"]["number"] == "8.12.2"
    monkeypatch.setenv(TEST_PASSWORD_ENV, password)
    with pytest.raises(ElasticsearchConfigError, match="no secret for 'missing'"):
        read_secret(from_wallet.model_copy(update={"secret_name": "missing"}), settings)


def test_a_daemon_killed_while_shipping_resumes_with_each_line_stored_once(
    es: ElasticsearchSettings,
    api_key: str,
    server: ElasticsearchServer,
    tmp_path: Path,
    sentinel_process: Any,
) -> None:
    """SIGKILL mid-stream, restart: the spool (fsynced before each checkpoint) and the ids do the rest."""
    config, env, log = daemon_config(tmp_path, es, server, api_key)
    total = 20_000
    lines = [
        f"Nov 22 10:{i // 600 % 60:02d}:{i // 10 % 60:02d} web1 sshd[{1000 + i}]: Failed password for "
        f"invalid user u{i} from 198.51.100.{i % 250 + 1} port {20000 + i} ssh2\n"
        for i in range(total)
    ]
    admin = server.admin()

    def stored() -> int:
        if not admin.indices.exists(index=es.data_stream):
            return 0
        return count(admin, es.data_stream, {"term": {"log.file.path": str(log)}})

    first = sentinel_process(config, env)
    with log.open("a") as fh:
        for i in range(0, total, 500):
            fh.writelines(lines[i : i + 500])
            fh.flush()
            time.sleep(0.01)
    wait_until(lambda: stored() > 0, timeout=60, interval=0.1)
    first.kill()  # SIGKILL: no drain, no flush
    assert stored() < total, "killed too late to prove anything: every line was already shipped"
    second_config = config.with_name("second.toml")  # a fresh stderr file
    second_config.write_text(config.read_text())
    second = sentinel_process(second_config, env)
    wait_until(lambda: stored() >= total, timeout=120, interval=0.5)
    assert second.stop() == 0
    assert stored() == total
    assert duplicated_ids(admin, es.data_stream) == []  # findings and responses too
