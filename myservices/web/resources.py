"""The HTTP service's resources: the request counter, health, readiness and metrics."""

from __future__ import annotations

import json
import math
import os
from functools import partial
from typing import TYPE_CHECKING, Any

from prometheus_client.exposition import choose_encoder
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from myservices.errors import NOT_FOUND, UNAUTHENTICATED, RequestError
from myservices.handlers.pipeline import classify
from myservices.web.request import error_response, http_status

if TYPE_CHECKING:
    from myservices.counter import DurableCounter
    from myservices.health import Readiness
    from myservices.metrics import Metrics


def _no_store(request: Request, content_type: bytes) -> None:
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Cache-Control", b"no-store")


def finish(request: Request, body: bytes) -> None:
    """Write the whole body with its length and finish (without a length, HTTP/1.1 would use chunked framing)."""
    request.setHeader(b"Content-Length", b"%d" % len(body))
    request.write(body)
    request.finish()


def gone(request: Request) -> bool:
    """True when the client disconnected before its answer was ready (finishing would raise)."""
    return bool(getattr(request, "_disconnected", False))


def write_json(request: Request, status: int, value: Any) -> None:
    """Finish C{request} with C{value} as JSON, unless the client has gone."""
    if gone(request):
        return
    request.setResponseCode(status)
    _no_store(request, b"application/json")
    finish(request, json.dumps(value).encode() + b"\n")


class HttpErrors:
    """Answers a failed request (one error path for every JSON route): the client's error with its HTTP status
    and the shared error shape, anything else logged once and 500 INTERNAL, never a traceback. A 429 or 503
    says when to retry (Retry-After: the error's own time, else C{retry_after}); a 401 for a missing or wrong
    API key says how to authenticate (WWW-Authenticate)."""

    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after

    def respond(self, failure: Failure, request: Request) -> None:
        route = f"{request.method.decode('latin-1')} {request.uri.decode('latin-1')}"
        self.answer(classify(failure, "http", route), request)

    def answer(self, error: RequestError, request: Request) -> None:
        if gone(request):
            return
        status = http_status(error)
        if error.error is UNAUTHENTICATED:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="myservices"')
        if status in (429, 503):
            wait = self.retry_after if error.retry_after is None else max(1, math.ceil(error.retry_after))
            request.setHeader(b"Retry-After", b"%d" % wait)
        finish(request, error_response(request, status, error.error, error.detail))


class JsonRoot(Resource):
    """A directory of resources that answers unknown paths with a JSON 404 (not twisted.web's HTML page)."""

    def getChild(self, path: bytes, request: Request) -> Resource:
        return NotFound()


class NotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return error_response(request, 404, NOT_FOUND)


class _CounterResource(Resource):
    isLeaf = True

    def __init__(self, counter: DurableCounter, errors: HttpErrors) -> None:
        super().__init__()
        self.counter = counter
        self.errors = errors


class CounterPage(_CounterResource):
    """C{GET /}: C{I am request #N}, N from the durable counter."""

    def render_GET(self, request: Request) -> bytes | int:
        n = self.counter.take_now()
        if n is not None:
            # the usual case: a number of the block this process has reserved, answered at once
            _no_store(request, b"text/plain; charset=utf-8")
            return b"I am request #%d\n" % n
        self.counter.take(partial(self._answer, request), partial(self.errors.respond, request=request))
        return NOT_DONE_YET

    def render_HEAD(self, request: Request) -> bytes:
        # HEAD is safe: it must not take a number
        _no_store(request, b"text/plain; charset=utf-8")
        return b""

    @staticmethod
    def _answer(request: Request, n: int) -> None:
        if gone(request):
            return  # the number is skipped: never handed out twice
        _no_store(request, b"text/plain; charset=utf-8")
        finish(request, b"I am request #%d\n" % n)


class CounterApi(_CounterResource):
    """C{GET /api/counter}: C{{"value": N}}, the last number handed out, without taking one."""

    def render_GET(self, request: Request) -> int:
        d = self.counter.current()
        d.addCallbacks(
            lambda value: write_json(request, 200, {"name": self.counter.name, "value": value}),
            self.errors.respond, errbackArgs=(request,),
        )
        return NOT_DONE_YET


class Healthz(Resource):
    """C{GET /healthz}: 200 while the process runs and the reactor turns; with workers, which one answered."""

    isLeaf = True

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        body: dict[str, Any] = {"status": "ok"}
        if worker is not None:
            body.update(worker=worker, pid=os.getpid())
        self.body = json.dumps(body).encode() + b"\n"

    def render_GET(self, request: Request) -> bytes:
        _no_store(request, b"application/json")
        return self.body


class Readyz(Resource):
    """C{GET /readyz}: 200 when every listener is bound and the database answers in time, else 503."""

    isLeaf = True

    def __init__(self, readiness: Readiness, timeout: float) -> None:
        super().__init__()
        self.readiness = readiness
        self.timeout = timeout

    def render_GET(self, request: Request) -> int:
        d = Deferred.fromCoroutine(self.readiness.check(self.timeout))

        def answer(report: Any) -> None:
            body: dict[str, Any] = {"status": "ready" if report.ready else "not ready", "checks": report.checks}
            if not report.ready:
                body["failed"] = report.failed
            write_json(request, 200 if report.ready else 503, body)

        d.addCallback(answer)
        d.addErrback(HttpErrors(1).respond, request)
        return NOT_DONE_YET


class MetricsPage(Resource):
    """C{GET /metrics}: the tree's registry in Prometheus text (or OpenMetrics, if asked for).

    Rendered on the reactor thread: some gauges read state the reactor owns,
    and one scrape of this registry takes about a millisecond. With workers,
    the page sums every worker's metric files: this worker's pending counts
    are folded in on the reactor thread, then the files are read in a thread.
    """

    isLeaf = True

    def __init__(self, metrics: Metrics, reactor: Any) -> None:
        super().__init__()
        self.metrics = metrics
        self.registry = metrics.export_registry
        self._reactor = reactor

    def render_GET(self, request: Request) -> bytes | int:
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        _no_store(request, content_type.encode())
        if not self.metrics.multiprocess:
            return encoder(self.registry)
        self.metrics.flush()
        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), encoder, self.registry)
        d.addCallback(lambda body: None if gone(request) else finish(request, body))
        d.addErrback(HttpErrors(1).respond, request)  # logged with its traceback, answered 500
        return NOT_DONE_YET
