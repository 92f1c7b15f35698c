"""What Sentinel sets up in Elasticsearch: the ILM policy and the data stream's index template.

Both are PUT at start (and whenever the shipper reconnects after an outage) only when what the
cluster holds differs from what this version wants, so restarts do not bump their versions.

The template maps the ECS fields Sentinel emits with their ECS types (``ip`` for addresses, so a
CIDR query works; ``keyword`` for identifiers; ``match_only_text`` for messages); any other
string is a ``keyword``.  Sentinel's own ``sentinel.*`` fields (lists of actions, erasure
listings, travel details) are one ``flattened`` field: their varying shapes can never cause a
mapping conflict that would reject a document.
"""

from __future__ import annotations

from typing import Any, Final

from elasticsearch import Elasticsearch, NotFoundError

TEMPLATE_PRIORITY: Final = 200  # above the built-in logs-*-* template (100)
KEYWORD: Final = {"type": "keyword", "ignore_above": 1024}

_TYPES: Final[dict[str, dict[str, Any]]] = {
    "@timestamp": {"type": "date"},
    "message": {"type": "match_only_text"},
    "error.message": {"type": "match_only_text"},
    "error.stack_trace": {"type": "wildcard"},
    "event.original": {"type": "keyword", "index": False, "doc_values": False},
    "event.start": {"type": "date"},
    "event.end": {"type": "date"},
    "event.created": {"type": "date"},
    "event.ingested": {"type": "date"},
    "event.severity": {"type": "long"},
    "event.risk_score": {"type": "float"},
    "source.ip": {"type": "ip"},
    "source.port": {"type": "long"},
    "source.as.number": {"type": "long"},
    "source.geo.location": {"type": "geo_point"},
    "destination.ip": {"type": "ip"},
    "destination.port": {"type": "long"},
    "client.ip": {"type": "ip"},
    "related.ip": {"type": "ip"},
    "process.pid": {"type": "long"},
    "process.command_line": {"type": "wildcard"},
    "log.offset": {"type": "long"},
    "url.original": {"type": "wildcard"},
    "url.path": {"type": "wildcard"},
    "http.response.status_code": {"type": "long"},
    "http.response.body.bytes": {"type": "long"},
    "user_agent.original": {"type": "keyword", "ignore_above": 1024},
    "sentinel": {"type": "flattened", "ignore_above": 1024},
}


def _properties(types: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Nest dotted field names into the ``properties`` tree a mapping is written as."""
    root: dict[str, Any] = {}
    for name, spec in types.items():
        node = root
        parts = name.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {"properties": {}})["properties"]
        node[parts[-1]] = dict(spec)
    return root


def ilm_policy(retention_days: float, max_age: str, max_primary_shard_size: str) -> dict[str, Any]:
    """Hot with rollover; deleted ``retention_days`` after rollover."""
    return {
        "phases": {
            "hot": {
                "min_age": "0ms",
                "actions": {
                    "rollover": {"max_age": max_age, "max_primary_shard_size": max_primary_shard_size},
                },
            },
            "delete": {"min_age": f"{round(retention_days * 86400)}s", "actions": {"delete": {}}},
        }
    }


def index_template(data_stream: str, policy: str) -> dict[str, Any]:
    """The composable template that makes ``data_stream`` a data stream with ECS mappings."""
    return {
        "index_patterns": [data_stream],
        "data_stream": {},
        "priority": TEMPLATE_PRIORITY,
        "template": {
            "settings": {"index.lifecycle.name": policy, "index.number_of_replicas": 0},
            "mappings": {
                "date_detection": False,
                "dynamic_templates": [{"strings_as_keywords": {"match_mapping_type": "string", "mapping": KEYWORD}}],
                "properties": _properties(_TYPES),
            },
        },
        "_meta": {"managed_by": "sentinel", "description": "Sentinel events, findings and responses (ECS)"},
    }


def ensure(client: Elasticsearch, data_stream: str, policy_name: str, policy: dict[str, Any]) -> list[str]:
    """Create or update the ILM policy, the template and the data stream; what was changed."""
    changed: list[str] = []
    try:
        current = client.ilm.get_lifecycle(name=policy_name)[policy_name]["policy"]
    except NotFoundError:
        current = None
    if current is None or not _subset(policy, current):
        client.ilm.put_lifecycle(name=policy_name, policy=policy)
        changed.append(f"ILM policy {policy_name}")
    template_name = data_stream
    wanted = index_template(data_stream, policy_name)
    try:
        found = client.indices.get_index_template(name=template_name)["index_templates"]
        existing = found[0]["index_template"] if found else None
    except NotFoundError:
        existing = None
    if existing is None or not _subset(wanted, existing):
        client.indices.put_index_template(name=template_name, **wanted)
        changed.append(f"index template {template_name}")
    try:
        client.indices.get_data_stream(name=data_stream)
    except NotFoundError:
        client.indices.create_data_stream(name=data_stream)
        changed.append(f"data stream {data_stream}")
    return changed


def _subset(wanted: Any, found: Any) -> bool:
    """True if everything in ``wanted`` is in ``found`` (the cluster adds defaults of its own).

    Values are compared as strings: the cluster echoes ``"0"`` for ``0`` in settings.
    """
    if isinstance(wanted, dict):
        if not isinstance(found, dict):
            return False
        flat: dict[str, Any] | None = None
        for key, value in wanted.items():
            if key not in found:
                flat = flat if flat is not None else _flatten_settings(found)
                if key not in flat:  # "index.lifecycle.name" comes back nested
                    return False
                value_found = flat[key]
            else:
                value_found = found[key]
            if not _subset(value, value_found):
                return False
        return True
    if isinstance(wanted, list):
        return isinstance(found, list) and len(wanted) == len(found) and all(map(_subset, wanted, found))
    return str(wanted).lower() == str(found).lower()


def _flatten_settings(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        out[name] = value
        if isinstance(value, dict):
            out.update(_flatten_settings(value, name + "."))
    return out
