"""`fair serve`: the committee as a long-running service (serve/server.py says how to start it)."""
