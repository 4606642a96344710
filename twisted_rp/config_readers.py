"""
The building blocks of the configuration readers: L{ConfigError}, the value checks and
L{_Section}, a TOML table that names the exact key of every problem.

L{twisted_rp.config}, L{twisted_rp.config_listeners}, L{twisted_rp.config_pools} and
L{twisted_rp.config_pool_tables} read their parts of the file with these.
"""

from __future__ import annotations

import difflib
import inspect
import ipaddress
import math
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from twisted.internet.endpoints import quoteStringArgument, serverFromString
from twisted.internet.testing import MemoryReactor

from twisted_rp.settings import Network

T = TypeVar("T")
Check = Callable[[object], Any]

_HOST_NAME = re.compile(r"(?:[a-z0-9_-]+\.)*[a-z0-9_-]+\Z", re.IGNORECASE)
_ADDRESS = re.compile(r"\[(?P<ipv6>[^\]]+)\]:(?P<port6>\d+)|(?P<host>[^:\[\]]+):(?P<port>\d+)")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_PATH_PREFIX = re.compile(r"/[^\s?#]*\Z")


def _defaults(factory: Callable[..., object]) -> dict[str, Any]:
    """The keyword defaults of C{factory}'s signature."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(factory).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


class ConfigError(Exception):
    """
    A problem with the configuration; C{str()} is C{"<source>: <key>: <message>"}.

    @ivar source: the file name, or C{"<command line>"}.
    @ivar key: the key path, like C{pool.web.backends[2].address}; empty when the problem is
        the whole file (unreadable, not TOML).
    @ivar message: what is wrong, including the offending value.
    """

    def __init__(self, source: str, key: str, message: str) -> None:
        super().__init__(source, key, message)
        self.source = source
        self.key = key
        self.message = message

    def __str__(self) -> str:
        if self.key:
            return f"{self.source}: {self.key}: {self.message}"
        return f"{self.source}: {self.message}"


# Value checks: each takes a raw TOML value and returns the converted value or raises _Invalid.


class _Invalid(Exception):
    """A value is wrong; C{suffix} locates it inside the value (C{"[2]"} for an array item)."""

    def __init__(self, message: str, suffix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.suffix = suffix


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    return repr(value)


def _expected(what: str, value: object) -> _Invalid:
    return _Invalid(f"expected {what}, got {_describe(value)}")


def _string(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _expected("a non-empty string", value)
    return value


def _text(value: object) -> str:
    """A string, possibly empty (a replacement, a header value)."""
    if not isinstance(value, str):
        raise _expected("a string", value)
    return value


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _expected("true or false", value)
    return value


def _positive_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise _expected("a positive number", value)
    return float(value)


def _number(
    low: float, high: float = math.inf, *, open_low: bool = False, open_high: bool = False
) -> Callable[[object], float]:
    """A finite number from C{low} to C{high}, each bound excluded when C{open_...}."""
    if math.isinf(high):
        bounds = f"> {low:g}" if open_low else f">= {low:g}"
    else:
        excluded = [
            f"{bound:g}" for bound, is_open in ((low, open_low), (high, open_high)) if is_open
        ]
        bounds = f"from {low:g} to {high:g}"
        bounds += f" ({' and '.join(excluded)} excluded)" if excluded else ""

    def check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise _expected(f"a number {bounds}", value)
        above = value > low if open_low else value >= low
        below = value < high if open_high or math.isinf(high) else value <= high
        if not (above and below):
            raise _expected(f"a number {bounds}", value)
        return float(value)

    return check


def _integer(minimum: int, maximum: int = sys.maxsize) -> Callable[[object], int]:
    bounds = f"from {minimum} to {maximum}" if maximum < sys.maxsize else f">= {minimum}"

    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise _expected(f"an integer {bounds}", value)
        return value

    return check


def _choice(choices: frozenset[str]) -> Callable[[object], str]:
    expected = "one of " + ", ".join(repr(choice) for choice in sorted(choices))

    def check(value: object) -> str:
        if not isinstance(value, str) or value not in choices:
            raise _expected(expected, value)
        return value

    return check


def _list_of(check: Callable[[object], T]) -> Callable[[object], tuple[T, ...]]:
    def check_all(value: object) -> tuple[T, ...]:
        if not isinstance(value, (list, tuple)):
            raise _expected("an array", value)
        result = []
        for index, item in enumerate(value):
            try:
                result.append(check(item))
            except _Invalid as invalid:
                raise _Invalid(invalid.message, f"[{index}]{invalid.suffix}") from None
        return tuple(result)

    return check_all


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if not isinstance(value, str) or not pattern.match(value):
            raise _expected(what, value)
        return value

    return check


_token = _matching(_TOKEN, "an HTTP token (letters, digits and !#$%&'*+-.^_`|~, no spaces)")
_path_prefix = _matching(_PATH_PREFIX, "a path starting with '/', without spaces or a query")
_host_name = _matching(_HOST_NAME, "a host name like 'app.example.com'")


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address(text: object, lowest_port: int = 1) -> tuple[str, int]:
    """C{host:port} or C{[ipv6]:port} into its parts."""
    match = _ADDRESS.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        if isinstance(text, str) and text.count(":") > 1 and "[" not in text:
            raise _expected("host:port, with an IPv6 host in brackets like '[::1]:8080'", text)
        raise _expected("host:port", text)
    if match["ipv6"] is not None:
        host, port = match["ipv6"], int(match["port6"])
        if not _is_ipv6(host):
            raise _expected("an IPv6 address between the brackets", text)
    else:
        host, port = match["host"], int(match["port"])
        if not _HOST_NAME.match(host):
            raise _expected("host:port", text)
    if not lowest_port <= port <= 65535:
        raise _expected(f"a port from {lowest_port} to 65535", text)
    return host, port


def _backend_url(value: object) -> tuple[str, int]:
    """A quick-mode backend: C{host:port} or C{http://host:port}."""
    text = _string(value)
    scheme, separator, rest = text.partition("://")
    if not separator:
        return _address(text)
    if scheme.lower() != "http":
        raise _expected("host:port or http://host:port (only http backends)", text)
    address, _, path = rest.partition("/")
    if path:
        raise _expected("a backend URL without a path", text)
    return _address(address)


def _route_host(value: object) -> str:
    text = _string(value).lower().rstrip(".")
    if text.startswith("[") and text.endswith("]") and _is_ipv6(text[1:-1]):
        return text
    if ":" in text:
        raise _expected("a host name without a port", value)
    wildcard, name = ("*.", text[2:]) if text.startswith("*.") else ("", text)
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise _expected("a host name", value) from None
    if not _HOST_NAME.match(name):
        raise _expected("a host name like 'example.com' or '*.example.com'", value)
    return wildcard + name


def _network(value: object) -> Network:
    try:
        if isinstance(value, str):
            return ipaddress.ip_network(value, strict=False)
    except ValueError:
        pass
    raise _expected("an IP address or CIDR network like '10.0.0.0/8'", value)


def _endpoint(value: object, what: str = "a Twisted server endpoint like 'tcp:8080'") -> str:
    text = _string(value)
    try:
        # A memory reactor makes parsing check the syntax without listening anywhere.
        serverFromString(MemoryReactor(), text)
    except Exception as error:
        raise _Invalid(f"expected {what}, got {text!r} ({error})") from None
    return text


def _listen(value: object) -> str:
    """A quick-mode listener: an endpoint string, C{port} or C{host:port}."""
    text = _string(value)
    if text.isdigit():
        if int(text) > 65535:
            raise _expected("a port from 0 to 65535", text)
        text = f"tcp:{text}"
    try:
        return _endpoint(text, "a port, host:port or Twisted server endpoint like 'tcp:8080'")
    except _Invalid:
        if not _ADDRESS.fullmatch(text):
            raise
    host, port = _address(text, lowest_port=0)
    return _endpoint(f"tcp:{port}:interface={quoteStringArgument(host)}")


# Reading tables.


class _Section:
    """A TOML table being read, which knows its key path so errors can name the exact key."""

    def __init__(self, source: str, path: str, data: Mapping[str, object]) -> None:
        self.source = source
        self.path = path
        self._data = data

    def key(self, key: str) -> str:
        """The full path of C{key} in this table."""
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.source, self.key(key), message)

    def has(self, key: str) -> bool:
        return key in self._data

    def names(self) -> list[str]:
        """The keys present, in file order."""
        return list(self._data)

    def allow(self, *names: str) -> None:
        """Reject any key not in C{names}, suggesting the closest known one."""
        for key in self._data:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"did you mean {close[0]!r}?" if close else "expected " + ", ".join(names)
                raise self.error(key, f"unknown key ({hint})")

    def _check(self, key: str, check: Callable[[object], T]) -> T:
        try:
            return check(self._data[key])
        except _Invalid as invalid:
            raise ConfigError(
                self.source, self.key(key) + invalid.suffix, invalid.message
            ) from None

    def required(self, key: str, check: Callable[[object], T]) -> T:
        if key not in self._data:
            raise self.error(key, "required key is missing")
        return self._check(key, check)

    def optional(self, checks: Mapping[str, Check]) -> dict[str, Any]:
        """The checked values of those of C{checks}' keys present, to pass as keywords."""
        return {key: self._check(key, check) for key, check in checks.items() if key in self._data}

    def _as_table(self, path: str, value: object) -> _Section:
        if not isinstance(value, Mapping):
            raise ConfigError(self.source, path, f"expected a table, got {_describe(value)}")
        return _Section(self.source, path, value)

    def table(self, key: str) -> _Section:
        """A sub-table; an absent one reads as empty."""
        return self._as_table(self.key(key), self._data.get(key, {}))

    def tables(self, key: str) -> list[_Section]:
        """An array of tables (C{[[key]]}); an absent one reads as empty."""
        value = self._data.get(key, [])
        if not isinstance(value, (list, tuple)):
            raise self.error(key, f"expected an array of tables [[{key}]], got {_describe(value)}")
        return [self._as_table(f"{self.key(key)}[{i}]", item) for i, item in enumerate(value)]

    def named_tables(self, key: str) -> list[tuple[str, _Section]]:
        """A table of tables (C{[key.NAME]}) as (name, table) pairs."""
        table = self.table(key)
        return [(name, table.table(name)) for name in table._data]
