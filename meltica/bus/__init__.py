"""Buses: the Data Bus (canonical events to many consumers) and the Control Bus."""
