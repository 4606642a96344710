"""
Dynamic pool membership from DNS: A, AAAA or SRV records, re-resolved periodically.

Works with anything that publishes its instances in DNS, such as Kubernetes headless services
(A/AAAA, or SRV for named ports) and Consul (SRV with A records in the additional section).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from attrs import evolve, frozen
from twisted.application.service import Service
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IResolver
from twisted.logger import Logger
from twisted.names import dns, error
from twisted.python.failure import Failure

from twisted_rp.pool.backend import Backend

#: The record kinds L{DNSMembership} can follow.
KINDS = ("A", "AAAA", "A+AAAA", "SRV")

#: The address kinds an SRV target can be resolved to.
ADDRESS_KINDS = ("A", "AAAA", "A+AAAA")

_RECORD_TYPES = {"A": (dns.A,), "AAAA": (dns.AAAA,), "A+AAAA": (dns.A, dns.AAAA)}

_Answer = tuple[list[dns.RRHeader], list[dns.RRHeader], list[dns.RRHeader]]

_REASONS: dict[type[Exception], str] = {
    error.DNSNameError: "no such name (NXDOMAIN)",
    error.DNSServerError: "server failure (SERVFAIL)",
    error.DNSQueryRefusedError: "query refused",
    error.DNSFormatError: "format error",
    error.DNSNotImplementedError: "query not implemented by the server",
    error.DNSQueryTimeoutError: "timed out",
    DeferredTimeoutError: "timed out",
}


class MemberPool(Protocol):
    """
    What L{DNSMembership} needs of a pool (L{twisted_rp.pool.pool.BackendPool} provides it).
    """

    @property
    def name(self) -> str: ...

    def backends(self) -> Sequence[Backend]: ...

    def add_backend(self, backend: Backend) -> None: ...

    def remove_backend(self, name: str) -> None: ...

    def set_weight(self, name: str, weight: int) -> None: ...


def plain_backend(host: str, port: int) -> Backend:
    """The default template: a L{Backend} with default settings."""
    return Backend(member_name(host, port), host, port)


def member_name(host: str, port: int) -> str:
    """The name of the backend DNS membership makes for C{host} and C{port}: C{host:port}."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@frozen
class Member:
    """
    One address found in DNS.

    @ivar weight: the SRV weight (at least 1), or L{None} to keep the template's.
    @ivar backup: whether a backup (an SRV record of a priority above the lowest), or L{None}
        to keep the template's.
    @ivar origin: the DNS name the address was found under (the SRV target, or the queried name).
    """

    host: str
    port: int
    weight: int | None = None
    backup: bool | None = None
    origin: str = ""

    @property
    def name(self) -> str:
        return member_name(self.host, self.port)


@frozen
class _Resolution:
    members: dict[str, Member]
    failed_targets: frozenset[str]


def _domain(name: dns.Name) -> str:
    return name.name.decode("ascii", "replace").rstrip(".").lower()


def _address(record: dns.RRHeader) -> str | None:
    payload: Any = record.payload
    if record.type == dns.A:
        return str(payload.dottedQuad())
    if record.type == dns.AAAA:
        return socket.inet_ntop(socket.AF_INET6, payload.address)
    return None


def _describe(reason: BaseException) -> str:
    for kind, text in _REASONS.items():
        if isinstance(reason, kind):
            return text
    return f"{type(reason).__name__}: {reason}"


class DNSMembership(Service):
    """
    Keeps a pool's backends in step with what a DNS name resolves to.

    While running, resolves C{name} at once and then every C{interval} seconds (record TTLs are
    not used), and adds a backend for each new address (C{pool.add_backend}) and removes those
    gone from DNS (C{pool.remove_backend}, which lets in-flight leases finish).  Backends are
    named C{host:port} (C{[v6]:port}); only backends this service added are ever removed, and a
    name the pool already has from elsewhere is left alone.

    A failed lookup (NXDOMAIN, SERVFAIL, timeout...) keeps the current members and is logged;
    so is an answer with no usable records unless C{keep_on_empty} is false.  Stopping cancels
    a lookup in progress and keeps the current members in the pool.

    For C{kind="SRV"}, each record gives a target and port; targets are resolved to
    C{target_kind} addresses with the same resolver, or taken from the additional section when
    it has them.  The lowest priority present gives primaries, every higher one backups
    (a pool knows only those two tiers); the SRV weight (0 counts as 1) becomes the backend's
    weight.  A target whose lookup fails keeps the members it had.  When a member's weight
    changes, C{pool.set_weight} is called; when its backup role changes it is removed and added
    again.

    @ivar query_name: the DNS name followed (C{Service.name} stays the service's own name).
    @ivar members: the members this service put into the pool, by backend name.
    """

    def __init__(
        self,
        pool: MemberPool,
        resolver: IResolver,
        name: str,
        port: int,
        kind: str = "A",
        interval: float = 30.0,
        clock: IReactorTime | None = None,
        template: Callable[[str, int], Backend] = plain_backend,
        *,
        timeout: float = 10.0,
        target_kind: str = "A",
        keep_on_empty: bool = True,
    ) -> None:
        """
        @param resolver: a C{twisted.names} resolver, e.g. C{twisted.names.client.createResolver()}.
        @param name: the DNS name to resolve (for SRV, the full C{_service._proto.name}).
        @param port: the backends' port for A/AAAA; unused for SRV (each record has its port).
        @param kind: one of L{KINDS}.
        @param clock: the reactor's time; L{None} for the global reactor, looked up when used.
        @param template: makes the L{Backend} for an address (its C{max_connections},
            C{ports}, C{weight}, C{backup}...); its name is replaced by C{host:port}.
        @param timeout: seconds a whole resolution may take before it counts as failed.
        @param target_kind: the address records SRV targets are resolved to (L{ADDRESS_KINDS}).
        @param keep_on_empty: whether an answer without usable records keeps the current
            members (C{True}) or empties the pool of them.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if target_kind not in ADDRESS_KINDS:
            raise ValueError(
                f"target_kind must be one of {', '.join(ADDRESS_KINDS)}, not {target_kind!r}"
            )
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval!r}")
        if timeout < 0:
            raise ValueError(f"timeout must not be negative, not {timeout!r}")
        self.pool = pool
        self.resolver = resolver
        self.query_name = name
        self.port = port
        self.kind = kind
        self.interval = interval
        self.timeout = timeout
        self.target_kind = target_kind
        self.keep_on_empty = keep_on_empty
        self.template = template
        self.members: dict[str, Member] = {}
        self._clock = clock
        self._log = Logger(namespace=f"twisted_rp.pool.dns.{pool.name}")
        self._next_refresh: IDelayedCall | None = None
        self._in_flight: Deferred[None] | None = None
        self._waiting: list[Deferred[None]] = []

    @property
    def clock(self) -> IReactorTime:
        if self._clock is None:
            from twisted.internet import reactor

            return reactor
        return self._clock

    def startService(self) -> None:
        super().startService()
        self._refresh_and_reschedule()

    def stopService(self) -> None:
        super().stopService()
        if self._next_refresh is not None and self._next_refresh.active():
            self._next_refresh.cancel()
        self._next_refresh = None
        if self._in_flight is not None:
            self._in_flight.cancel()

    def refresh(self) -> Deferred[None]:
        """
        Resolve now (or join the resolution in progress) and update the pool.

        @return: a L{Deferred} firing with L{None} once the pool is updated; it never fails
            (failures are logged).
        """
        done: Deferred[None] = Deferred()
        self._waiting.append(done)
        if self._in_flight is None:
            self._in_flight = Deferred.fromCoroutine(self._refresh())
            self._in_flight.addBoth(self._refresh_done)
        return done

    def _refresh_and_reschedule(self) -> None:
        self._next_refresh = None
        self.refresh().addCallback(self._reschedule)

    def _reschedule(self, ignored: None) -> None:
        if self.running and self._next_refresh is None:
            self._next_refresh = self.clock.callLater(self.interval, self._refresh_and_reschedule)

    def _refresh_done(self, result: Failure | None) -> None:
        self._in_flight = None
        if isinstance(result, Failure) and not result.check(CancelledError):
            self._log.failure(
                "Updating DNS members of {query} failed", result, query=self.query_name
            )
        waiting, self._waiting = self._waiting, []
        for done in waiting:
            done.callback(None)

    async def _refresh(self) -> None:
        resolving = Deferred.fromCoroutine(self._resolve())
        if self.timeout:
            resolving.addTimeout(self.timeout, self.clock)
        try:
            found = await resolving
        except CancelledError:
            raise
        except Exception as reason:
            self._log.warn(
                "DNS lookup of {query} ({kind}) failed, keeping {count} members: {reason}",
                query=self.query_name,
                kind=self.kind,
                count=len(self.members),
                reason=_describe(reason),
            )
            return
        self._apply(found)

    def _lookup(self, record_type: int, name: str) -> Deferred[_Answer]:
        # IResolver declares timeout required and the result as three RRHeaders, but resolvers
        # default the timeout and answer with three lists.
        resolver: Any = self.resolver
        if record_type == dns.A:
            lookup = resolver.lookupAddress
        elif record_type == dns.AAAA:
            lookup = resolver.lookupIPV6Address
        else:
            lookup = resolver.lookupService
        answer: Deferred[_Answer] = lookup(name)
        return answer

    async def _resolve(self) -> _Resolution:
        if self.kind == "SRV":
            return await self._resolve_service()
        members: dict[str, Member] = {}
        for host in await self._addresses(self.query_name, self.kind):
            member = Member(host, self.port, origin=self.query_name.rstrip(".").lower())
            members.setdefault(member.name, member)
        return _Resolution(members, frozenset())

    async def _addresses(self, name: str, kind: str) -> list[str]:
        found: list[str] = []
        for record_type in _RECORD_TYPES[kind]:
            answers, _authority, _additional = await self._lookup(record_type, name)
            found.extend(_addresses_of(answers, (record_type,)))
        return found

    async def _resolve_service(self) -> _Resolution:
        answers, _authority, additional = await self._lookup(dns.SRV, self.query_name)
        records: list[Any] = [answer.payload for answer in answers if answer.type == dns.SRV]
        records = [record for record in records if _domain(record.target)]
        if not records:
            return _Resolution({}, frozenset())
        primary = min(record.priority for record in records)
        record_types = _RECORD_TYPES[self.target_kind]
        members: dict[str, Member] = {}
        failed: set[str] = set()
        addresses_of_target: dict[str, list[str]] = {}
        for record in records:
            target = _domain(record.target)
            if target not in addresses_of_target:
                try:
                    addresses_of_target[target] = await self._target_addresses(
                        target, additional, record_types
                    )
                except CancelledError:
                    raise
                except Exception as reason:
                    self._log.warn(
                        "DNS lookup of SRV target {target} of {query} failed, keeping its "
                        "members: {reason}",
                        target=target,
                        query=self.query_name,
                        reason=_describe(reason),
                    )
                    addresses_of_target[target] = []
                    failed.add(target)
            for host in addresses_of_target[target]:
                member = Member(
                    host,
                    record.port,
                    weight=max(record.weight, 1),
                    backup=record.priority != primary,
                    origin=target,
                )
                members[member.name] = _preferred(members.get(member.name), member)
        return _Resolution(members, frozenset(failed))

    async def _target_addresses(
        self, target: str, additional: Sequence[dns.RRHeader], record_types: tuple[int, ...]
    ) -> list[str]:
        if isIPAddress(target) or isIPv6Address(target):
            return [target]
        glue = [record for record in additional if _domain(record.name) == target]
        from_glue = _addresses_of(glue, record_types)
        if from_glue:
            return from_glue
        return await self._addresses(target, self.target_kind)

    def _apply(self, found: _Resolution) -> None:
        in_pool = {backend.name for backend in self.pool.backends()}
        # A member someone else took out of the pool is no longer ours to track.
        for name in [name for name in self.members if name not in in_pool]:
            del self.members[name]
        wanted = dict(found.members)
        for name, member in self.members.items():
            if member.origin in found.failed_targets and name not in wanted:
                wanted[name] = member
        if not wanted and self.members and self.keep_on_empty:
            self._log.warn(
                "DNS lookup of {query} ({kind}) found no addresses, keeping {count} members",
                query=self.query_name,
                kind=self.kind,
                count=len(self.members),
            )
            return
        for name in [name for name in self.members if name not in wanted]:
            self._remove(name, "no longer in DNS")
        for name, member in wanted.items():
            current = self.members.get(name)
            if current is None:
                if name in in_pool:
                    self._log.debug(
                        "{name} from DNS is already in the pool, leaving it alone", name=name
                    )
                else:
                    self._add(member)
            elif member.backup != current.backup:
                self._remove(name, "backup role changed")
                self._add(member)
            elif member.weight is not None and member.weight != current.weight:
                self.pool.set_weight(name, member.weight)
                self.members[name] = member
                self._log.info(
                    "Weight of {name} from DNS {query} is now {weight}",
                    name=name,
                    query=self.query_name,
                    weight=member.weight,
                )
            else:
                self.members[name] = member

    def _add(self, member: Member) -> None:
        backend = self.template(member.host, member.port)
        backend = evolve(
            backend,
            name=member.name,
            weight=backend.weight if member.weight is None else member.weight,
            backup=backend.backup if member.backup is None else member.backup,
        )
        self.pool.add_backend(backend)
        self.members[member.name] = member
        self._log.info(
            "Added {name} from DNS {query} (weight {weight}{backup})",
            name=backend.name,
            query=self.query_name,
            weight=backend.weight,
            backup=", backup" if backend.backup else "",
        )

    def _remove(self, name: str, why: str) -> None:
        self.pool.remove_backend(name)
        del self.members[name]
        self._log.info(
            "Removed {name} from DNS {query}: {why}", name=name, query=self.query_name, why=why
        )


def _addresses_of(records: Iterable[dns.RRHeader], record_types: tuple[int, ...]) -> list[str]:
    found: list[str] = []
    for record in records:
        if record.type in record_types:
            address = _address(record)
            if address is not None and address not in found:
                found.append(address)
    return found


def _preferred(current: Member | None, candidate: Member) -> Member:
    """Of two SRV records giving the same address, the primary one, then the heavier one."""
    if current is None:
        return candidate
    if (bool(candidate.backup), -(candidate.weight or 1)) < (
        bool(current.backup),
        -(current.weight or 1),
    ):
        return candidate
    return current
