"""The server API's tests: a real tree with chat, WebSocket and HTTP, and a client that sends JSON with a key."""

from __future__ import annotations

import json
import os
from io import BytesIO
from typing import Any

from twisted.trial.unittest import TestCase
from twisted.web.client import FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from myservices.tree import ServiceTree
from tests.support import FAST_ACCOUNTS, HttpClient, HttpResponse, load, port_of, start_tree

KEY = "an-api-test-key-0123456789"
OTHER_KEY = "another-api-test-key-9876543210"


def api_config(url: str, api: str = f'keys = ["{KEY}"]', hub: str = "") -> str:
    return f"""
[daemon]
shutdown_timeout = 2
[database]
url = "{url}"
{FAST_ACCOUNTS}
[hub]
{hub}
[api]
{api}
[services.chat]
endpoint = "tcp:0:interface=127.0.0.1"
[services.websocket]
endpoint = "tcp:0:interface=127.0.0.1"
[services.http]
endpoint = "tcp:0:interface=127.0.0.1"
[services.framed]
endpoint = "tcp:0:interface=127.0.0.1"
[services.pb]
endpoint = "tcp:0:interface=127.0.0.1"
"""


class ApiClient:
    """Requests to the HTTP service of a started tree, with the bearer key C{key} (None: no header)."""

    def __init__(self, testcase: TestCase, port: int, key: str | None = KEY) -> None:
        self.http = HttpClient(testcase, port)
        self.key = key

    def headers(self, extra: dict[bytes, list[bytes]] | None = None) -> Headers:
        headers = {b"Authorization": [b"Bearer " + self.key.encode()]} if self.key is not None else {}
        headers.update(extra or {})
        return Headers(headers)

    async def get(self, path: str, key: str | None | bool = True) -> HttpResponse:
        return await self.request(b"GET", path, key=key)

    async def post(
        self, path: str, body: Any, content_type: str | None = "application/json", key: str | None | bool = True
    ) -> HttpResponse:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.request(b"POST", path, data, content_type, key)

    async def request(
        self, method: bytes, path: str, data: bytes | None = None, content_type: str | None = None,
        key: str | None | bool = True,
    ) -> HttpResponse:
        headers: dict[bytes, list[bytes]] = {}
        if key is not True:  # None: no Authorization header
            headers[b"Authorization"] = [b"Bearer " + key.encode()] if isinstance(key, str) else []
        if content_type is not None:
            headers[b"Content-Type"] = [content_type.encode()]
        all_headers = self.headers()
        for name, values in headers.items():
            if values:
                all_headers.setRawHeaders(name, values)
            else:
                all_headers.removeHeader(name)
        body = FileBodyProducer(BytesIO(data)) if data is not None else None
        response = await self.http.agent.request(method, (self.http.base + path).encode(), all_headers, body)
        return HttpResponse(response.code, response.headers, await readBody(response), response.length)


class ApiTestCase(TestCase):
    """Starts the real tree from a real config file (SQLite in a temporary file)."""

    timeout = 30

    async def start(
        self, api: str = f'keys = ["{KEY}"]', hub: str = "", environ: dict[str, str] | None = None
    ) -> ServiceTree:
        url = f"sqlite:///{os.path.abspath(self.mktemp())}.sqlite3"
        self.tree = await start_tree(self, load(self, api_config(url, api, hub), environ))
        self.api = ApiClient(self, port_of(self.tree, "http"))
        return self.tree

    def assert_error(self, response: HttpResponse, status: int, code: str) -> dict[str, Any]:
        """The error object of a JSON error answer of C{status} and C{code}, in the shared shape."""
        self.assertEqual(response.code, status, response.body)
        self.assertEqual(response.header("content-type"), "application/json")
        body = response.json()
        self.assertEqual(set(body), {"error"})
        self.assertEqual(set(body["error"]), {"code", "message", "retry"})
        self.assertEqual(body["error"]["code"], code, body)
        return body["error"]
