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

        def sees(driver: Any, text: str) -> str:
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support.ui import WebDriverWait

            WebDriverWait(driver, WAIT).until(lambda d: text in d.find_element(By.ID, "messages").text)
            # text, never markup: the message's HTML stays text
            return driver.execute_script("return document.querySelectorAll('#messages b').length")

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
        line.send("/dm webby <b>just</b> for you")
        self.assertEqual(await self.in_browser(sees, "[dm liner \u2192 webby] <b>just</b> for you"), 0)
        await self.in_browser(say, "/dm liner back to you")
        self.assertEqual((await line.read_until("DM"))[-1], "DM webby liner back to you")

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
