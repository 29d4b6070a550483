"""Static pages shipped in the package (the web chat): read once at start-up, served from memory."""

from __future__ import annotations

from importlib.resources import files

from twisted.web.resource import Resource
from twisted.web.server import Request

from myservices.web.resources import JsonRoot

# the pages load nothing from elsewhere and may only talk back to where they came from
_SECURITY_HEADERS = {
    b"Content-Security-Policy": b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
}

_TYPES = {
    "html": b"text/html; charset=utf-8",
    "js": b"text/javascript; charset=utf-8",
    "css": b"text/css; charset=utf-8",
}


class StaticFile(Resource):
    """One file's bytes, with its type and the security headers."""

    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self.body = body
        self.content_type = content_type

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", self.content_type)
        # revalidated on each load, so a new release's page is never mixed with an old script
        request.setHeader(b"Cache-Control", b"no-cache")
        for name, value in _SECURITY_HEADERS.items():
            request.setHeader(name, value)
        return self.body  # twisted.web sets Content-Length and leaves the body out for HEAD


class StaticDirectory(JsonRoot):
    """A directory of L{StaticFile}s; its bare path (C{/chat}) redirects to C{/chat/}."""

    def render_GET(self, request: Request) -> bytes:
        request.redirect(request.path + b"/")
        return b""


def static_directory(package_dir: str) -> StaticDirectory:
    """Every file of C{myservices/web/static/PACKAGE_DIR}, with index.html at the directory's own path."""
    directory = StaticDirectory()
    for entry in files("myservices.web").joinpath("static", package_dir).iterdir():
        suffix = entry.name.rsplit(".", 1)[-1]
        if suffix not in _TYPES:
            continue
        page = StaticFile(entry.read_bytes(), _TYPES[suffix])
        directory.putChild(b"" if entry.name == "index.html" else entry.name.encode(), page)
    return directory
