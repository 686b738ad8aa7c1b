"""JSON Schema files of the wire format (package data)."""
