"""pytest wiring for the trial TestCases, and the guards that keep the mysql and redis markers true."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests import mysql, redisserver

_running: pytest.Item | None = None


@pytest.fixture(autouse=True, scope="session")
def _work_in_a_temporary_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # trial's TestCase.mktemp() makes paths relative to the working directory
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("trial"))
    try:
        yield
    finally:
        os.chdir(previous)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    global _running
    _running = item
    yield
    _running = None


_server = mysql.server


def _marked_server() -> mysql.Server:
    """mysql.server() for tests marked mysql only, so that -m "not mysql" never needs a server."""
    if _running is not None and _running.get_closest_marker("mysql") is None:
        raise AssertionError(f"{_running.nodeid} uses MySQL: mark its class @pytest.mark.mysql")
    return _server()


mysql.server = _marked_server  # create_database() calls it through the module, so it is guarded too


_start_redis = redisserver.start_redis


def _marked_redis(testcase: object) -> redisserver.RedisServer:
    """redisserver.start_redis() for tests marked redis only, so that -m "not redis" never needs redis-server."""
    if _running is not None and _running.get_closest_marker("redis") is None:
        raise AssertionError(f"{_running.nodeid} uses Redis: mark its class @pytest.mark.redis")
    return _start_redis(testcase)


redisserver.start_redis = _marked_redis
