"""Enrichment: fields added to an event between the parser and the rules engine.

Parsers only write what a log line says; enrichers add what Sentinel knows about it (where an
address is, which network it belongs to), so that detections stay declarative rules over fields.
"""

from __future__ import annotations

from sentinel.enrich.geoip import GeoIPEnricher, GeoIPError, GeoIPSettings, open_enricher

__all__ = ["GeoIPEnricher", "GeoIPError", "GeoIPSettings", "open_enricher"]
