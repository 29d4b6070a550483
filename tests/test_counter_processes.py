"""The durable counter's blocks with real daemon processes: kill -9 mid-block, two processes on one SQLite file."""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor

from twisted.trial.unittest import TestCase

from tests.test_workers_processes import Daemon

CONFIG = """
    [daemon]
    data_dir = "state"
    [database]
    url = "sqlite:///{path}"
    counter_block = {block}
    [services.http]
    endpoint = "tcp:0:interface=127.0.0.1"
"""


def take(daemon: Daemon, requests: int) -> list[int]:
    """C{requests} numbers from the counter page, one after the other, each on a new connection."""
    numbers = []
    for _ in range(requests):
        status, body = daemon.get("/")
        assert status == 200, (status, body)
        numbers.append(int(re.fullmatch(rb"I am request #(\d+)\n", body).group(1)))  # type: ignore[union-attr]
    return numbers


def current(daemon: Daemon) -> int:
    status, body = daemon.get("/api/counter")
    assert status == 200, (status, body)
    return int(re.search(rb'"value": (\d+)', body).group(1))  # type: ignore[union-attr]


class CounterProcessTests(TestCase):
    timeout = 120

    def start(self, path: str, block: int) -> Daemon:
        daemon = Daemon(self, CONFIG.format(path=path, block=block))
        daemon.ready()
        return daemon

    def test_kill_9_mid_block_skips_the_rest_of_it_and_repeats_no_number(self) -> None:
        path = os.path.abspath(self.mktemp()) + ".sqlite3"
        first = self.start(path, block=50)
        self.assertEqual(take(first, 7), list(range(1, 8)))
        first.proc.kill()  # SIGKILL mid-block: numbers 8 to 50 were reserved, and never handed out
        first.proc.wait()

        second = self.start(path, block=50)
        self.assertEqual(current(second), 50)  # the reserved block, an upper bound of what was handed out
        self.assertEqual(take(second, 3), [51, 52, 53])  # above every number handed out before the crash
        second.proc.terminate()  # a graceful stop gives the unused end of its block back
        second.proc.wait()

        third = self.start(path, block=50)
        self.assertEqual(current(third), 53)
        self.assertEqual(take(third, 2), [54, 55])

    def test_two_processes_on_one_sqlite_file_never_hand_out_the_same_number(self) -> None:
        path = os.path.abspath(self.mktemp()) + ".sqlite3"
        daemons = [self.start(path, block=5), self.start(path, block=5)]  # small blocks: many, interleaved
        with ThreadPoolExecutor(4) as pool:
            taken = list(pool.map(lambda i: take(daemons[i % 2], 40), range(4)))
        numbers = [n for client in taken for n in client]
        self.assertEqual(len(set(numbers)), len(numbers))
        for client in taken:  # one process hands out its numbers in increasing order
            self.assertEqual(client, sorted(client))
            self.assertEqual(len(set(client)), len(client))
