#!/usr/bin/env python3
"""Shipping to Elasticsearch (issue 6): Sentinel's spool + shipper beside a bare ``helpers.bulk`` loop.

Both run in the same process against the same real Elasticsearch 8.12.2 node (started here, as
the tests start it: TLS, security on, 512 MB heap), each into a data stream of its own with the
same index template, the same documents and deterministic ``_id``s (``create``):

* ``helpers.bulk``: the official client's helper over the documents, with its default chunks
  (500) and with Sentinel's (2000);
* Sentinel: ``ShippingStore.commit_many`` in the daemon's batches of 5000 (spool append with
  fsync, checkpoint commit), the shipper thread bulk-creating from the spool — timed from the
  first commit until Elasticsearch acknowledged the last document.

Each is run ``--rounds`` times alternately (fresh data streams) and the median reported.
Usage:  .venv/bin/python -m bench.es [--events N] [--rounds R]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from elasticsearch import Elasticsearch, helpers

from bench.store import events as make_events
from sentinel.collectors.sources.base import Batch
from sentinel.config import ElasticsearchSettings
from sentinel.event import Event
from sentinel.store import es_schema
from sentinel.store.elasticsearch import document
from sentinel.store.shipper import Shipper, ShippingStore
from sentinel.store.spool import Spool
from sentinel.store.sqlite import SQLiteStore
from tests.es_server import launch

OUT = Path(__file__).resolve().parent / "out"
BATCH = 5000


def bare(client: Elasticsearch, stream: str, docs: list[Event], chunk: int) -> float:
    """Seconds for helpers.bulk to create every document."""
    start = time.perf_counter()
    ok, errors = helpers.bulk(
        client,
        ({"_op_type": "create", "_index": stream, "_id": eid, "_source": body} for eid, body in map(document, docs)),
        chunk_size=chunk,
        raise_on_error=True,
    )
    elapsed = time.perf_counter() - start
    assert ok == len(docs) and not errors
    return elapsed


def sentinel(client: Elasticsearch, settings: ElasticsearchSettings, docs: list[Event], work: Path) -> float:
    """Seconds from the first commit until the spool is empty (every document acknowledged)."""
    spool = Spool(work / "spool", settings.spool_max_bytes, "block")
    shipper = Shipper(client, settings, 730, spool)
    shipper.setup()
    store = ShippingStore(SQLiteStore(work / "events.db"), spool, shipper)
    start = time.perf_counter()
    shipper.start()
    for i in range(0, len(docs), BATCH):
        store.commit_many([Batch("bench", docs[i : i + BATCH], {"offset": i + BATCH})])
    while spool.pending_bytes:
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    store.close()
    assert shipper.stats.shipped == len(docs), shipper.stats
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    docs = list(make_events(args.events, seed=1, start=1.7e9, span=86400.0))
    server = launch()
    try:
        client = server.admin()
        times: dict[str, list[float]] = {"helpers.bulk": [], "helpers.bulk-2000": [], "sentinel": []}
        for r in range(args.rounds):
            for name in times:
                settings = ElasticsearchSettings(
                    hosts=[server.url], ca_certs=server.ca, data_stream=f"logs-bench-{name.replace('.', '')}-{r}"
                )
                policy = es_schema.ilm_policy(730, "30d", "50gb")
                es_schema.ensure(client, settings.data_stream, settings.ilm_policy, policy)
                with tempfile.TemporaryDirectory() as tmp:
                    if name == "sentinel":
                        took = sentinel(client, settings, docs, Path(tmp))
                    else:
                        took = bare(client, settings.data_stream, docs, 500 if name == "helpers.bulk" else 2000)
                times[name].append(took)
                client.indices.refresh(index=settings.data_stream)
                held = client.count(index=settings.data_stream)["count"]
                assert held == len(docs), (name, held)
                print(f"round {r + 1} {name:13s} {len(docs) / took:9,.0f} docs/s ({took:.1f} s)", flush=True)
                client.indices.delete_data_stream(name=settings.data_stream)
        rates = {name: len(docs) / statistics.median(t) for name, t in times.items()}
        # Against the faster of the two bare loops: its default chunks (500) and Sentinel's (2000).
        ratio = rates["sentinel"] / max(rates["helpers.bulk"], rates["helpers.bulk-2000"])
        result = {"events": len(docs), "rounds": args.rounds, "docs_per_s": rates, "ratio": ratio}
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "es.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        print(f"Sentinel ships at {ratio:.0%} of the faster bare helpers.bulk loop (target >= 80%)")
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
