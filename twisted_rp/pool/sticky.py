"""
Session affinity: keeping a client on the backend it used before.

Four L{IStickiness} kinds, named in L{STICKINESS} as the configuration spells them:

  - L{CookieStickiness} (C{cookie}): the proxy sets its own cookie, sealed with a secret, that
    names the backend.
  - L{AppCookieStickiness} (C{app_cookie}): the proxy learns the application's session cookie
    (C{JSESSIONID}...) from the backend's C{Set-Cookie} and routes that session back to it.
  - L{SourceIPStickiness} (C{source_ip}): the client's address names the backend.
  - L{UserStickiness} (C{user}): the user name the client logged in with (FTP's C{USER})
    names the backend.

The cookie helpers L{request_cookie} and L{parse_set_cookie} are shared with the HTTP side.
"""

from __future__ import annotations

import base64
import calendar
import datetime
import ipaddress
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import cast

from attrs import define, field, frozen, validators
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from twisted_rp.interfaces import IStickiness
from twisted_rp.pool.backend import Backend, PickContext, StickyResponse

__all__ = [
    "STICKINESS",
    "AppCookieStickiness",
    "CookieStickiness",
    "SetCookie",
    "SourceIPStickiness",
    "UserStickiness",
    "parse_set_cookie",
    "request_cookie",
]


# -- cookie syntax (RFC 6265) ------------------------------------------------------------------

# RFC 6265 section 4.1.1: a cookie name is an RFC 2616 token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 6265 section 4.1.1: path-value is any CHAR except CTLs or ";".
_PATH = re.compile(r"/[\x20-\x3a\x3c-\x7e]*")
_WHITESPACE = " \t"


def _unquote(value: str) -> str:
    # RFC 6265 allows a cookie-value in double quotes; servers see the value without them.
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def request_cookie(header_value: str | None, name: str) -> str | None:
    """
    Find one cookie in a request's C{Cookie} header (C{a=1; b="2"}).

    Pairs are separated by C{;}, whitespace around names and values is dropped, a value in
    double quotes loses them, and a piece without C{=} is skipped.  Names are case-sensitive;
    the first pair with C{name} wins (user agents send the most specific cookie first).

    @param header_value: the C{Cookie} field value, or L{None} when the request has none.  A
        request with several C{Cookie} fields passes them joined with C{"; "}.
    @param name: the cookie's name.
    @return: its value (possibly empty), or L{None} when absent.
    """
    if not header_value:
        return None
    for piece in header_value.split(";"):
        pair_name, equals, value = piece.partition("=")
        if equals and pair_name.strip(_WHITESPACE) == name:
            return _unquote(value.strip(_WHITESPACE))
    return None


_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DATE_DELIMITER = re.compile(r"[\x09\x20-\x2f\x3b-\x40\x5b-\x60\x7b-\x7e]+")
_DATE_TIME = re.compile(r"([0-9]{1,2}):([0-9]{1,2}):([0-9]{1,2})(?:[^0-9].*)?", re.DOTALL)
_DATE_DAY = re.compile(r"([0-9]{1,2})(?:[^0-9].*)?", re.DOTALL)
_DATE_YEAR = re.compile(r"([0-9]{2,4})(?:[^0-9].*)?", re.DOTALL)


def _parse_cookie_date(text: str) -> float | None:
    """
    The RFC 6265 section 5.1.1 date algorithm, which accepts what browsers accept
    (C{Wed, 21 Oct 2015 07:28:00 GMT}, C{Wed, 21-Oct-15 07:28:00 GMT}, asctime...).

    @return: POSIX seconds, or L{None} when C{text} is not a date.
    """
    time: tuple[int, int, int] | None = None
    day = month = year = None
    for token in _DATE_DELIMITER.split(text):
        if not token:
            continue
        if time is None and (match := _DATE_TIME.fullmatch(token)):
            time = (int(match[1]), int(match[2]), int(match[3]))
        elif day is None and (match := _DATE_DAY.fullmatch(token)):
            day = int(match[1])
        elif month is None and token[:3].lower() in _MONTHS:
            month = _MONTHS.index(token[:3].lower()) + 1
        elif year is None and (match := _DATE_YEAR.fullmatch(token)):
            year = int(match[1])
    if time is None or day is None or month is None or year is None:
        return None
    if 70 <= year <= 99:
        year += 1900
    elif 0 <= year <= 69:
        year += 2000
    hour, minute, second = time
    if year < 1601 or hour > 23 or minute > 59 or second > 59:
        return None
    try:
        datetime.date(year, month, day)
    except ValueError:
        return None
    return float(calendar.timegm((year, month, day, hour, minute, second)))


@frozen
class SetCookie:
    """
    The parts of one C{Set-Cookie} field that affinity needs.

    @ivar max_age: the C{Max-Age} attribute in seconds (zero or negative: delete now).
    @ivar expires: the C{Expires} attribute as POSIX seconds.
    """

    name: str
    value: str
    max_age: int | None = None
    expires: float | None = None

    def deadline(self, now: float) -> float | None:
        """
        When the user agent drops this cookie (POSIX seconds, C{Max-Age} winning over
        C{Expires}), or L{None} for a session cookie.
        """
        if self.max_age is not None:
            return now + self.max_age
        return self.expires

    def deletes(self, now: float) -> bool:
        """Whether this field removes the cookie from the user agent rather than setting it."""
        deadline = self.deadline(now)
        return deadline is not None and deadline <= now


def parse_set_cookie(field_value: str) -> SetCookie | None:
    """
    Parse a C{Set-Cookie} field value (RFC 6265 section 5.2): C{name=value} up to the first
    C{;}, then attributes.  The last C{Max-Age} and C{Expires} count; unparseable ones are
    ignored, as browsers do.

    @return: the cookie, or L{None} when the field has no C{name=value} pair.
    """
    pair, _, attributes = field_value.partition(";")
    name, equals, value = pair.partition("=")
    name = name.strip(_WHITESPACE)
    if not equals or not name:
        return None
    max_age: int | None = None
    expires: float | None = None
    for attribute in attributes.split(";"):
        key, _, attribute_value = attribute.partition("=")
        key = key.strip(_WHITESPACE).lower()
        attribute_value = attribute_value.strip(_WHITESPACE)
        if key == "max-age" and re.fullmatch(r"-?[0-9]+", attribute_value):
            max_age = int(attribute_value)
        elif key == "expires":
            when = _parse_cookie_date(attribute_value)
            if when is not None:
                expires = when
    return SetCookie(name, _unquote(value.strip(_WHITESPACE)), max_age, expires)


# -- shared plumbing ---------------------------------------------------------------------------


def _now(clock: IReactorTime | None) -> float:
    if clock is None:
        from twisted.internet import reactor

        clock = cast(IReactorTime, reactor)
    return clock.seconds()


@define
class _Entry:
    backend: str
    last_used: float
    deadline: float | None


@define
class _AffinityTable:
    """
    Keys to backend names, least recently used first: at most C{max_entries}, each forgotten
    C{expiry} seconds after its last use or at its own deadline, whichever comes first.
    """

    max_entries: int = field(validator=validators.gt(0))
    expiry: float = field(validator=validators.gt(0))
    _entries: OrderedDict[str, _Entry] = field(factory=OrderedDict, init=False)
    #: Told of each new, moved or forgotten pin (see L{twisted_rp.pool.peers}).
    publish: Callable[[str, str | None, float | None], None] | None = field(
        default=None, init=False
    )

    def __len__(self) -> int:
        return len(self._entries)

    def _expired(self, entry: _Entry, now: float) -> bool:
        if entry.deadline is not None and entry.deadline <= now:
            return True
        return entry.last_used + self.expiry <= now

    def lookup(self, key: str, now: float) -> str | None:
        """The backend C{key} is pinned to, counting as a use; L{None} if none or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._expired(entry, now):
            del self._entries[key]
            return None
        entry.last_used = now
        self._entries.move_to_end(key)
        return entry.backend

    def remember(self, key: str, backend: str, now: float, deadline: float | None) -> None:
        """Pin C{key} to C{backend} until C{deadline} (if any), evicting the least recent."""
        old = self._entries.pop(key, None)
        self._entries[key] = _Entry(backend, now, deadline)
        self._forget_old(now)
        # Only news is published: a pin confirmed on every request costs one comparison.
        if self.publish is not None and (
            old is None or old.backend != backend or old.deadline != deadline
        ):
            self.publish(key, backend, deadline)

    def repin(self, key: str, backend: str, now: float) -> None:
        """Move a live C{key} to C{backend}; unknown or expired keys stay unknown."""
        if self.lookup(key, now) is not None:
            entry = self._entries[key]
            if entry.backend != backend and self.publish is not None:
                self.publish(key, backend, entry.deadline)
            entry.backend = backend

    def forget(self, key: str) -> None:
        if self._entries.pop(key, None) is not None and self.publish is not None:
            self.publish(key, None, None)

    def _forget_old(self, now: float) -> None:
        # Least recently used first, so the expired ones (by idle time) are at the front.
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if len(self._entries) <= self.max_entries and not self._expired(oldest, now):
                break
            self._entries.popitem(last=False)


# -- the proxy's own cookie --------------------------------------------------------------------

_SAME_SITE = {"strict": "Strict", "lax": "Lax", "none": "None"}
_TAG_SIZE = 16  # AES-SIV's synthetic IV
# Sealed names longer than this are not ours; refuse them before doing any hashing.
_MAX_COOKIE_VALUE = 1024
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


def _normalise_same_site(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return _SAME_SITE[value.lower()]
    except KeyError:
        raise ValueError(f"same_site must be Strict, Lax, None or absent, not {value!r}") from None


def _check_secret(instance: object, attribute: object, secret: bytes) -> None:
    if not isinstance(secret, bytes):
        raise TypeError(f"the sticky cookie secret must be bytes, not {type(secret).__name__}")
    if len(secret) < 16:
        raise ValueError("the sticky cookie secret must be at least 16 bytes (use 32 random)")


def _check_name(instance: object, attribute: object, name: str) -> None:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid cookie name")


def _check_path(instance: object, attribute: object, path: str) -> None:
    if not _PATH.fullmatch(path):
        raise ValueError(f"cookie path {path!r} must start with / and contain no ; or controls")


def _check_max_age(instance: object, attribute: object, max_age: int | None) -> None:
    if max_age is not None and max_age <= 0:
        raise ValueError(f"max_age must be positive or None, not {max_age!r}")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    if len(text) > _MAX_COOKIE_VALUE or not _BASE64URL.fullmatch(text):
        return None
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        return None
    # Only the canonical spelling: unused trailing bits must not give one value many spellings.
    return data if _b64encode(data) == text else None


@implementer(IStickiness)
@define(eq=False)
class CookieStickiness:
    """
    Affinity through a cookie the proxy sets, naming the backend.

    The cookie value is the backend's name sealed with AES-SIV (RFC 5297, from the
    C{cryptography} package) under a key derived from C{secret}, with the cookie name as
    associated data: deterministic, so a client keeps one value, and authenticated, so clients
    can neither read the name (even when names are addresses, as with DNS members) nor forge
    one.  A value that fails verification is ignored, as if absent.  Proxies that share the
    secret and cookie name honour each other's cookies.

    @ivar secret: at least 16 bytes; 32 random bytes recommended.
    @ivar name: the cookie name.
    @ivar max_age: seconds the browser keeps the cookie; L{None} for a session cookie.
    @ivar same_site: C{"Strict"}, C{"Lax"}, C{"None"} (needs C{secure}) or L{None} (omitted).
    @ivar strict: when the pinned backend is not usable, refuse rather than re-pin.
    """

    secret: bytes = field(repr=False, validator=_check_secret)
    name: str = field(default="TRP_STICKY", validator=_check_name)
    path: str = field(default="/", validator=_check_path)
    max_age: int | None = field(default=None, validator=_check_max_age)
    http_only: bool = True
    secure: bool = False
    same_site: str | None = field(default="Lax", converter=_normalise_same_site)
    strict: bool = False
    _siv: AESSIV = field(init=False, repr=False)
    _attributes: str = field(init=False, repr=False)
    _log = Logger()

    def __attrs_post_init__(self) -> None:
        if self.same_site == "None" and not self.secure:
            raise ValueError("browsers reject SameSite=None without Secure; set secure too")
        # Browsers drop prefixed cookies that do not keep the prefix's promise.
        lowered = self.name.lower()
        if lowered.startswith(("__secure-", "__host-")) and not self.secure:
            raise ValueError(f"a cookie named {self.name!r} must be secure")
        if lowered.startswith("__host-") and self.path != "/":
            raise ValueError(f"a cookie named {self.name!r} must have path /")
        # AES-SIV takes a 512-bit key (two AES-256 keys); derive it from the secret.
        key = HKDF(
            algorithm=hashes.SHA256(), length=64, salt=None, info=b"twisted_rp sticky cookie v1"
        ).derive(self.secret)
        self._siv = AESSIV(key)
        attributes = [f"Path={self.path}"]
        if self.max_age is not None:
            attributes.append(f"Max-Age={self.max_age}")
        if self.http_only:
            attributes.append("HttpOnly")
        if self.secure:
            attributes.append("Secure")
        if self.same_site is not None:
            attributes.append(f"SameSite={self.same_site}")
        self._attributes = "; ".join(attributes)

    def seal(self, backend_name: str) -> str:
        """The cookie value naming C{backend_name}."""
        sealed = self._siv.encrypt(backend_name.encode("utf-8"), [self.name.encode("ascii")])
        return _b64encode(sealed)

    def unseal(self, value: str) -> str | None:
        """The backend name C{value} was sealed from, or L{None} if it is not one of ours."""
        data = _b64decode(value)
        if data is None or len(data) <= _TAG_SIZE:
            return None
        try:
            plain = self._siv.decrypt(data, [self.name.encode("ascii")])
        except InvalidTag:
            return None
        try:
            return plain.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def set_cookie_value(self, backend_name: str) -> str:
        """The full C{Set-Cookie} field value pinning a client to C{backend_name}."""
        return f"{self.name}={self.seal(backend_name)}; {self._attributes}"

    def pinned(self, context: PickContext) -> str | None:
        value = context.cookie(self.name)
        if not value:
            return None
        backend_name = self.unseal(value)
        if backend_name is None:
            self._log.debug(
                "Ignoring a {cookie} cookie from {client} that fails verification",
                cookie=self.name,
                client=context.client_ip,
            )
        return backend_name

    def pin(self, context: PickContext, backend: Backend, response: StickyResponse) -> None:
        # Set only when the request did not already carry a valid cookie for this backend, so
        # that ordinary responses stay free of Set-Cookie (and cacheable where they were).
        value = context.cookie(self.name)
        if value and self.unseal(value) == backend.name:
            return
        response.set_cookie(self.set_cookie_value(backend.name))


# -- kinds keyed in a table ---------------------------------------------------------------------


class _TableAffinity:
    """
    What the table-backed kinds share: a bounded, expiring table of keys to backend names,
    each kind saying what the key of a request is (L{_key}).
    """

    max_entries: int
    expiry: float
    clock: IReactorTime | None
    _table: _AffinityTable

    def __attrs_post_init__(self) -> None:
        self._table = _AffinityTable(self.max_entries, self.expiry)

    def __len__(self) -> int:
        """How many keys are remembered (expired ones may linger until touched)."""
        return len(self._table)

    def _key(self, context: PickContext) -> str | None:
        raise NotImplementedError

    def pinned(self, context: PickContext) -> str | None:
        key = self._key(context)
        if not key:
            return None
        return self._table.lookup(key, _now(self.clock))

    def pin(self, context: PickContext, backend: Backend, response: StickyResponse) -> None:
        key = self._key(context)
        if key:
            self._table.remember(key, backend.name, _now(self.clock), None)


# -- the application's session cookie ----------------------------------------------------------


@implementer(IStickiness)
@define(eq=False)
class AppCookieStickiness(_TableAffinity):
    """
    Affinity through the application's own session cookie (C{JSESSIONID},
    C{ASP.NET_SessionId}, C{PHPSESSID}...), learnt from the backends' C{Set-Cookie}.

    Only a backend's C{Set-Cookie} adds a session, so clients cannot fill the table with
    made-up ids.  A C{Set-Cookie} that deletes the cookie (C{Max-Age=0} or an C{Expires} in
    the past) forgets the session; one with a lifetime bounds the entry to it.  The table keeps
    at most C{max_entries} sessions, least recently used evicted first, each forgotten
    C{expiry} seconds after its last request.

    @ivar clock: the time source (C{seconds()} is POSIX time, for C{Expires}); L{None} for the
        global reactor.
    """

    cookie: str = field(default="JSESSIONID", validator=_check_name)
    max_entries: int = 100_000
    expiry: float = 3600.0
    clock: IReactorTime | None = None
    strict: bool = False
    _table: _AffinityTable = field(init=False, repr=False)

    def _key(self, context: PickContext) -> str | None:
        return context.cookie(self.cookie)

    def pin(self, context: PickContext, backend: Backend, response: StickyResponse) -> None:
        now = _now(self.clock)
        session = context.cookie(self.cookie)
        if session:
            # The pool sent a known session elsewhere because its backend was unusable.
            self._table.repin(session, backend.name, now)
        for field_value in response.header_values("Set-Cookie"):
            cookie = parse_set_cookie(field_value)
            if cookie is None or cookie.name != self.cookie:
                continue
            if cookie.deletes(now):
                # An empty value deletes whatever session the request carried.
                self._table.forget(cookie.value or session or "")
            elif cookie.value:
                self._table.remember(cookie.value, backend.name, now, cookie.deadline(now))


# -- the client's address ----------------------------------------------------------------------


def _canonical_ip(address: str) -> str:
    # One client, one key: "::ffff:192.0.2.1" and "192.0.2.1" are the same IPv4 client.
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@implementer(IStickiness)
@define(eq=False)
class SourceIPStickiness(_TableAffinity):
    """
    Affinity by client address: each address keeps its backend until it has been idle for
    C{expiry} seconds; at most C{max_entries} addresses, least recently used evicted first.

    @ivar clock: the time source; L{None} for the global reactor.
    """

    expiry: float = 1800.0
    max_entries: int = 100_000
    clock: IReactorTime | None = None
    strict: bool = False
    _table: _AffinityTable = field(init=False, repr=False)

    def _key(self, context: PickContext) -> str | None:
        return _canonical_ip(context.client_ip) if context.client_ip else None


# -- the user name ---------------------------------------------------------------------------


@implementer(IStickiness)
@define(eq=False)
class UserStickiness(_TableAffinity):
    """
    Affinity by user name (L{PickContext.user}, which the FTP side sets from C{USER}): each
    user keeps the backend it logged in on, from whatever address, until it has been idle for
    C{expiry} seconds; at most C{max_entries} users, least recently used evicted first.

    Names are compared exactly, as FTP servers do.  Requests without a user name (every
    protocol but FTP, or an FTP client before C{USER}) are neither pinned nor looked up, and
    are balanced as usual.

    @ivar clock: the time source; L{None} for the global reactor.
    """

    expiry: float = 3600.0
    max_entries: int = 100_000
    clock: IReactorTime | None = None
    strict: bool = False
    _table: _AffinityTable = field(init=False, repr=False)

    def _key(self, context: PickContext) -> str | None:
        return context.user


#: The stickiness kinds by configuration name; each value is called with that kind's options.
STICKINESS: Mapping[str, Callable[..., IStickiness]] = MappingProxyType(
    {
        "cookie": CookieStickiness,
        "app_cookie": AppCookieStickiness,
        "source_ip": SourceIPStickiness,
        "user": UserStickiness,
    }
)
