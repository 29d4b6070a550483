"""The web chat page in headless Chromium (Debian's chromium + chromedriver, driven by selenium).

The daemon runs in this process's reactor; every selenium call blocks, so each
runs in a thread (deferToThread) while the reactor goes on serving.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from tests.support import chat_client, ci, load, port_of, start_tree
from tests.test_websocket import ws_config

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 20  # seconds a page condition may take before the test fails


def browser() -> Any:
    """A fresh headless Chromium, isolated from the (closed) outside network."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        message = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if ci():
            raise AssertionError(message)
        raise SkipTest(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="myservices-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1200,800",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.myservices_profile = profile
    return driver


def quit_browser(driver: Any) -> None:
    driver.quit()
    shutil.rmtree(driver.myservices_profile, ignore_errors=True)


class WebChatBrowserTests(TestCase):
    timeout = 120

    def in_browser(self, fn: Callable[..., Any], *args: Any) -> Any:
        return deferToThread(fn, self.driver, *args)

    async def test_the_page_chats_with_a_terminal_user(self) -> None:
        tree = await start_tree(self, load(self, ws_config()))
        line = await chat_client(self, port_of(tree, "chat"), "liner")
        await line.command("/join lobby")
        await line.command("/msg lobby before you came")

        self.driver = await deferToThread(browser)
        self.addCleanup(deferToThread, quit_browser, self.driver)
        url = f"http://127.0.0.1:{port_of(tree, 'http')}/chat/"

        def open_and_join(driver: Any) -> list[str]:
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support.ui import WebDriverWait

            wait = WebDriverWait(driver, WAIT)
            driver.get(url)
            status = driver.find_element(By.ID, "status")
            wait.until(lambda d: status.get_attribute("data-state") == "connected")
            nick = driver.find_element(By.ID, "nick")
            nick.clear()
            nick.send_keys("webby")
            driver.find_element(By.CSS_SELECTOR, "#nick-form button").click()
            wait.until(lambda d: d.find_element(By.ID, "nick").get_attribute("value") == "webby"
                       and not d.find_elements(By.CSS_SELECTOR, "#messages li.error"))
            driver.find_element(By.CSS_SELECTOR, "#room-form button").click()
            wait.until(lambda d: "liner" in d.find_element(By.ID, "members").text
                       and "webby" in d.find_element(By.ID, "members").text)
            # the history came with the join
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#messages li.history"))
            return [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#messages li.history")]

        history = await self.in_browser(open_and_join)
        self.assertEqual(len(history), 1)
        self.assertIn("liner", history[0])
        self.assertIn("before you came", history[0])
        await line.read_until("JOIN lobby webby")

        # terminal -> browser
        line.send("hello browser <b>not bold</b>")

        def sees(driver: Any, text: str, where: str = "messages") -> str:
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support.ui import WebDriverWait

            WebDriverWait(driver, WAIT).until(lambda d: text in d.find_element(By.ID, where).text)
            # text, never markup: the message's HTML stays text
            return driver.execute_script("return document.querySelectorAll('#messages b, #dms b').length")

        self.assertEqual(await self.in_browser(sees, "hello browser <b>not bold</b>"), 0)

        # browser -> terminal
        def say(driver: Any, text: str) -> None:
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support.ui import WebDriverWait

            box = driver.find_element(By.ID, "text")
            WebDriverWait(driver, WAIT).until(lambda d: box.is_enabled())
            box.send_keys(text)
            driver.find_element(By.ID, "send").click()

        await self.in_browser(say, "hello terminal")
        self.assertEqual((await line.read_until("MSG lobby 3"))[-1], "MSG lobby 3 webby hello terminal")

        # direct messages both ways: shown as text, sent with "/dm NICK text" as in the line chat
        # (in the page's own list of direct messages, beside the room's)
        line.send("/dm webby <b>just</b> for you")
        self.assertEqual(await self.in_browser(sees, "liner \u2192 webby: <b>just</b> for you", "dms"), 0)
        await self.in_browser(say, "/dm liner back to you")
        self.assertEqual((await line.read_until("DM"))[-1], "DM webby liner back to you")
        await self.in_browser(sees, "webby \u2192 liner: back to you", "dms")

        # the server drops the page's connection: it shows it, reconnects, and is back in the room
        factory = tree.listeners["websocket"].factory
        for conn in list(factory.connections):
            conn.transport.abortConnection()
        line.send("while you were away")  # the page is reconnecting: it gets this by rejoining with since

        def reconnects(driver: Any) -> list[str]:
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support.ui import WebDriverWait

            wait = WebDriverWait(driver, WAIT)
            status = driver.find_element(By.ID, "status")
            seen = []
            wait.until(lambda d: seen.append(status.get_attribute("data-state")) or seen[-1] == "reconnecting")
            wait.until(lambda d: status.get_attribute("data-state") == "connected")
            return seen

        states = await self.in_browser(reconnects)
        self.assertIn("reconnecting", states)
        lines = await line.read_until("JOIN lobby webby")
        self.assertIn("PART lobby webby", lines)
        self.assertEqual(await tree.hub.who("lobby"), ["liner", "webby"])

        # what was said meanwhile shows once, after what the page had shown; nothing shows twice
        def messages(driver: Any) -> list[str]:
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support.ui import WebDriverWait

            WebDriverWait(driver, WAIT).until(lambda d: "while you were away" in d.find_element(By.ID, "messages").text)
            items = driver.find_elements(By.CSS_SELECTOR, "#messages li:not(.system):not(.error)")
            return [(li.text, "history" in li.get_attribute("class").split()) for li in items]

        shown = await self.in_browser(messages)
        away = [i for i, (text, _) in enumerate(shown) if "while you were away" in text]
        hello = [i for i, (text, _) in enumerate(shown) if "hello terminal" in text]
        self.assertEqual((len(away), len(hello)), (1, 1), shown)
        self.assertLess(hello[0], away[0])
        self.assertFalse(shown[hello[0]][1], "the page kept what it showed live; it did not reload the history")


# --- helpers for the account test: each runs in the selenium thread --------------------------------


def _wait(driver: Any, condition: Callable[[Any], Any]) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT).until(condition)


def _el(driver: Any, css: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def _els(driver: Any, css: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def _fill(driver: Any, values: dict[str, str]) -> None:
    for css, value in values.items():
        box = _el(driver, css)
        box.clear()
        box.send_keys(value)


def _who(driver: Any) -> str:
    return _el(driver, "#who").text


def _connected(driver: Any) -> bool:
    return _el(driver, "#status").get_attribute("data-state") == "connected"


class WebChatAccountTests(TestCase):
    """The page's login form (the cookie), its identity, private rooms, invitations and direct messages."""

    timeout = 120

    def in_browser(self, fn: Callable[..., Any], *args: Any) -> Any:
        return deferToThread(fn, self.driver, *args)

    async def test_log_in_create_a_private_room_and_talk_directly(self) -> None:
        # three failed logins from one address, then RATE_LIMITED (the default is 10)
        tree = await start_tree(self, load(self, ws_config() + "[accounts]\nlogin_failures_per_address = 3\n"))
        line = await chat_client(self, port_of(tree, "chat"), "liner")
        self.assertEqual((await line.command("/register alice correct horse"))[-1], "OK register alice")
        self.assertEqual((await line.command("/register bob battery staple"))[-1], "OK register bob")
        await line.command("/join lobby")

        self.driver = await deferToThread(browser)
        self.addCleanup(deferToThread, quit_browser, self.driver)
        url = f"http://127.0.0.1:{port_of(tree, 'http')}/chat/"

        def open_as_guest(driver: Any) -> str:
            driver.get(url)
            _wait(driver, _connected)
            _wait(driver, lambda d: "not logged in" in _who(d))
            _el(driver, "#room-form button").click()
            _wait(driver, lambda d: _el(d, "#room-name").text == "#lobby")
            return _who(driver)

        guest = await self.in_browser(open_as_guest)
        self.assertRegex(guest, r"^guest\d+ \(not logged in\)$")
        guest_nick = guest.split()[0]
        await line.read_until(f"JOIN lobby {guest_nick}")

        # a wrong password: the form says so, and the page stays a guest
        def log_in(driver: Any, username: str, password: str) -> None:
            _fill(driver, {"#login-username": username, "#login-password": password})
            _el(driver, "#login").click()

        def login_error(driver: Any) -> str:
            return _wait(driver, lambda d: _el(d, "#login-error.bad").text)  # not "logging in…"

        await self.in_browser(log_in, "alice", "wrong horse")
        self.assertEqual(await self.in_browser(login_error), "Wrong username or password.")
        self.assertEqual(await self.in_browser(_who), guest)

        # the right one: the cookie is set, the page reconnects logged in and goes back to its room
        await self.in_browser(log_in, "alice", "correct horse")

        def logged_in(driver: Any) -> tuple[str, str, bool, bool]:
            _wait(driver, lambda d: _who(d) == "logged in as alice" and _connected(d))
            _wait(driver, lambda d: "alice" in _el(d, "#members").text and _el(d, "#text").is_enabled())
            cookie = driver.get_cookie("myservices_token")
            return (
                _el(driver, "#nick").get_attribute("value"), cookie and cookie["httpOnly"],
                _el(driver, "#login-form").is_displayed(), _el(driver, "#logout").is_displayed(),
            )

        self.assertEqual(await self.in_browser(logged_in), ("alice", True, False, True))
        lines = await line.read_until("JOIN lobby alice")
        self.assertIn(f"PART lobby {guest_nick}", lines)

        # a message from the account: the line client sees it from the nick alice; the page marks accounts
        def say(driver: Any, text: str) -> None:
            box = _el(driver, "#text")
            _wait(driver, lambda d: box.is_enabled())
            box.send_keys(text)
            _el(driver, "#send").click()

        await self.in_browser(say, "hello from an account")
        self.assertRegex((await line.read_until("MSG lobby"))[-1], r"^MSG lobby \d+ alice hello from an account$")
        line.send("hello from a guest")

        def badges(driver: Any) -> dict[str, bool]:
            _wait(driver, lambda d: "hello from a guest" in _el(d, "#messages").text)
            shown = {}
            for li in _els(driver, "#messages li[data-id]"):
                nick = li.find_element("css selector", ".nick").text
                shown[nick] = bool(li.find_elements("css selector", ".badge"))
            return shown

        self.assertEqual(await self.in_browser(badges), {"alice": True, "liner": False})

        # a private room: created and joined from the page; a line client that is not a member is refused
        def create(driver: Any, room: str) -> str:
            _fill(driver, {"#private-room": room})
            _el(driver, "#create").click()
            _wait(driver, lambda d: _el(d, "#room-name").text == "#" + room and _el(d, "#invite").is_enabled())
            return _el(driver, "#private-feedback").text

        self.assertIn("#secret is private", await self.in_browser(create, "secret"))
        self.assertRegex((await line.command("/join secret"))[-1], r"^ERR FORBIDDEN ")

        # an invitation lets an account in
        def invite(driver: Any, username: str) -> str:
            _fill(driver, {"#invite-username": username})
            _el(driver, "#invite").click()
            return _wait(driver, lambda d: _el(d, "#invite-feedback").text)

        self.assertEqual(await self.in_browser(invite, "bob"), "Invited bob to #secret.")
        bob = await chat_client(self, port_of(tree, "chat"))
        self.assertEqual((await bob.command("/login bob battery staple"))[-1], "OK login bob")
        self.assertEqual((await bob.command("/join secret"))[-1], "OK join secret")

        # the owner's commands are the owner's: an invitation to a room alice does not own is refused, readably
        await bob.command("/create bobs")

        def refused_invite(driver: Any) -> str:
            _fill(driver, {"#room": "bobs"})
            _el(driver, "#room-form button").click()
            _wait(driver, lambda d: "join #bobs: Not allowed" in _el(d, "#messages").text)
            return _el(driver, "#room-name").text

        self.assertEqual(await self.in_browser(refused_invite), "#secret")

        # a direct message from the line client shows in the page's direct messages, as text
        line.send("/dm alice hi <i>alice</i>")

        def direct(driver: Any) -> tuple[str, int]:
            _wait(driver, lambda d: "liner \u2192 alice: hi <i>alice</i>" in _el(d, "#dms").text)
            return _el(driver, "#dm-nick").get_attribute("value"), len(_els(driver, "#dms i"))

        self.assertEqual(await self.in_browser(direct), ("liner", 0))  # ready to answer

        # log out: a guest again, whom the private room refuses on the way back in
        def log_out(driver: Any) -> tuple[str, str, bool]:
            _el(driver, "#logout").click()
            _wait(driver, lambda d: "not logged in" in _who(d) and _connected(d))
            _wait(driver, lambda d: _el(d, "#room-name").text == "no room")
            return _who(driver), _el(driver, "#messages li.error:last-child").text, _el(driver, "#create").is_enabled()

        who, error, can_create = await self.in_browser(log_out)
        self.assertRegex(who, r"^guest\d+ \(not logged in\)$")
        self.assertTrue(error.startswith("join #secret: Not allowed"), error)
        self.assertFalse(can_create)
        self.assertIsNone(await self.in_browser(lambda d: d.get_cookie("myservices_token")))

        # a direct message without being in any room
        def send_direct(driver: Any, nick: str, text: str) -> None:
            _fill(driver, {"#dm-nick": nick, "#dm-text": text})
            _el(driver, "#dm-send").click()
            _wait(driver, lambda d: f"\u2192 {nick}: {text}" in _el(d, "#dms").text)

        await self.in_browser(send_direct, "liner", "from nowhere")
        self.assertRegex((await line.read_until("DM"))[-1], r"^DM guest\d+ liner from nowhere$")

        # the form can also create an account, which it then logs in to
        def register(driver: Any) -> str:
            _fill(driver, {"#login-username": "carol", "#login-password": "tr0ub4dor"})
            _el(driver, "#register").click()
            _wait(driver, lambda d: _who(d) == "logged in as carol" and _connected(d))
            return _el(driver, "#nick").get_attribute("value")

        self.assertEqual(await self.in_browser(register), "carol")

        # wrong passwords: the page tells a refusal from a wrong password, with the time to wait
        def log_out_and_fail(driver: Any, times: int) -> list[str]:
            _el(driver, "#logout").click()
            _wait(driver, lambda d: "not logged in" in _who(d) and _connected(d))
            answers = []
            for _ in range(times):
                log_in(driver, "carol", "not it")
                answers.append(login_error(driver))
            return answers

        answers = await self.in_browser(log_out_and_fail, 3)
        self.assertEqual(answers[:2], ["Wrong username or password."] * 2)  # with alice's, three failures
        self.assertRegex(answers[2], r"^Too many attempts: try again in \d+ s\.$")

        # a cookie whose token the server refuses: the page says so, stays a guest and clears the cookie
        def bad_cookie(driver: Any) -> str:
            driver.add_cookie({"name": "myservices_token", "value": "not.a.token", "httpOnly": True, "path": "/"})
            driver.refresh()
            _wait(driver, lambda d: _connected(d) and "not logged in" in _who(d))
            _wait(driver, lambda d: d.get_cookie("myservices_token") is None)
            return _el(driver, "#login-error").text

        self.assertEqual(
            await self.in_browser(bad_cookie),
            "Your login is no longer valid (malformed token): log in again.",
        )
