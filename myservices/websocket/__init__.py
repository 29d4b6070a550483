"""The WebSocket service (RFC 6455, on autobahn): /echo and /chat (JSON on the shared hub)."""
