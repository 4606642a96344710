"""
Tests for L{twisted_rp.http.message.Headers} answering from the unsplit head: the same result
as on split fields, without splitting when it need not.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.trial.unittest import SynchronousTestCase

from twisted_rp.http.message import Headers

BLOCKS = [
    b"",
    b"Server: x",
    b"A: 1\r\nServer: nginx\r\nB: 2",
    b"Server: a\r\nServer: b",
    b"A: 1\r\nserver: z",
    b"X-Server: 1\r\nServer-Timing: 2\r\nServer: 3",
    b"A: 1\r\nB: 2\r\nSERVER:  4",
    b"Server: 1\r\nA: 2\r\nServer: 3\r\nB: 4",
]

Operation = Callable[[Headers], object]

OPERATIONS: list[tuple[str, Operation]] = [
    ("remove", lambda h: h.remove(b"Server")),
    ("add", lambda h: h.add(b"X-New", b"v")),
    ("set present", lambda h: h.set(b"Server", b"s")),
    ("set absent", lambda h: h.set(b"X-Frame-Options", b"DENY")),
    ("remove two", lambda h: (h.remove(b"a"), h.remove(b"b"))),
    ("remove then add", lambda h: (h.remove(b"Server"), h.add(b"Server", b"q"))),
    ("remove all", lambda h: h.remove_all(frozenset({b"server", b"b", b"x-absent"}))),
]


def fields(headers: Headers) -> list[tuple[bytes, bytes]]:
    """The fields as a client would read them: case-insensitive names, trimmed values."""
    return [(name.lower(), value.strip()) for name, value in headers]


class RawEquivalenceTests(SynchronousTestCase):
    def test_same_fields_either_way(self) -> None:
        """Every operation gives the same fields on an unsplit block as on split fields."""
        for block in BLOCKS:
            for label, operation in OPERATIONS:
                raw, split = Headers.from_block(block), Headers.from_block(block)
                split.fields  # noqa: B018 (splits the block)
                operation(raw)
                operation(split)
                self.assertEqual(
                    fields(Headers.from_block(raw.serialize().rstrip(b"\r\n"))),
                    fields(split),
                    f"{label} on {block!r}",
                )

    def test_get(self) -> None:
        headers = Headers.from_block(b"Host: a.example\r\nX-Server: 1\r\nserver:  nginx ")
        self.assertEqual(headers.get(b"Server"), b"nginx")
        self.assertEqual(headers.get(b"host"), b"a.example")
        self.assertIsNone(headers.get(b"Serv"))
        self.assertEqual(headers.get(b"missing", b"d"), b"d")
        self.assertIsNotNone(headers.raw, "asking for one field split the block")

    def test_stays_unsplit(self) -> None:
        """Removing, adding and setting an absent field keep the block unsplit."""
        headers = Headers.from_block(b"Server: nginx\r\nContent-Type: text/html")
        headers.remove(b"Server")
        headers.remove(b"X-Powered-By")
        headers.add(b"X-Env", b"prod")
        headers.set(b"X-Frame-Options", b"DENY")
        self.assertEqual(
            headers.raw, b"Content-Type: text/html\r\nX-Env: prod\r\nX-Frame-Options: DENY"
        )

    def test_remove_last_and_only(self) -> None:
        headers = Headers.from_block(b"A: 1\r\nServer: x")
        headers.remove(b"Server")
        self.assertEqual(headers.serialize(), b"A: 1\r\n")
        headers.remove(b"A")
        self.assertEqual(headers.serialize(), b"")
        headers.add(b"B", b"2")
        self.assertEqual(headers.serialize(), b"B: 2\r\n")
