"""The Dispatcher: the authoritative dispatch table and the control plane."""
