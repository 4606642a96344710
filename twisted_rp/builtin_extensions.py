"""
The middlewares a C{[middleware.NAME]} table can use by C{type} without any plugin: the
authenticators of L{twisted_rp.auth} and the rewriters of L{twisted_rp.rewrite}.  Their
options are described in C{docs/configuration.rst}.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from twisted.python.filepath import FilePath

from twisted_rp.extensions import Extension, ExtensionOptions
from twisted_rp.interfaces import IExtension


def _basic(options: ExtensionOptions) -> Mapping[str, Any]:
    options.allow("htpasswd", "realm", "remove_header", "cache_ttl")
    return {
        "htpasswd": options.string("htpasswd"),
        "realm": options.string("realm", "Restricted"),
        "remove_header": options.boolean("remove_header", False),
        "cache_ttl": options.number("cache_ttl", 300.0),
    }


def _make_basic(
    htpasswd: str, realm: str, remove_header: bool, cache_ttl: float, reactor: Any
) -> object:
    from twisted_rp.auth.basic import BasicAuthenticator, HtpasswdChecker

    checker = HtpasswdChecker(htpasswd, reactor=reactor, cache_ttl=cache_ttl)
    return BasicAuthenticator(realm, checker, remove_header=remove_header)


def _one_or_many(options: ExtensionOptions, key: str) -> str | tuple[str, ...] | None:
    def check(value: object) -> str | tuple[str, ...]:
        if isinstance(value, str) and value:
            return value
        if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
            return tuple(value)
        raise ValueError(f"expected a string or an array of strings, got {value!r}")

    return options.get(key, check, None)


def _jwt(options: ExtensionOptions) -> Mapping[str, Any]:
    options.allow(
        "jwks_file",
        "public_key_files",
        "secret_file",
        "algorithms",
        "audience",
        "issuer",
        "leeway",
        "identity_claim",
        "header",
        "realm",
        "required_claims",
        "remove_header",
    )
    settings = {
        "jwks_file": options.string("jwks_file", None),
        "public_key_files": options.strings("public_key_files", ()),
        "secret_file": options.string("secret_file", None),
        "algorithms": options.strings("algorithms", ("RS256", "ES256", "HS256")),
        "audience": _one_or_many(options, "audience"),
        "issuer": _one_or_many(options, "issuer"),
        "leeway": options.number("leeway", 30.0),
        "identity_claim": options.string("identity_claim", "sub"),
        "header": options.string("header", "Authorization"),
        "realm": options.string("realm", None),
        "required_claims": options.strings("required_claims", ("exp",)),
        "remove_header": options.boolean("remove_header", False),
    }
    if not (settings["jwks_file"] or settings["public_key_files"] or settings["secret_file"]):
        raise options.error(
            "jwks_file", "one of jwks_file, public_key_files or secret_file is required"
        )
    return settings


def _make_jwt(
    jwks_file: str | None,
    public_key_files: tuple[str, ...],
    secret_file: str | None,
    reactor: Any,
    **settings: Any,
) -> object:
    from twisted_rp.auth.jwt import JWTAuthenticator, VerificationKey

    keys = [VerificationKey.from_pem(FilePath(path).getContent()) for path in public_key_files]
    if secret_file is not None:
        keys.append(VerificationKey.hmac(FilePath(secret_file).getContent().strip()))
    return JWTAuthenticator(keys=keys, jwks_file=jwks_file, clock=reactor, **settings)


def _forward(options: ExtensionOptions) -> Mapping[str, Any]:
    options.allow(
        "url", "copy_headers", "request_headers", "identity_from", "timeout", "failure_status"
    )
    return {
        "url": options.get("url", _http_url),
        "copy_headers": options.strings("copy_headers", ("X-Auth-User",)),
        "request_headers": options.strings("request_headers", None),
        "identity_from": options.string("identity_from", None),
        "timeout": options.number("timeout", 5.0),
        "failure_status": options.integer("failure_status", 503, minimum=500, maximum=599),
    }


def _http_url(value: object) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


def _make_forward(reactor: Any, **settings: Any) -> object:
    from twisted_rp.auth.forward import ForwardAuthenticator

    return ForwardAuthenticator(reactor=reactor, **settings)


def _ip_filter(options: ExtensionOptions) -> Mapping[str, Any]:
    options.allow("allow", "deny")
    from twisted_rp.auth.ipfilter import parse_networks

    settings = {}
    for key in ("allow", "deny"):
        settings[key] = options.strings(key, ())
        try:
            parse_networks(settings[key])
        except ValueError as error:
            raise options.error(key, str(error)) from None
    return settings


def _make_ip_filter(**settings: Any) -> object:
    from twisted_rp.auth.ipfilter import IPFilter

    return IPFilter(**settings)


_RULE_KINDS = ("add", "set", "remove", "replace")


def _rules(options: ExtensionOptions, key: str) -> tuple[object, ...]:
    from twisted_rp.rewrite import Add, Remove, Replace, Set

    rules: list[object] = []
    for index, table in enumerate(options.tables(key)):
        present = [k for k in _RULE_KINDS if k in table.names()]
        if len(present) != 1:
            raise options.error(
                f"{key}[{index}]", "needs exactly one of add, set, remove or replace"
            )
        kind = present[0]
        name = table.string(kind).encode("latin-1", "replace")
        try:
            if kind == "remove":
                table.allow("remove")
                rules.append(Remove(name))
            elif kind == "replace":
                table.allow("replace", "pattern", "value")
                rules.append(
                    Replace(
                        name,
                        table.string("pattern").encode(),
                        table.text("value", "").encode(),
                    )
                )
            else:
                table.allow(kind, "value")
                rules.append((Add if kind == "add" else Set)(name, table.text("value").encode()))
        except ValueError as error:
            raise options.error(f"{key}[{index}]", str(error)) from None
    return tuple(rules)


def _headers(options: ExtensionOptions) -> Mapping[str, Any]:
    options.allow("request", "response", "hide_backend")
    response = _rules(options, "response")
    if options.boolean("hide_backend", False):
        from twisted_rp.rewrite import HIDE_BACKEND

        response = (*HIDE_BACKEND, *response)
    return {"request": _rules(options, "request"), "response": response}


def _make_headers(request: tuple[object, ...], response: tuple[object, ...]) -> object:
    from twisted_rp.rewrite import HeaderRules

    return HeaderRules(request=request, response=response)  # type: ignore[arg-type]


def _hide_backend(options: ExtensionOptions) -> Mapping[str, Any]:
    options.allow()
    from twisted_rp.rewrite import HIDE_BACKEND

    return {"request": (), "response": HIDE_BACKEND}


def _path(options: ExtensionOptions) -> Mapping[str, Any]:
    options.allow("strip_prefix", "add_prefix", "pattern", "replacement")
    settings = {
        "strip_prefix": options.string("strip_prefix", None),
        "add_prefix": options.string("add_prefix", None),
        "pattern": options.string("pattern", None),
        "replacement": options.text("replacement", "").encode(),
    }
    if settings["pattern"] is not None:
        settings["pattern"] = settings["pattern"].encode()
    from twisted_rp.rewrite import PathRewriter

    for key in ("strip_prefix", "add_prefix", "pattern"):
        try:
            PathRewriter(**{key: settings[key]})
        except ValueError as error:
            raise options.error(key, str(error)) from None
    try:
        PathRewriter(pattern=settings["pattern"], replacement=settings["replacement"])
    except ValueError as error:
        raise options.error("replacement", str(error)) from None
    return settings


def _make_path(**settings: Any) -> object:
    from twisted_rp.rewrite import PathRewriter

    return PathRewriter(**settings)


def _middlewares() -> dict[str, IExtension]:
    return {
        "basic": Extension("basic", "middleware", _make_basic, _basic),
        "jwt": Extension("jwt", "middleware", _make_jwt, _jwt),
        "forward": Extension("forward", "middleware", _make_forward, _forward),
        "ip_filter": Extension("ip_filter", "middleware", _make_ip_filter, _ip_filter),
        "headers": Extension("headers", "middleware", _make_headers, _headers),
        "hide_backend": Extension("hide_backend", "middleware", _make_headers, _hide_backend),
        "path": Extension("path", "middleware", _make_path, _path),
    }


def builtin_extensions(kind: str) -> Mapping[str, IExtension]:
    """
    The built-in extensions of C{kind} by name.  (The built-in balancers are read by the pool
    configuration directly, with their own keys.)
    """
    if kind == "middleware":
        return MappingProxyType(_middlewares())
    return MappingProxyType({})


__all__ = ["builtin_extensions"]
