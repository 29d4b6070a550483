"""The operator page (/admin/) in headless Chromium: an admin watches a room appear and kicks from it;
anyone else is refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.support import FAST_ACCOUNTS, chat_client, load, port_of, start_tree
from tests.test_webchat_browser import _el, _els, _fill, _wait, browser, quit_browser
from tests.test_websocket import ws_config

pytestmark = pytest.mark.browser

CONFIG = FAST_ACCOUNTS + """
[rooms]
admins = ["root"]
[admin]
interval = 0.2
"""


def _log_in(driver: Any, url: str, username: str) -> None:
    driver.get(url)
    _wait(driver, lambda d: _el(d, "#status").get_attribute("data-state") == "connected")
    _wait(driver, lambda d: _el(d, "#login-form").is_displayed())
    _fill(driver, {"#login-username": username, "#login-password": "correct horse"})
    _el(driver, "#login").click()


def _room_row(driver: Any, room: str) -> list[Any]:
    return _els(driver, f'#rooms-body tr.room[data-room="{room}"]')


class AdminPageTests(TestCase):
    timeout = 120

    def in_browser(self, fn: Callable[..., Any], *args: Any) -> Any:
        return deferToThread(fn, self.driver, *args)

    async def asyncSetUp(self) -> None:
        self.tree = await start_tree(self, load(self, ws_config() + CONFIG))
        self.line = await chat_client(self, port_of(self.tree, "chat"))
        for name in ("root", "bob"):
            self.assertEqual((await self.line.command(f"/register {name} correct horse"))[-1], f"OK register {name}")
        self.driver = await deferToThread(browser)
        self.addCleanup(deferToThread, quit_browser, self.driver)
        self.url = f"http://127.0.0.1:{port_of(self.tree, 'http')}/admin/"

    async def test_an_admin_sees_a_room_appear_and_kicks_its_member(self) -> None:
        await self.asyncSetUp()

        def dashboard(driver: Any) -> tuple[bool, str]:
            _log_in(driver, self.url, "root")
            _wait(driver, lambda d: _el(d, "#dashboard").is_displayed())
            _wait(driver, lambda d: _el(d, "#who").text == "logged in as root")
            # the charts are drawn and the health of this process is shown
            _wait(driver, lambda d: "database: ok" in _el(d, "#health").text)
            # everything ran under the page's Content-Security-Policy: nothing refused, no script error
            problems = [e["message"] for e in driver.get_log("browser")
                        if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]]
            return _el(driver, "#refused-view").is_displayed(), _el(driver, "#connections-legend").text, problems

        refused, legend, problems = await self.in_browser(dashboard)
        self.assertFalse(refused)
        self.assertEqual(problems, [])
        self.assertIn("websocket 1", legend)

        liner = await chat_client(self, port_of(self.tree, "chat"), "liner")
        self.assertEqual((await liner.command("/join ops"))[-1], "OK join ops")

        def kick(driver: Any) -> str:
            _wait(driver, lambda d: _room_row(d, "ops"))
            row = _room_row(driver, "ops")[0]
            _wait(driver, lambda d: row.find_elements("css selector", "td")[1].text == "1")
            row.find_element("css selector", "button.room-toggle").click()
            member = '#rooms-body tr.members-row[data-room="ops"] li[data-nick="liner"]'
            _wait(driver, lambda d: _els(d, member))
            _el(driver, member + " button.kick").click()
            _wait(driver, lambda d: "Kicked liner from #ops." in _el(d, "#action-feedback").text)
            # the room is empty now: no longer in use, so gone from the list
            _wait(driver, lambda d: not _room_row(d, "ops"))
            return _el(driver, "#rooms-empty").text

        self.assertEqual(await self.in_browser(kick), "No room is in use.")
        self.assertIn("KICK ops liner", (await liner.read_until("KICK ops liner"))[-1])
        self.assertEqual(await self.tree.hub.who("ops"), [])

        # back in the room: the page shows it again (still open), and disconnect closes the line client
        self.assertEqual((await liner.command("/join ops"))[-1], "OK join ops")

        def disconnect(driver: Any) -> str:
            member = '#rooms-body tr.members-row[data-room="ops"] li[data-nick="liner"]'
            _wait(driver, lambda d: _els(d, member) and _els(d, member)[0].is_displayed())
            _el(driver, member + " button.disconnect").click()
            _wait(driver, lambda d: not _room_row(d, "ops"))
            return _el(driver, "#action-feedback").text

        self.assertEqual(await self.in_browser(disconnect), "Disconnected liner.")
        await liner.closed

    async def test_a_non_admin_sees_the_refusal_and_nothing_else(self) -> None:
        await self.asyncSetUp()
        await self.line.command("/join lobby")

        def refused(driver: Any) -> tuple[str, bool, bool, int]:
            _log_in(driver, self.url, "bob")
            _wait(driver, lambda d: _el(d, "#refused-view").is_displayed())
            return (
                _el(driver, "#refused").text, _el(driver, "#dashboard").is_displayed(),
                _el(driver, "#login-form").is_displayed(), len(_els(driver, "#rooms-body tr")),
            )

        text, dashboard, form, rows = await self.in_browser(refused)
        self.assertIn("not an admin", text)
        self.assertEqual((dashboard, form, rows), (False, False, 0))
        self.assertEqual(self.tree.namedServices["operator"].watchers, {})
