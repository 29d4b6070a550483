"""GET /api/openapi.json: a valid OpenAPI 3.1 document that lists exactly the routes served, and whose schemas
the real answers (successes and errors) of a started tree match."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
from openapi_spec_validator import validate

from myservices.web.openapi import document
from tests.apiclient import KEY, ApiTestCase
from tests.support import chat_client, port_of


def template_of(path: str, paths: Any) -> str:
    """The documented path template that the request path C{path} (without its query) matches."""
    for template in paths:
        pattern = "^" + re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            return str(template)
    raise AssertionError(f"{path} matches no documented path")


class OpenApiTests(ApiTestCase):
    def test_the_document_is_valid_openapi_3_1(self) -> None:
        doc = document()
        validate(doc)
        self.assertEqual(doc["openapi"], "3.1.0")
        self.assertEqual(doc["servers"], [{"url": "/"}])
        self.assertEqual(doc["components"]["securitySchemes"]["apiKey"], {
            "type": "http", "scheme": "bearer", "description": "an [api] key",
        })
        for path in ("/api/counter", "/api/login", "/api/logout", "/api/openapi.json"):
            for operation in doc["paths"][path].values():
                self.assertEqual(operation["security"], [], path)
        for path in ("/api/publish", "/api/broadcast", "/api/rooms", "/api/disconnect"):
            for operation in doc["paths"][path].values():
                self.assertNotIn("security", operation)  # the document's default: the bearer key
                self.assertIn("401", operation["responses"])

    async def test_every_route_served_is_documented_and_every_documented_route_served(self) -> None:
        tree = await self.start()
        directory = tree.listeners["http"].factory.resource.children[b"api"]
        served: dict[str, Any] = {}
        for name, resource in directory.children.items():
            for sub in getattr(resource, "SUBPATHS", ("",)):
                served[f"/api/{name.decode()}{sub}"] = resource
        paths = document()["paths"]
        self.assertEqual(sorted(served), sorted(paths))
        for path, operations in paths.items():
            for method in operations:
                self.assertTrue(hasattr(served[path], f"render_{method.upper()}"), f"{method} {path} is not served")
            methods = {m[len("render_"):].lower() for m in dir(served[path]) if m.startswith("render_")} - {"head"}
            self.assertEqual(methods, set(operations), path)

    async def test_the_document_is_served_without_a_key(self) -> None:
        await self.start()
        response = await self.api.get("/api/openapi.json", key=None)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("content-type"), "application/json")
        self.assertEqual(response.json(), document())

    async def test_real_answers_match_their_documented_schemas(self) -> None:
        tree = await self.start(f'keys = ["{KEY}"]\nrate = 0.01\nburst = 60\nmax_broadcast_rooms = 10\nmax_body_size = 1024')
        login = tree.listeners["http"].factory.resource.children[b"api"].children[b"login"]
        await login.accounts.register("alice", "a good password")
        member = await chat_client(self, port_of(tree, "chat"), "member")
        await member.command("/join lobby")
        doc = document()
        requests: list[tuple[str, str, Any, Any]] = [
            ("post", "/api/publish", {"room": "lobby", "text": "hi"}, True),
            ("post", "/api/publish", {"room": "lobby", "text": "hi", "nick": "bot"}, True),
            ("post", "/api/publish", {"room": "bad room", "text": "hi"}, True),
            ("post", "/api/publish", b"{", True),
            ("post", "/api/publish", {"room": "lobby", "text": "x" * 2000}, True),
            ("post", "/api/publish", {"room": "lobby", "text": "hi"}, None),
            ("post", "/api/broadcast", {"rooms": ["lobby", "news", "no room"], "text": "hi"}, True),
            ("post", "/api/broadcast", {"rooms": [], "text": "hi"}, True),
            ("get", "/api/rooms", None, True),
            ("get", "/api/rooms", None, "a-wrong-key-0123456789"),
            ("get", "/api/rooms/lobby/presence", None, True),
            ("get", "/api/rooms/bad%20room/presence", None, True),
            ("get", "/api/rooms/lobby/history", None, True),
            ("get", "/api/rooms/lobby/history?since=1&limit=1", None, True),
            ("get", "/api/rooms/lobby/history?limit=0", None, True),
            ("post", "/api/disconnect", {"nick": "member", "reason": "bye"}, True),
            ("post", "/api/disconnect", {"nick": 5}, True),
            ("get", "/api/counter", None, None),
            ("post", "/api/login", {"username": "alice", "password": "a good password"}, None),
            ("post", "/api/login", {"username": "nobody", "password": "a wrong one"}, None),
            ("post", "/api/login", {"username": 1}, None),
            ("post", "/api/logout", {}, None),
            ("get", "/api/openapi.json", None, None),
        ]
        seen: dict[tuple[str, str], set[str]] = {}
        for method, path, body, key in requests:
            if method == "post":
                response = await self.api.post(path, body, key=key)
            else:
                response = await self.api.get(path, key=key)
            template = template_of(path.split("?")[0], doc["paths"])
            responses = doc["paths"][template][method]["responses"]
            status = str(response.code)
            self.assertIn(status, responses, f"{method} {path}: {status} is not documented ({response.body!r})")
            schema = responses[status]["content"]["application/json"]["schema"]
            validator = jsonschema.Draft202012Validator({**schema, "components": doc["components"]})
            errors = [e.message for e in validator.iter_errors(response.json())]
            self.assertEqual(errors, [], f"{method} {path} -> {status}: {response.body!r}")
            for header in responses[status].get("headers", {}):
                self.assertIsNotNone(response.header(header), f"{method} {path} -> {status} without {header}")
            seen.setdefault((template, method), set()).add(status)
        every = {(path, method) for path, operations in doc["paths"].items() for method in operations}
        self.assertEqual(set(seen), every, "a documented operation was not requested")
        for operation, statuses in seen.items():
            self.assertIn("200", statuses, operation)
        self.assertEqual(self.flushLoggedErrors(), [])
