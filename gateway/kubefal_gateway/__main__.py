"""`python -m kubefal_gateway`: run the gateway (flags and env vars: settings.py)."""

from kubefal_gateway import server

server.main()
