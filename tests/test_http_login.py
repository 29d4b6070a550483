"""POST /api/login and /api/logout on the real service tree, over loopback with twisted.web's Agent."""

from __future__ import annotations

import json
import os
from io import BytesIO
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest

from myservices.tree import ServiceTree
from myservices.web.auth import LogoutApi
from tests.support import FAST_ACCOUNTS, HttpClient, HttpResponse, load, port_of, start_tree

SECRET = "an-http-test-secret-of-enough-length-0123456789"


def config(url: str, accounts: str = "") -> str:
    return f"""
[daemon]
shutdown_timeout = 2
[database]
url = "{url}"
{FAST_ACCOUNTS}
{accounts}
[tokens]
secret = "{SECRET}"
lifetime = 600
[services.http]
endpoint = "tcp:0:interface=127.0.0.1"
"""


class LoginApiTests(TestCase):
    timeout = 20

    async def start(self, accounts: str = "") -> ServiceTree:
        url = f"sqlite:///{os.path.abspath(self.mktemp())}.sqlite3"
        self.tree = await start_tree(self, load(self, config(url, accounts)))
        self.client = HttpClient(self, port_of(self.tree, "http"))
        self.resource = self.tree.listeners["http"].factory.resource.children[b"api"].children[b"login"]
        self.accounts = self.resource.accounts
        await self.accounts.register("alice", "correct horse")
        return self.tree

    async def post(
        self, path: str, body: Any, content_type: str | None = "application/json"
    ) -> HttpResponse:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = Headers({b"Content-Type": [content_type.encode()]} if content_type else {})
        response = await self.client.agent.request(
            b"POST", (self.client.base + path).encode(), headers, FileBodyProducer(BytesIO(data))
        )
        return HttpResponse(response.code, response.headers, await readBody(response), response.length)

    def login(self, username: str, password: str, **kw: Any) -> Any:
        return self.post("/api/login", {"username": username, "password": password}, **kw)

    def assert_error(self, response: HttpResponse, status: int, code: str) -> dict[str, Any]:
        self.assertEqual(response.code, status, response.body)
        self.assertEqual(response.header("content-type"), "application/json")
        error = response.json()["error"]
        self.assertEqual(error["code"], code)
        self.assertIsNone(response.header("set-cookie"))
        return error

    async def test_login_answers_a_token_and_sets_a_strict_http_only_cookie(self) -> None:
        await self.start()
        response = await self.post(
            "/api/login", {"username": "Alice", "password": "correct horse", "rooms": ["lobby"]}
        )
        self.assertEqual(response.code, 200, response.body)
        body = response.json()
        self.assertEqual(set(body), {"token", "expires_at", "username"})
        self.assertEqual(body["username"], "alice")
        self.assertEqual(response.header("cache-control"), "no-store")
        cookie = response.header("set-cookie")
        self.assertEqual(
            cookie.split("; "),
            [f"myservices_token={body['token']}", "HttpOnly", "SameSite=Strict", "Path=/", cookie.split("; ")[4]],
        )
        max_age = int(cookie.split("; ")[4].removeprefix("Max-Age="))
        self.assertTrue(595 <= max_age <= 600, cookie)
        self.assertNotIn("Secure", cookie)  # plain HTTP here
        verified = await self.resource.tokens.verify(body["token"])
        self.assertEqual(
            (verified.account.username, verified.rooms, verified.expires_at), ("alice", ("lobby",), body["expires_at"])
        )

    async def test_wrong_password_and_unknown_user_are_401_alike(self) -> None:
        await self.start()
        wrong = self.assert_error(await self.login("alice", "nope nope"), 401, "LOGIN_FAILED")
        unknown = self.assert_error(await self.login("bob", "nope nope"), 401, "LOGIN_FAILED")
        self.assertEqual(wrong, unknown)

    async def test_too_many_failures_are_429_with_retry_after(self) -> None:
        await self.start("login_failures_per_address = 2\nlogin_failure_window = 120")
        for _ in range(2):
            self.assert_error(await self.login("alice", "nope nope"), 401, "LOGIN_FAILED")
        response = await self.login("alice", "correct horse")
        error = self.assert_error(response, 429, "RATE_LIMITED")
        retry_after = int(response.header("retry-after"))
        self.assertTrue(118 <= retry_after <= 120, retry_after)
        self.assertEqual(error["message"], f"too many failed logins; retry in {retry_after} s")
        self.assertTrue(error["retry"])

    async def test_malformed_requests_are_4xx(self) -> None:
        await self.start()
        self.assert_error(await self.post("/api/login", b"{not json"), 400, "BAD_REQUEST")
        self.assert_error(await self.post("/api/login", b"[" * 8000), 400, "BAD_REQUEST")  # nested too deeply
        self.assert_error(
            await self.post("/api/login", b'{"username": "alice", "password": NaN}'), 400, "BAD_ARGUMENTS"
        )
        self.assert_error(await self.post("/api/login", ["alice", "pw"]), 400, "BAD_ARGUMENTS")
        self.assert_error(await self.post("/api/login", {"username": "alice", "password": 1}), 400, "BAD_ARGUMENTS")
        self.assert_error(
            await self.post("/api/login", {"username": "alice", "password": "correct horse", "rooms": "x"}), 400,
            "BAD_ARGUMENTS",
        )
        self.assert_error(
            await self.login("alice", "correct horse", content_type="text/plain"), 415, "BAD_REQUEST",
        )
        self.assert_error(
            await self.post("/api/login", {"username": "alice", "password": "x" * 9000}), 413, "TOO_LARGE"
        )
        self.assert_error(await self.client.get("/api/login"), 405, "BAD_REQUEST")
        self.assertEqual(self.flushLoggedErrors(), [])  # the client's mistakes: no traceback

    async def test_logout_clears_the_cookie(self) -> None:
        await self.start()
        response = await self.post("/api/logout", b"", content_type=None)
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.header("set-cookie"), "myservices_token=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
        )


class CookieOverTlsTests(TestCase):
    timeout = 20

    async def test_login_over_tls_sets_a_secure_cookie(self) -> None:
        from pathlib import Path

        from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        from tests.support import Collector
        from tests.test_tree import write_self_signed_certificate

        key, cert = write_self_signed_certificate(Path(self.mktemp()).resolve())
        url = f"sqlite:///{os.path.abspath(self.mktemp())}.sqlite3"
        endpoint = f'"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"'
        text = config(url).replace('"tcp:0:interface=127.0.0.1"', endpoint)
        tree = await start_tree(self, load(self, text))
        await tree.listeners["http"].factory.resource.children[b"api"].children[b"login"].accounts.register(
            "alice", "correct horse"
        )
        client = Collector()
        options = optionsForClientTLS("127.0.0.1", trustRoot=Certificate.loadPEM(cert.read_bytes()))
        await connectProtocol(SSL4ClientEndpoint(reactor, "127.0.0.1", port_of(tree, "http"), options), client)
        body = b'{"username": "alice", "password": "correct horse"}'
        client.transport.write(
            b"POST /api/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await client.closed
        head = client.data.split(b"\r\n\r\n")[0].decode()
        self.assertTrue(head.startswith("HTTP/1.1 200 "), head)
        cookie = next(line for line in head.split("\r\n") if line.lower().startswith("set-cookie:"))
        self.assertRegex(cookie, r"; HttpOnly; SameSite=Strict; Path=/; Max-Age=(599|600); Secure$")

    def test_logout_cookie_is_secure_when_the_request_came_over_tls(self) -> None:
        request = DummyRequest([b""])
        request.method = b"POST"
        request.isSecure = lambda: True  # type: ignore[method-assign]
        LogoutApi().render(request)
        cookie = request.responseHeaders.getRawHeaders(b"set-cookie")[0]
        self.assertTrue(cookie.endswith(b"; Max-Age=0; Secure"), cookie)
