"""
Tests for L{twisted_rp.pool.dns}: pool membership from DNS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from attrs import define, field
from twisted.application.service import IService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IResolver
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.names import dns, error, hosts
from twisted.names.common import ResolverBase
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_rp.pool.backend import Backend
from twisted_rp.pool.dns import DNSMembership, member_name

SRV_NAME = "_http._tcp.web.example"


def a(name: str, address: str) -> dns.RRHeader:
    return dns.RRHeader(name=name, type=dns.A, payload=dns.Record_A(address))


def aaaa(name: str, address: str) -> dns.RRHeader:
    return dns.RRHeader(name=name, type=dns.AAAA, payload=dns.Record_AAAA(address))


def srv(target: str | bytes, port: int, priority: int = 0, weight: int = 10) -> dns.RRHeader:
    return dns.RRHeader(
        name=SRV_NAME,
        type=dns.SRV,
        payload=dns.Record_SRV(priority, weight, port, target),
    )


def cname(name: str, alias: str) -> dns.RRHeader:
    return dns.RRHeader(name=name, type=dns.CNAME, payload=dns.Record_CNAME(alias))


class FakeResolver(ResolverBase):
    """
    Answers each (name, record type) with what the test scripted; records every query.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scripted: dict[tuple[str, int], Any] = {}
        self.queries: list[tuple[str, int]] = []
        self.hanging: list[Deferred[Any]] = []

    def answer(
        self,
        name: str,
        record_type: int,
        answers: Sequence[dns.RRHeader],
        additional: Sequence[dns.RRHeader] = (),
    ) -> None:
        self.scripted[(name, record_type)] = (list(answers), [], list(additional))

    def fail_with(self, name: str, record_type: int, reason: Exception) -> None:
        self.scripted[(name, record_type)] = reason

    def hang(self, name: str, record_type: int) -> None:
        self.scripted[(name, record_type)] = None

    def _lookup(self, name: bytes, cls: int, type: int, timeout: object) -> Deferred[Any]:
        key = (name.decode("ascii"), type)
        self.queries.append(key)
        scripted = self.scripted.get(key, error.DNSNameError(f"{key} not scripted"))
        if scripted is None:
            waiting: Deferred[Any] = Deferred()
            self.hanging.append(waiting)
            return waiting
        if isinstance(scripted, Exception):
            return fail(scripted)
        return succeed(scripted)


@define
class FakePool:
    """
    Records the membership calls a pool gets.
    """

    name: str = "web"
    members: list[Backend] = field(factory=list)
    calls: list[tuple[str, str]] = field(factory=list)

    def backends(self) -> Sequence[Backend]:
        return tuple(self.members)

    def names(self) -> list[str]:
        return [backend.name for backend in self.members]

    def get(self, name: str) -> Backend:
        [backend] = [backend for backend in self.members if backend.name == name]
        return backend

    def add_backend(self, backend: Backend) -> None:
        assert backend.name not in self.names(), backend.name
        self.calls.append(("add", backend.name))
        self.members.append(backend)

    def remove_backend(self, name: str) -> None:
        self.calls.append(("remove", name))
        self.members.remove(self.get(name))

    def set_weight(self, name: str, weight: int) -> None:
        self.calls.append(("weight", f"{name}={weight}"))
        self.get(name).weight = weight


class DNSTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.resolver = FakeResolver()
        self.pool = FakePool()
        self.events: list[LogEvent] = []

        @implementer(ILogObserver)
        def observe(event: LogEvent) -> None:
            if event.get("log_namespace") == "twisted_rp.pool.dns.web":
                self.events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def membership(
        self, kind: str = "A", resolver: IResolver | None = None, **kwargs: Any
    ) -> DNSMembership:
        name = SRV_NAME if kind == "SRV" else "web.example"
        membership = DNSMembership(
            self.pool, resolver or self.resolver, name, 8080, kind, 30.0, self.clock, **kwargs
        )
        self.addCleanup(self.stop, membership)
        return membership

    def stop(self, membership: DNSMembership) -> None:
        if membership.running:
            membership.stopService()

    def warnings(self) -> list[str]:
        return [formatEvent(event) for event in self.events if event["log_level"] == LogLevel.warn]


class AddressTests(DNSTestCase):
    """
    A and AAAA membership.
    """

    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(IService, self.membership()))
        self.assertTrue(verifyObject(IResolver, self.resolver))

    def test_initial_resolve_adds_members(self) -> None:
        """
        Starting resolves at once and adds a backend named host:port per address, made by the
        template.
        """
        self.resolver.answer("web.example", dns.A, [a("web.example", "10.0.0.1")])
        self.resolver.scripted[("web.example", dns.A)][0].append(a("web.example", "10.0.0.2"))
        membership = self.membership(
            template=lambda host, port: Backend("x", host, port, max_connections=7)
        )
        membership.startService()
        self.assertEqual(self.pool.names(), ["10.0.0.1:8080", "10.0.0.2:8080"])
        backend = self.pool.get("10.0.0.2:8080")
        self.assertEqual(
            (backend.host, backend.port, backend.max_connections), ("10.0.0.2", 8080, 7)
        )
        self.assertEqual(sorted(membership.members), ["10.0.0.1:8080", "10.0.0.2:8080"])

    def test_reresolve_applies_the_difference(self) -> None:
        """
        Every interval the name is resolved again; new addresses are added, vanished ones
        removed, and unchanged ones left alone.
        """
        self.resolver.answer("web.example", dns.A, [a("web.example", "10.0.0.1")])
        self.membership().startService()
        kept = self.pool.get("10.0.0.1:8080")
        self.resolver.answer(
            "web.example", dns.A, [a("web.example", "10.0.0.1"), a("web.example", "10.0.0.3")]
        )
        self.clock.advance(29)
        self.assertEqual(self.pool.names(), ["10.0.0.1:8080"])
        self.clock.advance(1)
        self.assertEqual(self.pool.names(), ["10.0.0.1:8080", "10.0.0.3:8080"])
        self.assertIs(self.pool.get("10.0.0.1:8080"), kept)

        self.resolver.answer("web.example", dns.A, [a("web.example", "10.0.0.3")])
        self.clock.advance(30)
        self.assertEqual(self.pool.names(), ["10.0.0.3:8080"])
        self.assertEqual(
            self.pool.calls,
            [("add", "10.0.0.1:8080"), ("add", "10.0.0.3:8080"), ("remove", "10.0.0.1:8080")],
        )
        self.assertEqual(self.resolver.queries, [("web.example", dns.A)] * 3)

    def test_failed_lookup_keeps_members(self) -> None:
        """
        A failing lookup changes nothing and logs why; the next good answer is applied.
        """
        self.resolver.answer("web.example", dns.A, [a("web.example", "10.0.0.1")])
        self.membership().startService()
        self.resolver.fail_with("web.example", dns.A, error.DNSServerError(dns.Message()))
        self.clock.advance(30)
        self.assertEqual(self.pool.names(), ["10.0.0.1:8080"])
        self.assertEqual(len(self.warnings()), 1)
        self.assertIn("web.example", self.warnings()[0])
        self.assertIn("SERVFAIL", self.warnings()[0])

        self.resolver.fail_with("web.example", dns.A, error.DNSNameError(dns.Message()))
        self.clock.advance(30)
        self.assertEqual(self.pool.names(), ["10.0.0.1:8080"])
        self.assertIn("NXDOMAIN", self.warnings()[1])

        self.resolver.answer("web.example", dns.A, [a("web.example", "10.0.0.2")])
        self.clock.advance(30)
        self.assertEqual(self.pool.names(), ["10.0.0.2:8080"])

    def test_lookup_timeout_keeps_members(self) -> None:
        """
        A lookup that does not answer within the timeout is abandoned and counts as failed;
        resolving goes on at the next interval.
        """
        self.resolver.answer("web.example", dns.A, [a("web.example", "10.0.0.1")])
        self.membership(timeout=5.0).startService()
        self.resolver.hang("web.example", dns.A)
        self.clock.advance(30)
        self.assertEqual(self.warnings(), [])
        self.clock.advance(5)
        self.assertEqual(self.pool.names(), ["10.0.0.1:8080"])
        self.assertEqual(len(self.warnings()), 1)
        self.assertIn("timed out", self.warnings()[0])

        self.resolver.answer("web.example", dns.A, [a("web.example", "10.0.0.2")])
        self.clock.advance(30)
        self.assertEqual(self.pool.names(), ["10.0.0.2:8080"])

    def test_empty_answer_keeps_members(self) -> None:
        """
        By default an answer with no addresses keeps the current members (and says so).
        """
        self.resolver.answer("web.example", dns.A, [a("web.example", "10.0.0.1")])
        self.membership().startService()
        self.resolver.answer("web.example", dns.A, [])
        self.clock.advance(30)
        self.assertEqual(self.pool.names(), ["10.0.0.1:8080"])
        self.assertEqual(len(self.warnings()), 1)
        self.assertIn("no addresses", self.warnings()[0])

    def test_empty_answer_removes_members_when_asked(self) -> None:
        self.resolver.answer("web.example", dns.A, [a("web.example", "10.0.0.1")])
        self.membership(keep_on_empty=False).startService()
        self.resolver.answer("web.example", dns.A, [])
        self.clock.advance(30)
        self.assertEqual(self.pool.names(), [])

    def test_stop_leaves_no_delayed_calls(self) -> None:
        """
        Stopping between lookups cancels the next one and keeps the members.
        """
        self.resolver.answer("web.example", dns.A, [a("web.example", "10.0.0.1")])
        membership = self.membership()
        membership.startService()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        membership.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(300)
        self.assertEqual(len(self.resolver.queries), 1)
        self.assertEqual(self.pool.names(), ["10.0.0.1:8080"])

    def test_stop_cancels_lookup_in_progress(self) -> None:
        """
        Stopping during a lookup cancels it (and its timeout) without logging a failure; a late
        answer changes nothing.
        """
        self.resolver.hang("web.example", dns.A)
        membership = self.membership()
        membership.startService()
        [lookup] = self.resolver.hanging
        membership.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(lookup.called)  # cancelled
        self.assertEqual(self.events, [])
        self.assertEqual(self.pool.calls, [])

    def test_restart(self) -> None:
        """
        A stopped membership resolves again when restarted, from the members it had.
        """
        self.resolver.answer("web.example", dns.A, [a("web.example", "10.0.0.1")])
        membership = self.membership()
        membership.startService()
        membership.stopService()
        self.resolver.answer("web.example", dns.A, [a("web.example", "10.0.0.2")])
        membership.startService()
        self.assertEqual(self.pool.names(), ["10.0.0.2:8080"])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_refresh_joins_lookup_in_progress(self) -> None:
        self.resolver.hang("web.example", dns.A)
        membership = self.membership()
        membership.startService()
        refreshed = membership.refresh()
        self.assertEqual(len(self.resolver.queries), 1)
        self.assertNoResult(refreshed)
        self.resolver.hanging[0].callback(([a("web.example", "10.0.0.1")], [], []))
        self.assertIsNone(self.successResultOf(refreshed))
        self.assertEqual(self.pool.names(), ["10.0.0.1:8080"])
        # The periodic cycle goes on exactly once.
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_other_records_and_duplicates_ignored(self) -> None:
        """
        CNAMEs leading to the addresses are skipped and a repeated address gives one backend.
        """
        self.resolver.answer(
            "web.example",
            dns.A,
            [
                cname("web.example", "real.example"),
                a("real.example", "10.0.0.1"),
                a("real.example", "10.0.0.1"),
            ],
        )
        self.membership().startService()
        self.assertEqual(self.pool.names(), ["10.0.0.1:8080"])

    def test_backends_from_elsewhere_left_alone(self) -> None:
        """
        A backend the pool already has under the same name (from the static configuration) is
        neither added again nor removed when DNS drops it.
        """
        static = Backend("10.0.0.1:8080", "10.0.0.1", 8080)
        self.pool.members.append(static)
        self.resolver.answer("web.example", dns.A, [a("web.example", "10.0.0.1")])
        self.membership().startService()
        self.resolver.answer("web.example", dns.A, [a("web.example", "10.0.0.2")])
        self.clock.advance(30)
        self.assertEqual(self.pool.names(), ["10.0.0.1:8080", "10.0.0.2:8080"])
        self.assertIs(self.pool.members[0], static)

    def test_member_removed_elsewhere_is_added_again(self) -> None:
        self.resolver.answer("web.example", dns.A, [a("web.example", "10.0.0.1")])
        membership = self.membership()
        membership.startService()
        self.pool.members.clear()
        self.clock.advance(30)
        self.assertEqual(self.pool.names(), ["10.0.0.1:8080"])
        self.assertEqual(list(membership.members), ["10.0.0.1:8080"])

    def test_aaaa(self) -> None:
        self.resolver.answer("web.example", dns.AAAA, [aaaa("web.example", "2001:db8::1")])
        self.membership("AAAA").startService()
        self.assertEqual(self.pool.names(), ["[2001:db8::1]:8080"])
        self.assertEqual(self.pool.members[0].host, "2001:db8::1")
        self.assertEqual(self.resolver.queries, [("web.example", dns.AAAA)])

    def test_a_and_aaaa(self) -> None:
        self.resolver.answer("web.example", dns.A, [a("web.example", "10.0.0.1")])
        self.resolver.answer("web.example", dns.AAAA, [aaaa("web.example", "2001:db8::1")])
        self.membership("A+AAAA").startService()
        self.assertEqual(self.pool.names(), ["10.0.0.1:8080", "[2001:db8::1]:8080"])

    def test_a_and_aaaa_either_failing_keeps_members(self) -> None:
        """
        With both families, a failure of either keeps all members: the other family's answer
        alone would wrongly remove the failed family's backends.
        """
        self.resolver.answer("web.example", dns.A, [a("web.example", "10.0.0.1")])
        self.resolver.answer("web.example", dns.AAAA, [aaaa("web.example", "2001:db8::1")])
        self.membership("A+AAAA").startService()
        self.resolver.fail_with("web.example", dns.AAAA, error.DNSServerError(dns.Message()))
        self.clock.advance(30)
        self.assertEqual(self.pool.names(), ["10.0.0.1:8080", "[2001:db8::1]:8080"])

    def test_bad_settings(self) -> None:
        bad: list[dict[str, Any]] = [
            {"kind": "MX"},
            {"interval": 0},
            {"target_kind": "SRV"},
            {"timeout": -1},
        ]
        for kwargs in bad:
            with self.assertRaises(ValueError):
                DNSMembership(self.pool, self.resolver, "web.example", 80, **kwargs)

    def test_member_name(self) -> None:
        self.assertEqual(member_name("10.0.0.1", 80), "10.0.0.1:80")
        self.assertEqual(member_name("::1", 80), "[::1]:80")


class ServiceTests(DNSTestCase):
    """
    SRV membership.
    """

    def test_priority_weight_and_port(self) -> None:
        """
        The lowest priority gives primaries and higher ones backups; weights and ports come from
        the records, with weight 0 counting as 1; targets are resolved with the same resolver.
        """
        self.resolver.answer(
            SRV_NAME,
            dns.SRV,
            [
                srv("one.example", 8001, priority=10, weight=60),
                srv("two.example", 8002, priority=10, weight=0),
                srv("spare.example", 9000, priority=20, weight=5),
                srv("last.example", 9001, priority=30),
            ],
        )
        self.resolver.answer("one.example", dns.A, [a("one.example", "10.0.0.1")])
        self.resolver.answer("two.example", dns.A, [a("two.example", "10.0.0.2")])
        self.resolver.answer("spare.example", dns.A, [a("spare.example", "10.0.0.9")])
        self.resolver.answer("last.example", dns.A, [a("last.example", "10.0.0.10")])
        self.membership("SRV").startService()
        summary = [(b.name, b.host, b.port, b.weight, b.backup) for b in self.pool.members]
        self.assertEqual(
            summary,
            [
                ("10.0.0.1:8001", "10.0.0.1", 8001, 60, False),
                ("10.0.0.2:8002", "10.0.0.2", 8002, 1, False),
                ("10.0.0.9:9000", "10.0.0.9", 9000, 5, True),
                ("10.0.0.10:9001", "10.0.0.10", 9001, 10, True),
            ],
        )
        self.assertEqual(self.pool.get("10.0.0.1:8001").effective_weight, 60.0)

    def test_additional_section_used(self) -> None:
        """
        Addresses for a target given in the additional section (as Consul sends them) are used
        without another query; other targets are still looked up.
        """
        self.resolver.answer(
            SRV_NAME,
            dns.SRV,
            [srv("node1.example.", 8001), srv("node2.example.", 8002)],
            additional=[a("NODE1.example.", "10.0.0.1"), a("other.example.", "10.9.9.9")],
        )
        self.resolver.answer("node2.example", dns.A, [a("node2.example", "10.0.0.2")])
        self.membership("SRV").startService()
        self.assertEqual(self.pool.names(), ["10.0.0.1:8001", "10.0.0.2:8002"])
        self.assertEqual(self.resolver.queries, [(SRV_NAME, dns.SRV), ("node2.example", dns.A)])

    def test_target_kinds(self) -> None:
        """
        Targets resolve to the address kinds asked for; a target that is an address is used as
        it is; the root target ("service not available here") is skipped.
        """
        self.resolver.answer(
            SRV_NAME, dns.SRV, [srv("node.example", 8001), srv("10.0.0.7", 8007), srv(b".", 1)]
        )
        self.resolver.answer("node.example", dns.A, [a("node.example", "10.0.0.1")])
        self.resolver.answer("node.example", dns.AAAA, [aaaa("node.example", "2001:db8::1")])
        self.membership("SRV", target_kind="A+AAAA").startService()
        self.assertEqual(
            self.pool.names(), ["10.0.0.1:8001", "[2001:db8::1]:8001", "10.0.0.7:8007"]
        )

    def test_template_settings_kept(self) -> None:
        self.resolver.answer(SRV_NAME, dns.SRV, [srv("10.0.0.1", 8001, weight=3)])
        self.membership(
            "SRV", template=lambda host, port: Backend("t", host, port, ports={"ftp": 21})
        ).startService()
        [backend] = self.pool.members
        self.assertEqual(
            (backend.name, backend.weight, backend.ports), ("10.0.0.1:8001", 3, {"ftp": 21})
        )

    def test_weight_and_priority_changes(self) -> None:
        """
        A changed SRV weight is passed to the pool; a member whose backup role changes is
        replaced by one with the new role.
        """
        self.resolver.answer(SRV_NAME, dns.SRV, [srv("10.0.0.1", 8001), srv("10.0.0.2", 8002)])
        self.membership("SRV").startService()
        self.pool.calls.clear()
        self.resolver.answer(
            SRV_NAME,
            dns.SRV,
            [srv("10.0.0.1", 8001, weight=25), srv("10.0.0.2", 8002, priority=5)],
        )
        self.clock.advance(30)
        self.assertEqual(
            self.pool.calls,
            [
                ("weight", "10.0.0.1:8001=25"),
                ("remove", "10.0.0.2:8002"),
                ("add", "10.0.0.2:8002"),
            ],
        )
        self.assertTrue(self.pool.get("10.0.0.2:8002").backup)
        self.assertFalse(self.pool.get("10.0.0.1:8001").backup)

    def test_same_address_twice_keeps_primary(self) -> None:
        """
        Two records leading to one address give one backend, with the better priority.
        """
        self.resolver.answer(
            SRV_NAME,
            dns.SRV,
            [srv("10.0.0.1", 8001, priority=9, weight=50), srv("10.0.0.1", 8001, weight=7)],
        )
        self.membership("SRV").startService()
        [backend] = self.pool.members
        self.assertEqual((backend.weight, backend.backup), (7, False))

    def test_failed_target_keeps_its_members(self) -> None:
        """
        When one target cannot be resolved, its members stay while the rest is updated.
        """
        self.resolver.answer(SRV_NAME, dns.SRV, [srv("a.example", 8001), srv("b.example", 8002)])
        self.resolver.answer("a.example", dns.A, [a("a.example", "10.0.0.1")])
        self.resolver.answer("b.example", dns.A, [a("b.example", "10.0.0.2")])
        self.membership("SRV").startService()
        self.resolver.fail_with("a.example", dns.A, error.DNSQueryTimeoutError(None))
        self.resolver.answer("b.example", dns.A, [a("b.example", "10.0.0.3")])
        self.clock.advance(30)
        self.assertEqual(self.pool.names(), ["10.0.0.1:8001", "10.0.0.3:8002"])
        self.assertEqual(len(self.warnings()), 1)
        self.assertIn("a.example", self.warnings()[0])

    def test_failed_srv_lookup_keeps_members(self) -> None:
        self.resolver.answer(SRV_NAME, dns.SRV, [srv("10.0.0.1", 8001)])
        self.membership("SRV").startService()
        self.resolver.fail_with(SRV_NAME, dns.SRV, error.DNSServerError(dns.Message()))
        self.clock.advance(30)
        self.assertEqual(self.pool.names(), ["10.0.0.1:8001"])
        self.assertEqual(len(self.warnings()), 1)


class RealResolverTests(DNSTestCase):
    """
    With a resolver from twisted.names itself rather than the fake.
    """

    def test_hosts_file_resolver(self) -> None:
        path = FilePath(self.mktemp())
        path.setContent(b"10.0.0.1 web.example\n10.0.0.2 web.example\n2001:db8::1 web.example\n")
        self.membership("A+AAAA", hosts.Resolver(path.path)).startService()
        self.assertEqual(
            self.pool.names(), ["10.0.0.1:8080", "10.0.0.2:8080", "[2001:db8::1]:8080"]
        )
