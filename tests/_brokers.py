"""Broker fixtures (filled in by the broker work)."""
