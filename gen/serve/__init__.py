"""`fair serve`: the committee as a long-running service (gen/serve/server.py says how to start it)."""
