"""Exchange adapters: connections, REST and parsing per venue."""
