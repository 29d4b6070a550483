"""Request handlers shared by the request/reply front ends (framed JSON, WebSocket, PB).

L{router} names each command, checks its arguments and calls a thin adapter
over the shared hub, accounts, key-value store and counter; each front end
only maps its wire format onto command names.
"""
