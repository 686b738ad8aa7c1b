"""Compiled hot paths: frame parsing and canonical events (pure computation)."""
