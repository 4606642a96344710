"""
Extensions named in the configuration file: the built-in middlewares, third-party ones found
as Twisted plugins, and anything importable by dotted name.

A route names middlewares (authenticators and rewriters) defined in C{[middleware.NAME]}
tables by their C{type}; a pool's C{balance} may name a balancer extension.  A C{type} is
looked up, in this order:

 1. among the built-in ones (L{twisted_rp.builtin_extensions});
 2. as a dotted name containing a dot (C{mypackage.auth.TokenCheck}): the object there
    provides L{IExtension}, or is a class or function making the provider from keyword
    options (then wrapped in an L{Extension});
 3. among the Twisted plugins providing L{IExtension} (C{twisted.plugin.getPlugins}).

See C{docs/extending.rst}.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from attrs import field, frozen
from twisted.plugin import IPlugin, getPlugins
from twisted.python.reflect import namedAny
from zope.interface import implementer
from zope.interface.interface import InterfaceClass

from twisted_rp.config_readers import (
    ConfigError,
    _boolean,
    _integer,
    _Invalid,
    _list_of,
    _number,
    _Section,
    _string,
    _text,
)
from twisted_rp.interfaces import (
    IAuthenticator,
    IBalancer,
    IExtension,
    IHealthMonitor,
    IRequestRewriter,
    IResponseRewriter,
    IStickiness,
)

#: What each kind of extension builds: the provider must provide at least one of these.
KINDS: Mapping[str, tuple[InterfaceClass, ...]] = MappingProxyType(
    {
        "middleware": (IAuthenticator, IRequestRewriter, IResponseRewriter),
        "balancer": (IBalancer,),
        "stickiness": (IStickiness,),
        "health_check": (IHealthMonitor,),
    }
)

_MISSING: Any = object()


class ExtensionOptions:
    """
    The options of one extension, as its C{parse} sees them: typed accessors whose errors
    name the file and the exact key (C{middleware.sso.timeout: expected a positive number}).
    """

    def __init__(self, section: _Section, reserved: Iterable[str] = ()) -> None:
        self._section = section
        self._reserved = frozenset(reserved)

    @property
    def path(self) -> str:
        """The key path of the options' table, like C{middleware.sso}."""
        return self._section.path

    def names(self) -> list[str]:
        """The option names present, in file order."""
        return [k for k in self._section.names() if k not in self._reserved]

    def error(self, key: str, message: str) -> ConfigError:
        """The error to raise for a wrong option C{key}."""
        return self._section.error(key, message)

    def allow(self, *names: str) -> None:
        """Reject any option not in C{names}, suggesting the closest one."""
        self._section.allow(*names, *self._reserved)

    def get(self, key: str, check: Callable[[object], Any], default: Any = _MISSING) -> Any:
        """
        The value of C{key} passed through C{check} (which raises L{ValueError} or
        L{TypeError} with a message for a wrong value); C{default} when absent, which makes the
        option required when not given.
        """

        def checked(value: object) -> Any:
            try:
                return check(value)
            except (ValueError, TypeError) as error:
                raise _Invalid(str(error)) from None

        return self._checked(key, checked, default)

    def string(self, key: str, default: Any = _MISSING) -> Any:
        return self._checked(key, _string, default)

    def boolean(self, key: str, default: Any = _MISSING) -> Any:
        return self._checked(key, _boolean, default)

    def number(self, key: str, default: Any = _MISSING, minimum: float = 0.0) -> Any:
        return self._checked(key, _number(minimum), default)

    def integer(
        self, key: str, default: Any = _MISSING, minimum: int = 0, maximum: int = sys.maxsize
    ) -> Any:
        return self._checked(key, _integer(minimum, maximum), default)

    def text(self, key: str, default: Any = _MISSING) -> Any:
        """A string, which may be empty."""
        return self._checked(key, _text, default)

    def strings(self, key: str, default: Any = _MISSING) -> Any:
        return self._checked(key, _list_of(_string), default)

    def table(self, key: str) -> ExtensionOptions:
        """A sub-table (empty when absent)."""
        return ExtensionOptions(self._section.table(key))

    def tables(self, key: str) -> list[ExtensionOptions]:
        """An array of tables (empty when absent)."""
        return [ExtensionOptions(t) for t in self._section.tables(key)]

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        """The TOML value as it is."""
        return self._checked(key, lambda value: value, default)

    def _checked(self, key: str, check: Callable[[object], Any], default: Any) -> Any:
        if not self._section.has(key):
            if default is _MISSING:
                raise self.error(key, "required key is missing")
            return default
        return self._section.required(key, check)


def _keyword_options(factory: Callable[..., object], options: ExtensionOptions) -> dict[str, Any]:
    """Every option as a keyword of C{factory}, rejecting names its signature lacks."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {key: options.raw(key) for key in options.names()}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    named = [
        name
        for name, p in parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and name != "reactor"
    ]
    if not takes_any:
        options.allow(*named)
    values = {key: options.raw(key) for key in options.names()}
    for name, p in parameters.items():
        if name in named and p.default is inspect.Parameter.empty and name not in values:
            raise options.error(name, "required key is missing")
    return values


@implementer(IPlugin, IExtension)
@frozen
class Extension:
    """
    An L{IExtension} made of a factory (usually the provider's class).

    @ivar factory: called with the options as keywords (and C{reactor=} when its signature
        has a C{reactor} parameter).
    @ivar parse_options: turns the options into those keywords; by default every option is
        passed as it is, and names the factory's signature does not take are errors.
    """

    name: str
    kind: str = field()
    factory: Callable[..., object]
    parse_options: Callable[[ExtensionOptions], Mapping[str, Any]] | None = None

    @kind.validator
    def _known_kind(self, attribute: object, value: str) -> None:
        if value not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, not {value!r}")

    def parse(self, options: ExtensionOptions) -> Mapping[str, Any]:
        if self.parse_options is not None:
            return MappingProxyType(dict(self.parse_options(options)))
        return MappingProxyType(_keyword_options(self.factory, options))

    def build(self, settings: Mapping[str, Any], reactor: Any) -> object:
        keywords = dict(settings)
        try:
            takes_reactor = "reactor" in inspect.signature(self.factory).parameters
        except (TypeError, ValueError):
            takes_reactor = False
        if takes_reactor:
            keywords["reactor"] = reactor
        try:
            return self.factory(**keywords)
        except TypeError as error:
            # A wrong type of option reaches the factory as a TypeError.
            raise ValueError(str(error)) from None


@frozen
class ExtensionRef:
    """
    A validated use of an extension in the configuration.

    @ivar key: the key path of the table that configured it (C{middleware.sso}).
    @ivar type: the C{type} as written.
    """

    key: str
    type: str
    extension: IExtension
    # Compared on reload: a middleware whose options changed is built anew.
    settings: object

    def build(self, reactor: Any, source: str) -> Any:
        """
        The provider, checked to provide what its kind promises.

        @raise ConfigError: naming C{key}, when building fails or the result provides none of
            the kind's interfaces.
        """
        try:
            provider = self.extension.build(self.settings, reactor)
        except (ValueError, OSError) as error:
            message = str(error)
            if isinstance(error, OSError) and error.strerror:
                message = f"{error.strerror}: {error.filename}" if error.filename else message
            raise ConfigError(source, self.key, f"{self.type}: {message}") from None
        interfaces = KINDS[self.extension.kind]
        if not any(i.providedBy(provider) for i in interfaces):
            names = ", ".join(i.__name__ for i in interfaces)
            raise ConfigError(
                source, self.key, f"{self.type}: built {provider!r}, which provides none of {names}"
            )
        return provider


def _plugins(kind: str) -> dict[str, IExtension]:
    found: dict[str, IExtension] = {}
    for plugin in getPlugins(IExtension):
        if getattr(plugin, "kind", None) == kind:
            found.setdefault(plugin.name, plugin)
    return found


def _from_dotted(kind: str, name: str) -> IExtension | None:
    try:
        target = namedAny(name)
    except (ImportError, AttributeError, ValueError):
        return None
    if IExtension.providedBy(target):
        return target
    interfaces = KINDS[kind]
    if inspect.isclass(target):
        if any(i.implementedBy(target) for i in interfaces):
            return Extension(name, kind, target)
        return None
    if callable(target):
        return Extension(name, kind, target)
    return None


def find_extension(
    kind: str,
    name: str,
    builtins: Mapping[str, IExtension] | None = None,
    also_built_in: Iterable[str] = (),
) -> IExtension:
    """
    The extension of C{kind} called C{name}: built in, by dotted name, or a Twisted plugin.

    @param builtins: the built-in ones by name; those of L{twisted_rp.builtin_extensions}
        when L{None}.
    @param also_built_in: names the caller handles itself (a pool's own balancers), listed
        with the built-in ones when C{name} is unknown.
    @raise LookupError: with a message listing what is available.
    """
    if builtins is None:
        from twisted_rp.builtin_extensions import builtin_extensions

        builtins = builtin_extensions(kind)
    if name in builtins:
        return builtins[name]
    if "." in name:
        found = _from_dotted(kind, name)
        if found is not None:
            if found.kind != kind:
                raise LookupError(f"{name!r} is a {found.kind}, not a {kind}")
            return found
    plugins = _plugins(kind)
    if name in plugins:
        return plugins[name]
    available = ", ".join(sorted({*builtins, *also_built_in})) or "none"
    others = ", ".join(sorted(plugins)) or "none"
    where = "an importable dotted name, " if "." in name else ""
    raise LookupError(
        f"unknown {kind} {name!r}: not {where}a built-in one ({available}) nor a plugin ({others})"
    )


def read_extension(
    kind: str,
    section: _Section,
    type_key: str = "type",
    builtins: Mapping[str, IExtension] | None = None,
    reserved: Iterable[str] = (),
    also_built_in: Iterable[str] = (),
) -> ExtensionRef:
    """
    Read the extension a table configures: its C{type_key} names it, its other keys (but
    C{reserved} ones, which the proxy reads itself) are its options.

    @raise ConfigError: the type is unknown, or an option is wrong.
    """
    type_name = section.required(type_key, _string)
    try:
        extension = find_extension(kind, type_name, builtins, also_built_in)
    except LookupError as error:
        raise section.error(type_key, str(error.args[0])) from None
    options = ExtensionOptions(section, reserved=(type_key, *reserved))
    settings = extension.parse(options)
    return ExtensionRef(section.path, type_name, extension, settings)


__all__ = [
    "KINDS",
    "Extension",
    "ExtensionOptions",
    "ExtensionRef",
    "find_extension",
    "read_extension",
]
