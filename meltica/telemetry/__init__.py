"""Telemetry: Prometheus metrics and health endpoints read from component counters."""
