"""Helpers shared by ``tests/``, ``e2e/`` and ``bench/``: free ports, waiting on a condition,
a real redis-server, throwaway certificates. Test-only code; no ``kubefal_*`` package imports it.
"""
