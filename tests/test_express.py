"""
The express way (L{Exchange.start_express}): a simple request that no hook acts on is sent
with less work; everything a client, a backend, a log or an observer sees is as on the
general way, and any turn off the common way (a failure, a retry, a hook) behaves the same.
"""

from __future__ import annotations

import re
from typing import Any

from attrs import evolve
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.helpers import ProxyHarness, get, parse_message, response
from tests.test_proxy import RecordingAccessLog
from twisted_rp.http.message import AccessRecord, ProxyRequest
from twisted_rp.http.proxy import HTTPProxyFactory
from twisted_rp.http.routing import Route
from twisted_rp.interfaces import IRequestObserver
from twisted_rp.pool.backend import PickContext
from twisted_rp.pool.balancers import HashBalancer

_REQUEST_ID = re.compile(rb"X-Request-ID: [0-9a-f]{32}")

#: Simple requests of several shapes, sent one after another on one client connection.
REQUESTS = [
    get(b"/1"),
    get(b"/2?q=a%20b", b"example.com", b"Cookie: s=1; t=2", b"Accept: */*"),
    b"HEAD /3 HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: curl\r\n\r\n",
    get(b"/4", b"other.example"),
]


def _answer(index: int) -> bytes:
    if REQUESTS[index].startswith(b"HEAD"):
        return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    return response(body=b"body%d" % index, headers=[b"Connection: keep-alive"])


@implementer(IRequestObserver)
class Observed:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str, int]] = []

    def request_done(
        self, route: str, pool: str, backend: str, status: int, duration: float
    ) -> None:
        self.seen.append((route, pool, backend, status))


def through(express: bool, **route_options: Any) -> tuple[bytes, bytes, list[AccessRecord]]:
    """Every request of L{REQUESTS} on one client connection and one backend connection:
    what the backend and the client got, and the access log's records."""
    log = RecordingAccessLog()
    harness = ProxyHarness(access_log=log, **route_options)
    harness.factory.express = express
    client = harness.client()
    client.send(REQUESTS[0])
    backend = harness.accept()
    for index in range(len(REQUESTS)):
        if index:
            client.send(REQUESTS[index])
        backend.answer(_answer(index))
    assert harness.connect_attempts == 1
    return backend.received(), client.received(), log.records


def _without_ids(data: bytes) -> bytes:
    return _REQUEST_ID.sub(b"X-Request-ID: -", data)


class SameAsGeneralWayTests(SynchronousTestCase):
    def test_backend_client_and_log_see_the_same(self) -> None:
        express = through(True)
        general = through(False)
        self.assertEqual(_without_ids(express[0]), _without_ids(general[0]))
        self.assertEqual(express[1], general[1])
        self.assertEqual(
            [evolve(r, request_id="", duration=0.0, backend_time=None) for r in express[2]],
            [evolve(r, request_id="", duration=0.0, backend_time=None) for r in general[2]],
        )

    def test_logged_request_id_is_the_one_sent(self) -> None:
        sent, _, records = through(True)
        ids = [m.group().split(b": ")[1].decode() for m in _REQUEST_ID.finditer(sent)]
        self.assertEqual(ids, [r.request_id for r in records])
        self.assertEqual(len(set(ids)), len(REQUESTS))
        self.assertEqual({r.backend for r in records}, {"b1"})

    def test_stripped_prefix(self) -> None:
        sent = []
        for express in (True, False):
            harness = ProxyHarness(path_prefix="/api", strip_prefix=True)
            harness.factory.express = express
            client = harness.client()
            client.send(get(b"/api/1"))
            backend = harness.accept()
            backend.answer(response(body=b"one"))
            client.send(get(b"/api/2?x"))
            sent.append(_without_ids(backend.received()))
        self.assertEqual(sent[0], sent[1])
        self.assertIn(b"GET /2?x HTTP/1.1\r\n", sent[0])

    def test_backend_host(self) -> None:
        express = through(True, preserve_host=False)
        general = through(False, preserve_host=False)
        self.assertEqual(_without_ids(express[0]), _without_ids(general[0]))
        self.assertIn(b"Host: 127.0.0.1:8001\r\n", express[0])


class TakenTests(SynchronousTestCase):
    def test_taken_for_a_simple_request_on_a_pooled_connection(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.reused()
        client.send(get(b"/2"))
        exchange = client.protocol.exchange
        self.assertIsNotNone(exchange)
        # Nothing asked for the request object, so it was never made.
        self.assertNotIn("request", vars(exchange))
        self.assertTrue(backend.received().startswith(b"GET /2 HTTP/1.1\r\nHost: example.com\r\n"))
        # Asking makes it as the general way would have.
        request = exchange.request
        self.assertEqual(request.backend.name, "b1")
        self.assertEqual(request.host, "example.com")
        self.assertEqual(request.route, harness.factory.router.routes[0])
        sent_id = _REQUEST_ID.search(backend.received())
        assert sent_id is not None
        self.assertEqual(request.request_id.encode(), sent_id.group().split(b": ")[1])
        backend.answer(response(body=b"two"))
        self.assertEqual(parse_message(client.received()).body, b"two")

    def test_reused_connection_closed_replays_the_same_head(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.reused()
        client.send(get(b"/2"))
        first = backend.received()
        backend.close()
        fresh = harness.accept()
        self.assertEqual(fresh.received(), first)
        fresh.answer(response(body=b"two"))
        self.assertEqual(parse_message(client.received()).body, b"two")

    def test_no_backend_left(self) -> None:
        harness = ProxyHarness()
        client, backend = harness.reused()
        harness.pool.set_admin_state("b1", "disabled")
        client.send(get(b"/2"))
        self.assertEqual(
            parse_message(client.received()).start, b"HTTP/1.1 503 Service Unavailable"
        )
        self.assertEqual(backend.received(), b"")

    def test_observers_get_the_names(self) -> None:
        harness = ProxyHarness()
        observed = Observed()
        harness.factory.request_observers.append(observed)
        client, backend = harness.reused()
        client.send(get(b"/2"))
        backend.answer(response(body=b"two"))
        route = harness.factory.router.routes[0]
        self.assertEqual(observed.seen[-1], (route.name, "web", "b1", 200))

    def test_hash_balancer_sees_the_request(self) -> None:
        harness = ProxyHarness(backends=4)
        harness.pool.balancer = HashBalancer(lambda context: context.path)
        client, backend = harness.reused()
        # The same path goes where the first request for it went, on the pooled connection.
        for _ in range(3):
            client.send(get(b"/1"))
            self.assertTrue(backend.take().startswith(b"GET /1 "))
            backend.answer(response(body=b"one"))
        self.assertEqual(harness.connect_attempts, 1)


class Routed(HTTPProxyFactory):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.routed: list[bytes] = []

    def route_for(self, request: ProxyRequest) -> Route | None:
        self.routed.append(request.head.target)
        return super().route_for(request)


class Picked(HTTPProxyFactory):
    def pick_backend(self, request: ProxyRequest, context: PickContext) -> Any:
        return super().pick_backend(request, context)


class Rewritten(HTTPProxyFactory):
    def rewrite_request(self, request: ProxyRequest) -> None:
        return None


class OverrideTests(SynchronousTestCase):
    def test_overrides_turn_it_off(self) -> None:
        harness = ProxyHarness()
        args = (harness.reactor, harness.factory.router)
        self.assertTrue(HTTPProxyFactory(*args).express)
        for factory in (Routed(*args), Picked(*args), Rewritten(*args)):
            self.assertFalse(factory.express, factory)
        self.assertFalse(HTTPProxyFactory(*args, client_cert_headers=True).express)

    def test_override_called_on_a_pooled_connection(self) -> None:
        harness = ProxyHarness()
        factory = harness.factory = Routed(harness.reactor, harness.factory.router)
        client = harness.client()
        client.send(get(b"/1"))
        backend = harness.accept()
        backend.answer(response(body=b"one"))
        client.send(get(b"/2"))
        backend.answer(response(body=b"two"))
        self.assertEqual(factory.routed, [b"/1", b"/2"])
