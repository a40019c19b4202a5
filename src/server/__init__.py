"""The runbus server: ingest API, store (SQLite/PostgreSQL), query API, web UI assets.

Only the store (:mod:`server.store`) exists so far.
"""
