"""docs/api.md's curl examples, run as written against a real daemon, each answer checked against the example shown."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest

from myservices import errors
from tests.apiclient import KEY, ApiTestCase
from tests.support import chat_client, ci, port_of

API_MD = Path(__file__).resolve().parent.parent / "docs" / "api.md"
DOCUMENTED = "http://127.0.0.1:8080"


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """Every fenced block of a Markdown text: (language, body), in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M)]


def fenced_json(text: str) -> list[tuple[str, Any]]:
    """Every json block of a Markdown text: (body, value)."""
    return [(body, json.loads(body)) for language, body in fenced_blocks(text) if language == "json"]


def examples(text: str) -> list[tuple[str, Any]]:
    """Each curl command of the sh blocks, with the JSON example right after its block (None if there is none)."""
    blocks = fenced_blocks(text)
    out: list[tuple[str, Any]] = []
    for i, (language, body) in enumerate(blocks):
        if language != "sh" or "curl" not in body:
            continue
        after = blocks[i + 1] if i + 1 < len(blocks) else ("", "")
        if after[0] != "json" and "openapi.json" not in body:
            raise AssertionError(f"docs/api.md: no json block shows the answer of\n{body}")
        expected = json.loads(after[1]) if after[0] == "json" else None
        for command in body.replace("\\\n", " ").splitlines():
            if command.strip():
                out.append((command.strip(), expected))
    return out


def shape(value: Any) -> Any:
    """What a JSON value looks like, not what it holds: member names and value types."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    if isinstance(value, bool) or value is None:
        return type(value).__name__
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def matches(actual: Any, example: Any, exact: bool = True) -> bool:
    """True when C{actual} has the shape of C{example}: the same members, values of the same types, a list's
    items each like one of the example's items and its first item like one of them; outside lists, booleans
    (what happened) are equal too."""
    if isinstance(example, dict):
        return isinstance(actual, dict) and set(actual) == set(example) and all(
            matches(actual[k], example[k], exact) for k in example
        )
    if isinstance(example, list):
        return isinstance(actual, list) and all(any(matches(a, e, False) for e in example) for a in actual) and (
            any(matches(a, example[0], False) for a in actual) if example else not actual
        )
    if exact and isinstance(example, bool):
        return actual is example
    return shape(actual) == shape(example)


class ExamplesTests(ApiTestCase):
    timeout = 60

    def setUp(self) -> None:
        if shutil.which("curl") is None:
            message = "docs/api.md's examples need curl (Debian: apt-get install curl)"
            if ci():
                raise AssertionError(message)
            raise SkipTest(message)

    def test_the_examples_are_found(self) -> None:
        found = examples(API_MD.read_text())
        routes = {re.search(r"/api/[a-z]+", command).group(0) for command, _ in found}  # type: ignore[union-attr]
        self.assertEqual(
            routes,
            {"/api/publish", "/api/broadcast", "/api/rooms", "/api/disconnect", "/api/counter", "/api/openapi"},
        )
        self.assertTrue(all(DOCUMENTED in command for command, _ in found))
        self.assertFalse(matches({"room": "lobby"}, {"room": "x", "id": 1}))  # the check can fail
        self.assertFalse(matches({"rooms": []}, {"rooms": [{"name": "x"}]}))
        self.assertFalse(matches({"disconnected": False}, {"disconnected": True}))
        self.assertTrue(matches({"results": [{"id": 1}]}, {"results": [{"id": 2}, {"error": {}}]}))
        self.assertFalse(matches({"results": [{"error": {}}]}, {"results": [{"id": 2}, {"error": {}}]}))
        # an error shown in an example (one a real run cannot cause, like a failed room of a broadcast) has the
        # shared error shape, with a real code and its retry flag
        codes = {e.code: e.retry for e in vars(errors).values() if isinstance(e, errors.ErrorCode)}
        shown = [v["error"] for _, v in fenced_json(API_MD.read_text()) if isinstance(v, dict) and "error" in v]
        shown += [item["error"] for _, v in fenced_json(API_MD.read_text()) if isinstance(v, dict)
                  for item in v.get("results", []) if "error" in item]
        self.assertTrue(shown)
        for error in shown:
            self.assertEqual(set(error) - {"retry_after"}, {"code", "message", "retry"}, error)
            self.assertEqual(codes.get(error["code"]), error["retry"], error)
        with self.assertRaises(AssertionError):
            examples("```sh\ncurl http://127.0.0.1:8080/api/rooms\n```\n\n```text\n{}\n```\n")

    async def test_every_curl_example_answers_like_its_example(self) -> None:
        await self.start()
        chat = port_of(self.tree, "chat")
        # the rooms of the examples are in use: mallory is in the lobby (and is disconnected at the end)
        mallory = await chat_client(self, chat, "mallory")
        self.assertEqual((await mallory.command("/join lobby"))[-1], "OK join lobby")
        alice = await chat_client(self, chat, "alice")
        self.assertEqual((await alice.command("/join ops"))[-1], "OK join ops")
        for n in range(45):  # ids past the "since=40" of the history example
            response = await self.api.post("/api/publish", {"room": "lobby", "text": f"message {n}"})
            self.assertEqual(response.code, 200, response.body)
        base = f"http://127.0.0.1:{port_of(self.tree, 'http')}"
        env = {"KEY": KEY, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for command, expected in examples(API_MD.read_text()):
            out, err, code = await getProcessOutputAndValue(
                "/bin/sh", ["-c", command.replace(DOCUMENTED, base) + " --fail-with-body"], env=env,
                reactor=reactor,
            )
            self.assertEqual(code, 0, f"{command}: {out!r} {err!r}")
            answer = json.loads(out)
            if expected is not None:
                self.assertTrue(matches(answer, expected), f"{command}:\n{answer}\nis not like the example\n{expected}")
        closing = await mallory.read_until("ERR").addTimeout(10, reactor)
        self.assertEqual(closing[-1].split()[:2], ["ERR", "DISCONNECTED"])
