"""Reloading the configuration while running: live limits change without dropping connections;
what needs a restart is logged; an invalid file changes nothing."""

from __future__ import annotations

import io
import json
import textwrap
from pathlib import Path
from typing import Any

from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.application.service import Application
from twisted.trial.unittest import TestCase

from myservices.registry import load_config
from myservices.logs import LogOutput
from myservices.tree import ServiceTree
from tests.support import chat_client, port_of, start_tree, write_config
from tests.wsclient import raw_handshake

CONFIG = """
[daemon]
shutdown_timeout = 2
close_timeout = {close}
[database]
url = "sqlite:///:memory:"
[hub]
publish_rate = {rate}
publish_burst = 1
[services.chat]
endpoint = "{endpoint}"
max_line_length = {line}
[services.websocket]
endpoint = "tcp:0:interface=127.0.0.1"
allowed_origins = [{origins}]
"""


class ReloadTests(TestCase):
    timeout = 30

    def write(self, path: Path, rate: float = 1000.0, endpoint: str = "tcp:0:interface=127.0.0.1", line: int = 200,
              origins: str = "", close: float = 7.0) -> None:
        text = CONFIG.format(rate=rate, endpoint=endpoint, line=line, origins=origins, close=close)
        path.write_text(textwrap.dedent(text))

    async def start(self) -> tuple[ServiceTree, Path]:
        path = write_config(self, "")
        self.write(path)
        tree = await start_tree(self, load_config(path, environ={}))
        return tree, path

    def capture_log(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events

    async def test_a_limit_changes_on_an_open_connection(self) -> None:
        tree, path = await self.start()
        client = await chat_client(self, port_of(tree, "chat"), "ann")
        line = "x" * 80
        lines = await client.command(f"/nick {line}")  # too long for a nick, not for a line
        self.assertTrue(lines[-1].startswith("ERR NICK_INVALID"), lines)
        self.write(path, line=64)
        events = self.capture_log()
        self.assertTrue(tree.getServiceNamed("reload").reload(environ={}))
        lines = await client.command(f"/nick {line}")
        self.assertTrue(lines[-1].startswith("ERR LINE_TOO_LONG"), lines)
        # the same connection goes on
        self.assertEqual((await client.command("/nick bea"))[-1], "OK nick bea")
        texts = [e.get("log_format", "").format(**e) for e in events]
        self.assertIn("reload: services.chat.max_line_length = 64", texts)

    async def test_close_timeout_reaches_every_listener_and_changes_live(self) -> None:
        tree, path = await self.start()
        timeouts = {name: s.factory.close_timeout for name, s in tree.listeners.items()}
        self.assertEqual(timeouts, {"chat": 7.0, "websocket": 7.0})
        self.write(path, close=3.0)
        events = self.capture_log()
        self.assertTrue(tree.getServiceNamed("reload").reload(environ={}))
        timeouts = {name: s.factory.close_timeout for name, s in tree.listeners.items()}
        self.assertEqual(timeouts, {"chat": 3.0, "websocket": 3.0})
        texts = [e.get("log_format", "").format(**e) for e in events]
        self.assertIn("reload: daemon.close_timeout = 3.0", texts)

    async def test_what_needs_a_restart_is_logged_and_not_applied(self) -> None:
        tree, path = await self.start()
        port = port_of(tree, "chat")
        self.write(path, endpoint="tcp:0:interface=127.0.0.2", rate=5.0)
        events = self.capture_log()
        self.assertTrue(tree.getServiceNamed("reload").reload(environ={}))
        self.assertEqual(port_of(tree, "chat"), port)
        warnings = [e["key"] for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(warnings, ["services.chat.endpoint"])
        self.assertEqual(tree.hub.config.publish_rate, 5.0)  # live

    async def test_reverting_a_change_that_waits_for_a_restart_asks_for_no_restart(self) -> None:
        tree, path = await self.start()
        reload = tree.getServiceNamed("reload")
        running = tree.config.services["chat"].endpoint
        self.write(path, endpoint="tcp:0:interface=127.0.0.2")
        events = self.capture_log()
        self.assertTrue(reload.reload(environ={}))
        warnings = [e["key"] for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(warnings, ["services.chat.endpoint"])
        # a second SIGHUP with the change still in the file: still waiting, said again
        del events[:]
        self.assertTrue(reload.reload(environ={}))
        self.assertEqual([e["key"] for e in events if e.get("log_level") == LogLevel.warn], ["services.chat.endpoint"])
        # the file says the running value again, and a live key changes meanwhile
        self.write(path, endpoint=running, line=128)
        del events[:]
        self.assertTrue(reload.reload(environ={}))
        texts = [e.get("log_format", "").format(**e) for e in events]
        self.assertEqual([e for e in events if e.get("log_level") == LogLevel.warn], [], texts)
        self.assertIn("reload: services.chat.max_line_length = 128", texts)
        self.assertIn(
            "reload: services.chat.endpoint is back to the value the daemon runs with; no restart needed for it", texts
        )
        self.assertIn("1 change(s) applied, 0 waiting for a restart", texts[-1])
        self.assertEqual(reload.applied_config.services["chat"].endpoint, running)
        # once back, nothing more is said about it
        del events[:]
        self.assertTrue(reload.reload(environ={}))
        texts = [e.get("log_format", "").format(**e) for e in events]
        self.assertEqual(len(texts), 1, texts)
        self.assertIn("0 change(s) applied, 0 waiting for a restart", texts[0])

    async def test_a_service_added_and_removed_again_asks_for_no_restart(self) -> None:
        tree, path = await self.start()
        reload = tree.getServiceNamed("reload")
        original = path.read_text()
        path.write_text(original + '[services.echo]\nendpoint = "tcp:0:interface=127.0.0.1"\n')
        events = self.capture_log()
        self.assertTrue(reload.reload(environ={}))
        self.assertEqual([e["key"] for e in events if e.get("log_level") == LogLevel.warn], ["services.echo"])
        self.assertNotIn("echo", reload.applied_config.services)  # not running
        path.write_text(original)
        del events[:]
        self.assertTrue(reload.reload(environ={}))
        self.assertEqual([e for e in events if e.get("log_level") == LogLevel.warn], [])
        self.assertIn("services.echo", [e.get("key") for e in events])

    async def test_an_invalid_file_changes_nothing(self) -> None:
        tree, path = await self.start()
        path.write_text(path.read_text().replace("max_line_length = 200", "max_line_length = -1"))
        events = self.capture_log()
        self.assertFalse(tree.getServiceNamed("reload").reload(environ={}))
        self.assertEqual(tree.listeners["chat"].factory.max_line_length, 200)
        (error,) = [e for e in events if e.get("log_level") == LogLevel.error]
        self.assertIn("services.chat.max_line_length", error["problems"])

    async def test_allowed_origins_change_for_new_handshakes(self) -> None:
        tree, path = await self.start()
        port = port_of(tree, "websocket")
        self.assertIn(" 403 ", await raw_handshake(self, port, "/echo", {"Origin": "https://app.example"}))
        self.write(path, origins='"https://app.example"')
        self.assertTrue(tree.getServiceNamed("reload").reload(environ={}))
        self.assertIn(" 101 ", await raw_handshake(self, port, "/echo", {"Origin": "https://app.example"}))


class LogOutputTests(TestCase):
    def test_json_lines_with_structured_fields_and_a_live_level(self) -> None:
        stream = io.StringIO()
        output = LogOutput("json", "warn", stream)
        log = Logger(namespace="test", observer=output.observer)
        log.info("hidden {peer}", peer="1.2.3.4")
        log.warn("shown {peer}", peer="1.2.3.4", code="SLOW_CONSUMER")
        output.set_level("info")
        log.info("now shown")
        lines = stream.getvalue().splitlines()
        self.assertEqual(len(lines), 2)
        first = json.loads(lines[0])
        self.assertEqual((first["peer"], first["code"], first["log_format"]), ("1.2.3.4", "SLOW_CONSUMER", "shown {peer}"))
        self.assertEqual(json.loads(lines[1])["log_format"], "now shown")

    def test_json_lines_carry_a_message_a_level_name_and_an_iso_time(self) -> None:
        stream = io.StringIO()
        observer = LogOutput("json", "info", stream).observer
        # what Logger.warn emits, at a time of our choosing
        observer({
            "log_format": "{service} refused {peer}: {count} connections", "log_level": LogLevel.warn,
            "log_namespace": "myservices.test", "log_source": None, "log_logger": Logger(), "log_time": 1796310245.1239,
            "service": "chat", "peer": "1.2.3.4", "count": 3, "code": "BUSY",
        })
        (line,) = stream.getvalue().splitlines()
        event = json.loads(line)
        self.assertEqual(event["message"], "chat refused 1.2.3.4: 3 connections")
        self.assertEqual(event["level"], "warn")
        self.assertEqual(event["time"], "2026-12-03T15:04:05.123Z")
        self.assertEqual(event["namespace"], "myservices.test")
        # the structured fields beside them, as they were
        self.assertEqual((event["service"], event["peer"], event["count"], event["code"]), ("chat", "1.2.3.4", 3, "BUSY"))
        self.assertEqual(event["log_format"], "{service} refused {peer}: {count} connections")
        self.assertNotIn("log_level", event)
        self.assertNotIn("log_time", event)

    def test_a_failure_carries_its_traceback_as_text(self) -> None:
        stream = io.StringIO()
        log = Logger(namespace="test", observer=LogOutput("json", "info", stream).observer)
        try:
            {}["missing"]
        except KeyError:
            log.failure("handling {what} failed", what="a request")
        event = json.loads(stream.getvalue())
        self.assertEqual((event["level"], event["message"]), ("critical", "handling a request failed"))
        self.assertTrue(event["traceback"].startswith("Traceback (most recent call last):"), event["traceback"])
        self.assertIn("KeyError: 'missing'", event["traceback"])
        self.assertIn("test_a_failure_carries_its_traceback_as_text", event["traceback"])

    def test_objects_go_in_only_as_the_message_shows_them(self) -> None:
        class Holder:
            def __str__(self) -> str:
                return "shown"

            def __repr__(self) -> str:
                return "Holder(password='hunter2')"

        stream = io.StringIO()
        log = Logger(namespace="test", observer=LogOutput("json", "info", stream).observer)
        log.info("peer {peer}", peer=Holder(), config=Holder(), ratio=float("nan"), nested={"a": [1, "b"]})
        event = json.loads(stream.getvalue())
        self.assertEqual((event["message"], event["peer"], event["nested"]), ("peer shown", "shown", {"a": [1, "b"]}))
        self.assertNotIn("config", event)  # not in the message: not in the line either
        self.assertNotIn("ratio", event)  # NaN is not JSON
        self.assertNotIn("hunter2", stream.getvalue())

    def test_legacy_twisted_events_are_lines_like_any_other(self) -> None:
        from twisted.python import log as legacy

        stream = io.StringIO()
        observer = LogOutput("json", "info", stream).observer
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        legacy.msg("old style", "message", system="tcp")
        legacy.err(ValueError("bad"), "while testing")
        self.flushLoggedErrors(ValueError)
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        self.assertEqual(len(lines), 2, lines)
        first, second = lines
        self.assertEqual((first["message"], first["level"], first["system"]), ("old style message", "info", "tcp"))
        self.assertEqual(second["level"], "critical")
        self.assertIn("while testing", second["message"])
        self.assertIn("ValueError: bad", second["traceback"])
        for line in lines:
            self.assertFalse({"isError", "why", "failure", "format"} & set(line), line)

    def test_only_non_default_settings_replace_twistds_observer(self) -> None:
        self.assertFalse(LogOutput.wanted("text", "info"))
        self.assertTrue(LogOutput.wanted("json", "info"))
        self.assertTrue(LogOutput.wanted("text", "debug"))

    def test_the_tree_hands_twistd_its_observer(self) -> None:
        from twisted.internet import reactor

        from myservices.tree import build_service_tree

        path = write_config(self, '[daemon]\nlog_format = "json"\n[database]\nurl = "sqlite:///:memory:"\n')
        tree = build_service_tree(load_config(path, environ={}), reactor)
        application = Application("myservices")  # what twistd makes
        tree.setServiceParent(application)
        from twisted.logger import ILogObserver

        self.assertIs(application.getComponent(ILogObserver), tree.log_output.observer)
