"""Responders: what happens after a finding (firewall bans, token revocation, alerts, shipping)."""
