"""The length-framed JSON service (server, wire format, command router) and its Python client."""
