"""The gateway's subcommands (``run``, ``demo``, ``replay``, ``tail``); cli.py parses."""
