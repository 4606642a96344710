"""
Bearer JSON Web Token authentication (RFC 6750, RFC 7519), verified with PyJWT.

Each key is bound to the algorithms its type allows (an RSA key to C{RS*}/C{PS*}, an EC key
to the C{ES*} of its curve, a secret to C{HS*}): a token can never make the proxy use an
RSA public key as an HMAC secret.  The algorithm C{none} is never accepted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jwt
from attrs import field, frozen
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_pem_public_key,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.filepath import FilePath
from zope.interface import implementer

from twisted_rp.auth import WatchedFile, quoted_string
from twisted_rp.http.message import ErrorResponse, Headers, ProxyRequest
from twisted_rp.interfaces import IAuthenticator

if TYPE_CHECKING:
    from jwt.types import Options

_log = Logger()

_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS = {
    "secp256r1": "ES256",
    "P-256": "ES256",
    "secp384r1": "ES384",
    "P-384": "ES384",
    "secp521r1": "ES512",
    "P-521": "ES512",
    "secp256k1": "ES256K",
}
#: RFC 7518 3.2: an HMAC key is at least as long as the hash output.
_HMAC_MIN_LENGTH = {"HS256": 32, "HS384": 48, "HS512": 64}
_EDDSA_ALGORITHMS = frozenset({"EdDSA"})

SUPPORTED_ALGORITHMS = frozenset(
    _RSA_ALGORITHMS | set(_EC_ALGORITHMS.values()) | set(_HMAC_MIN_LENGTH) | _EDDSA_ALGORITHMS
)


def _public_algorithms(key: Any) -> frozenset[str]:
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = _EC_ALGORITHMS.get(key.curve.name)
        if algorithm is None:
            raise ValueError(f"unsupported elliptic curve {key.curve.name}")
        return frozenset({algorithm})
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return _EDDSA_ALGORITHMS
    raise ValueError(f"unsupported key type {type(key).__name__}")


def _public(key: Any) -> Any:
    """The public half of C{key}, which may be a private key."""
    public_key = getattr(key, "public_key", None)
    return public_key() if callable(public_key) else key


def _frozen_names(names: Iterable[str]) -> frozenset[str]:
    return frozenset(names)


@frozen
class VerificationKey:
    """
    A key that verifies token signatures, and the algorithms it may be used with.

    @ivar key: a C{cryptography} public key, or the HMAC secret (C{bytes}).
    @ivar algorithms: the JWS C{alg} values this key verifies.
    @ivar kid: the key id tokens name it by (their C{kid} header), or L{None}.
    """

    key: Any
    algorithms: frozenset[str] = field(converter=_frozen_names)
    kid: str | None = None

    @classmethod
    def hmac(cls, secret: bytes | str, kid: str | None = None) -> VerificationKey:
        """
        A shared secret for C{HS256} (and C{HS384}/C{HS512} when it is long enough).

        @raise ValueError: the secret is shorter than 32 bytes (RFC 7518 3.2).
        """
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        algorithms = {a for a, length in _HMAC_MIN_LENGTH.items() if len(secret) >= length}
        if not algorithms:
            raise ValueError("an HMAC secret must be at least 32 bytes long")
        return cls(secret, algorithms, kid)

    @classmethod
    def from_pem(cls, pem: bytes, kid: str | None = None) -> VerificationKey:
        """
        A public key (RSA, EC, Ed25519/Ed448) from PEM: a public key, a certificate, or a
        private key (of which only the public half is kept).

        @raise ValueError: C{pem} is none of these, or of an unsupported type.
        """
        key: Any
        if b"CERTIFICATE" in pem:
            key = x509.load_pem_x509_certificate(pem).public_key()
        elif b"PRIVATE KEY" in pem:
            key = _public(load_pem_private_key(pem, password=None))
        else:
            key = load_pem_public_key(pem)
        return cls(key, _public_algorithms(key), kid)

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> VerificationKey:
        """
        A key from a JSON Web Key (RFC 7517).  Its C{alg}, when present, is the only
        algorithm it verifies; otherwise every one its type allows.

        @raise ValueError: the JWK is malformed, of an unsupported type, not for signatures
            (C{use} other than C{sig}), or names an algorithm its type does not allow.
        """
        use = jwk.get("use", "sig")
        if use != "sig":
            raise ValueError(f"JWK for {use!r}, not for signatures")
        try:
            parsed = jwt.PyJWK(dict(jwk))
        except jwt.PyJWTError as e:
            raise ValueError(f"bad JWK: {e}") from None
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise ValueError("JWK kid is not a string")
        if jwk.get("kty") == "oct":
            key = cls.hmac(parsed.key, kid)
        else:
            public = _public(parsed.key)
            key = cls(public, _public_algorithms(public), kid)
        alg = jwk.get("alg")
        if alg is not None:
            if alg not in key.algorithms:
                raise ValueError(f"JWK alg {alg!r} does not fit its key")
            key = cls(key.key, {alg}, kid)
        return key


def parse_jwks(content: bytes) -> tuple[VerificationKey, ...]:
    """
    The signature keys of a JWK Set (C{{"keys": [...]}}) or of a single JWK.  Keys that are
    not for signatures or not supported are skipped, with a warning.

    @raise ValueError: the content is not JSON of that shape, or holds no usable key.
    """
    try:
        document = json.loads(content)
    except ValueError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(document, dict):
        raise ValueError("not a JWK Set")
    jwks = document.get("keys", [document])
    if not isinstance(jwks, list):
        raise ValueError("JWK Set keys is not a list")
    keys = []
    for index, jwk in enumerate(jwks):
        if not isinstance(jwk, dict):
            raise ValueError(f"JWK Set key {index} is not an object")
        try:
            keys.append(VerificationKey.from_jwk(jwk))
        except ValueError as e:
            _log.warn(
                "skipping JWK {index} ({kid}): {error}", index=index, kid=jwk.get("kid"), error=e
            )
    if not keys:
        raise ValueError("no usable signature key")
    return tuple(keys)


class InvalidToken(Exception):
    """
    A token that does not authenticate; the message is safe to show (RFC 6750
    C{error_description}).
    """


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidToken(f"{name} is not a number")
    return float(value)


@implementer(IAuthenticator)
class JWTAuthenticator:
    """
    Accepts requests bearing a valid JSON Web Token.

    The token is read from C{Authorization: Bearer ...} (or from another header, where a
    C{Bearer} prefix is optional).  Its signature must verify with one of the keys for the
    algorithm in its header (the key named by its C{kid} when it has one); C{exp} and
    C{nbf} are checked against the injected clock with C{leeway} seconds of tolerance, C{aud}
    when C{audience} is set, C{iss} when C{issuer} is set, and every claim in
    C{required_claims} must be present.  The C{identity_claim} becomes C{request.identity}
    and the claims are left in C{request.notes["jwt.claims"]} for rewriters.

    A request without a token gets 401 with C{WWW-Authenticate: Bearer}; one with a token
    that fails gets 401 with C{error="invalid_token"} and a short description (RFC 6750 3.1).
    """

    def __init__(
        self,
        keys: Iterable[VerificationKey] = (),
        jwks_file: str | FilePath[str] | None = None,
        algorithms: Sequence[str] = ("RS256", "ES256", "HS256"),
        audience: str | Sequence[str] | None = None,
        issuer: str | Sequence[str] | None = None,
        leeway: float = 30.0,
        identity_claim: str = "sub",
        header: str = "Authorization",
        realm: str | None = None,
        required_claims: Sequence[str] = ("exp",),
        remove_header: bool = False,
        clock: IReactorTime | None = None,
        check_interval: float = 1.0,
    ) -> None:
        """
        @param keys: keys given directly (see L{VerificationKey}).
        @param jwks_file: a JWK Set file, reloaded when it changes (key rotation: publish the
            new key next to the old one, then drop the old one once its tokens expired).
        @param algorithms: the JWS algorithms accepted at all.
        @param audience: the audience (or any of the audiences) this proxy is; L{None} leaves
            C{aud} unchecked.
        @param issuer: the issuer (or any of the issuers) trusted; L{None} leaves C{iss}
            unchecked.
        @param remove_header: drop the token's header before the request goes to the backend.
        @raise ValueError: for C{none} or an unknown algorithm, no key source, or keys none of
            which fits C{algorithms}.
        """
        for algorithm in algorithms:
            if algorithm.lower() == "none":
                raise ValueError('the JWT algorithm "none" is never accepted')
            if algorithm not in SUPPORTED_ALGORITHMS:
                raise ValueError(f"unsupported JWT algorithm {algorithm!r}")
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        assert clock is not None
        self._clock = clock
        self.algorithms = frozenset(algorithms)
        self._keys = tuple(keys)
        self._jwks = (
            None if jwks_file is None else WatchedFile(jwks_file, parse_jwks, clock, check_interval)
        )
        if self._jwks is None and not self._keys:
            raise ValueError("a JWT authenticator needs keys or a JWKS file")
        if not any(key.algorithms & self.algorithms for key in self.keys()):
            raise ValueError(f"no key fits the algorithms {sorted(self.algorithms)}")
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway
        self._identity_claim = identity_claim
        self._header = header.encode("ascii")
        self._bearer_only = header.lower() == "authorization"
        self._required = list(required_claims)
        self._remove_header = remove_header
        self._challenge = b"Bearer" if realm is None else b"Bearer realm=" + quoted_string(realm)

    def __repr__(self) -> str:
        return f"JWTAuthenticator(algorithms={sorted(self.algorithms)!r})"

    def keys(self) -> tuple[VerificationKey, ...]:
        """The keys in force: those given, then those of the JWKS file as last loaded."""
        if self._jwks is None:
            return self._keys
        return self._keys + self._jwks.current()

    def _token(self, headers: Headers) -> bytes | None:
        values = headers.get_all(self._header)
        if len(values) != 1:
            return None
        scheme, space, token = values[0].strip(b" \t").partition(b" ")
        if space and scheme.lower() == b"bearer":
            return token.strip(b" \t") or None
        if self._bearer_only:
            return None
        return values[0].strip(b" \t") or None

    def verify(self, token: bytes) -> dict[str, Any]:
        """
        The claims of C{token}, when it is valid.

        @raise InvalidToken: saying why it is not.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("malformed token") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            raise InvalidToken("algorithm not allowed")
        kid = header.get("kid")
        candidates = [key for key in self.keys() if algorithm in key.algorithms]
        named = [key for key in candidates if kid is not None and key.kid == kid]
        candidates = named or [key for key in candidates if key.kid is None or kid is None]
        options: Options = {
            "verify_signature": True,
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_aud": self._audience is not None,
            "verify_iss": self._issuer is not None,
            "require": self._required,
            "enforce_minimum_key_length": True,
        }
        for key in candidates:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key.key,
                    algorithms=[algorithm],
                    audience=self._audience,
                    issuer=self._issuer,
                    options=options,
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidAudienceError:
                raise InvalidToken("wrong audience") from None
            except jwt.InvalidIssuerError:
                raise InvalidToken("wrong issuer") from None
            except jwt.MissingRequiredClaimError:
                raise InvalidToken("missing required claim") from None
            except jwt.PyJWTError:
                raise InvalidToken("malformed token") from None
            self._check_times(claims)
            return claims
        raise InvalidToken("bad signature")

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock.seconds()
        expires = _number(claims, "exp")
        if expires is not None and expires + self._leeway <= now:
            raise InvalidToken("token expired")
        not_before = _number(claims, "nbf")
        if not_before is not None and not_before > now + self._leeway:
            raise InvalidToken("token not yet valid")

    def _refuse(self, description: str) -> ErrorResponse:
        challenge = (
            self._challenge
            + (b", " if self._challenge != b"Bearer" else b" ")
            + b'error="invalid_token", error_description='
            + quoted_string(description)
        )
        return ErrorResponse(
            401, b"401 Unauthorized\n", Headers.of((b"WWW-Authenticate", challenge))
        )

    def authenticate(self, request: ProxyRequest) -> ErrorResponse | None:
        headers = request.head.headers
        token = self._token(headers)
        if token is None:
            return ErrorResponse(
                401, b"401 Unauthorized\n", Headers.of((b"WWW-Authenticate", self._challenge))
            )
        try:
            claims = self.verify(token)
            identity = claims.get(self._identity_claim)
            if isinstance(identity, bool) or not isinstance(identity, (str, int)):
                raise InvalidToken("no identity claim")
        except InvalidToken as e:
            _log.info(
                "JWT refused from {client}: {reason}", client=request.client_ip, reason=str(e)
            )
            return self._refuse(str(e))
        request.identity = str(identity)
        request.notes["jwt.claims"] = claims
        if self._remove_header:
            headers.remove(self._header)
        return None
