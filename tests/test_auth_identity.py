"""
Tests for L{twisted_rp.auth.identity}.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_rp.auth.identity import IdentityHeader, RemoveIdentityHeader, SetIdentityHeader
from twisted_rp.http.message import ErrorResponse, Headers, ProxyRequest, RequestHead
from twisted_rp.interfaces import IAuthenticator


def make_request(*headers: tuple[bytes, bytes]) -> ProxyRequest:
    head = RequestHead(b"GET", b"/", b"HTTP/1.1", Headers.of((b"Host", b"app.example"), *headers))
    return ProxyRequest(
        head=head, client_ip="192.0.2.1", client_port=40000, scheme="https", host="app.example"
    )


@implementer(IAuthenticator)
class NamesUser:
    """Authenticates everybody as C{identity}."""

    def __init__(self, identity: str) -> None:
        self.identity = identity

    def authenticate(self, request: ProxyRequest) -> None:
        request.identity = self.identity


@implementer(IAuthenticator)
class Refuses:
    def authenticate(self, request: ProxyRequest) -> ErrorResponse:
        return ErrorResponse(401)


def run_chain(chain: Sequence[IAuthenticator], request: ProxyRequest) -> ErrorResponse | None:
    """Run synchronous authenticators in order, as the exchange does."""
    for authenticator in chain:
        verdict = authenticator.authenticate(request)
        if verdict is not None:
            return verdict  # type: ignore[no-any-return]
    return None


class IdentityHeaderTests(SynchronousTestCase):
    def test_interfaces(self) -> None:
        header = IdentityHeader()
        self.assertTrue(verifyObject(IAuthenticator, RemoveIdentityHeader(header)))
        self.assertTrue(verifyObject(IAuthenticator, SetIdentityHeader(header)))

    def test_spoofed_header_removed_without_authentication(self) -> None:
        request = make_request(
            (b"x-authenticated-user", b"admin"), (b"X-Authenticated-User", b"root")
        )
        self.assertIsNone(run_chain(IdentityHeader().chain(()), request))
        self.assertNotIn(b"X-Authenticated-User", request.head.headers)
        self.assertEqual(request.head.headers.get(b"host"), b"app.example")

    def test_identity_replaces_spoofed_header(self) -> None:
        request = make_request((b"X-Authenticated-User", b"admin"))
        chain = IdentityHeader().chain([NamesUser("alice")])
        self.assertIsNone(run_chain(chain, request))
        self.assertEqual(request.head.headers.get_all(b"x-authenticated-user"), [b"alice"])

    def test_configured_name(self) -> None:
        request = make_request((b"Remote-User", b"admin"), (b"X-Authenticated-User", b"x"))
        run_chain(IdentityHeader("Remote-User").chain([NamesUser("bob")]), request)
        self.assertEqual(request.head.headers.get_all(b"remote-user"), [b"bob"])
        # Only the configured name is the identity header.
        self.assertEqual(request.head.headers.get(b"x-authenticated-user"), b"x")

    def test_refused_request_keeps_nothing(self) -> None:
        request = make_request((b"X-Authenticated-User", b"admin"))
        verdict = run_chain(IdentityHeader().chain([Refuses()]), request)
        assert verdict is not None
        self.assertEqual(verdict.status, 401)
        self.assertNotIn(b"X-Authenticated-User", request.head.headers)

    def test_non_ascii_identity_sent_as_utf8(self) -> None:
        request = make_request()
        run_chain(IdentityHeader().chain([NamesUser("zoë")]), request)
        self.assertEqual(request.head.headers.get(b"x-authenticated-user"), "zoë".encode())

    def test_identity_with_line_break_refused(self) -> None:
        request = make_request()
        chain = IdentityHeader().chain([NamesUser("alice\r\nX-Admin: yes")])
        verdict = run_chain(chain, request)
        assert verdict is not None
        self.assertEqual(verdict.status, 403)
        self.assertNotIn(b"X-Authenticated-User", request.head.headers)
        self.assertNotIn(b"X-Admin", request.head.headers)

    def test_bad_header_name(self) -> None:
        self.assertRaises(ValueError, IdentityHeader, "X-User: evil")
        self.assertRaises(ValueError, IdentityHeader, "")
