"""Sentinel: security and compliance monitoring for Linux servers."""

__version__ = "0.1.0"
