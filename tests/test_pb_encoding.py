"""PB's fast paths write exactly what Twisted's jelly and banana would: the wire format is PB's."""

from __future__ import annotations

from typing import Any

from twisted.spread import banana, jelly, pb
from twisted.trial.unittest import TestCase

from myservices.pb.banana import encode
from myservices.pb.plain import jelly_plain, serialize
from myservices.pb.calls import jelly_security

SEXPS: list[Any] = [
    [b"answer", 1, [b"dictionary", [[b"unicode", b"data"], [b"unicode", b"x" * 40]]]],
    0, 127, 128, 16383, 16384, -1, -(2**31), -(2**31) - 1, 2**31 - 1, 2**31, 2**40, -(2**40),
    1.5, -0.0, float("inf"), b"", b"y" * 200, b"z" * 20_000, (1, (2, [3])), [b"list", b"tuple", b"None", b"not a symbol"],
    True, [False, [True]],
]

VALUES: list[Any] = [
    {"data": "x" * 40}, {"a": [1, 2.5, None, True, False, ("t", b"b")], "é": {"n": -1, "big": 2**70}},
    "s", "", 3, -3, 1e300, None, [], {}, (), [[[]]],
]


def twisted_encode(broker: banana.Banana, obj: Any) -> bytes:
    chunks: list[bytes] = []
    broker._encode(obj, chunks.append)
    return b"".join(chunks)


class EncodingTests(TestCase):
    def broker(self, dialect: bytes | None) -> pb.Broker:
        broker = pb.Broker()
        broker.setPrefixLimit(64)
        broker.currentDialect = dialect
        return broker

    def test_banana_bytes_are_twisted_s_with_and_without_the_pb_vocabulary(self) -> None:
        for dialect in (b"pb", None):
            broker = self.broker(dialect)
            for sexp in SEXPS:
                self.assertEqual(encode(broker, sexp), twisted_encode(broker, sexp), (dialect, sexp))

    def test_what_banana_cannot_send_raises_its_error(self) -> None:
        broker = self.broker(b"pb")
        for obj in ([object()], 2**1000, b"x" * (banana.SIZE_LIMIT + 1), [b"x"] * (banana.SIZE_LIMIT + 1)):
            self.assertRaises(banana.BananaError, encode, broker, obj)

    def test_plain_results_are_jellied_as_jelly_does(self) -> None:
        for value in VALUES:
            self.assertEqual(jelly_plain(value), jelly.jelly(value, jelly_security()), value)

    def test_anything_else_goes_through_the_broker(self) -> None:
        broker = self.broker(b"pb")
        shared: list[Any] = [1]
        value = {"a": shared, "b": shared}  # jelly writes the second as a reference to the first
        self.assertEqual(serialize(broker, [shared, shared]), jelly_plain([shared, shared]))  # copies: equal data
        self.assertEqual(serialize(broker, {1: "int key"}), jelly.jelly({1: "int key"}, jelly_security()))
        self.assertEqual(serialize(broker, {"set": {1}}), broker.serialize({"set": {1}}))
        self.assertIsInstance(serialize(broker, value), list)
