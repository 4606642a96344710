"""
Tests for L{twisted_rp.auth.ipfilter}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_rp.auth.ipfilter import IPFilter
from twisted_rp.http.message import Headers, ProxyRequest, RequestHead
from twisted_rp.interfaces import IAuthenticator


def make_request(client_ip: str) -> ProxyRequest:
    head = RequestHead(b"GET", b"/", b"HTTP/1.1", Headers.of((b"Host", b"intranet.example")))
    return ProxyRequest(
        head=head, client_ip=client_ip, client_port=40000, scheme="http", host="intranet.example"
    )


class IPFilterTests(SynchronousTestCase):
    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IAuthenticator, IPFilter(allow=["10.0.0.0/8"])))

    def test_allow_list_refuses_others_with_403(self) -> None:
        intranet = IPFilter(allow=["10.0.0.0/8", "192.168.1.0/24"])
        self.assertIsNone(intranet.authenticate(make_request("10.20.30.40")))
        self.assertIsNone(intranet.authenticate(make_request("192.168.1.7")))
        refused = intranet.authenticate(make_request("192.168.2.7"))
        assert refused is not None
        self.assertEqual(refused.status, 403)

    def test_deny_wins_over_allow(self) -> None:
        ipfilter = IPFilter(allow=["10.0.0.0/8"], deny=["10.6.6.0/24"])
        self.assertTrue(ipfilter.allows("10.6.5.1"))
        self.assertFalse(ipfilter.allows("10.6.6.1"))

    def test_deny_only_allows_everybody_else(self) -> None:
        ipfilter = IPFilter(deny=["203.0.113.0/24", "2001:db8:bad::/48"])
        self.assertFalse(ipfilter.allows("203.0.113.9"))
        self.assertFalse(ipfilter.allows("2001:db8:bad::1"))
        self.assertTrue(ipfilter.allows("198.51.100.1"))
        self.assertTrue(ipfilter.allows("2001:db8:600d::1"))

    def test_no_lists_allow_all(self) -> None:
        self.assertTrue(IPFilter().allows("198.51.100.1"))

    def test_ipv6(self) -> None:
        ipfilter = IPFilter(allow=["2001:db8::/32", "::1"])
        self.assertTrue(ipfilter.allows("2001:db8:1::5"))
        self.assertTrue(ipfilter.allows("::1"))
        self.assertFalse(ipfilter.allows("2001:db9::1"))
        # An IPv4 network never matches an IPv6 client, nor the reverse.
        self.assertFalse(ipfilter.allows("10.0.0.1"))
        self.assertFalse(ipfilter.allows("fe80::1%eth0"))

    def test_link_local_with_scope(self) -> None:
        self.assertTrue(IPFilter(allow=["fe80::/10"]).allows("fe80::1%eth0"))

    def test_ipv4_mapped_clients_match_ipv4_rules(self) -> None:
        ipfilter = IPFilter(allow=["10.0.0.0/8"], deny=["10.9.9.9"])
        self.assertTrue(ipfilter.allows("::ffff:10.1.2.3"))
        self.assertFalse(ipfilter.allows("::ffff:10.9.9.9"))
        self.assertFalse(ipfilter.allows("::ffff:11.1.2.3"))

    def test_unparsable_client(self) -> None:
        self.assertFalse(IPFilter(allow=["0.0.0.0/0"]).allows("/run/proxy.sock"))
        self.assertTrue(IPFilter(deny=["0.0.0.0/0"]).allows("/run/proxy.sock"))

    def test_host_bits_ignored(self) -> None:
        self.assertTrue(IPFilter(allow=["10.1.2.3/8"]).allows("10.200.0.1"))

    def test_bad_network_named(self) -> None:
        error = self.assertRaises(ValueError, IPFilter, allow=["10.0.0.0/8", "intranet"])
        self.assertIn("'intranet'", str(error))
        self.assertRaises(ValueError, IPFilter, deny=["10.0.0.0/33"])
