"""
Tests for L{twisted_rp.auth.jwt}.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, RSAAlgorithm
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_rp.auth.jwt import JWTAuthenticator, VerificationKey, parse_jwks
from twisted_rp.http.message import ErrorResponse, Headers, ProxyRequest, RequestHead
from twisted_rp.interfaces import IAuthenticator

NOW = 1_800_000_000.0
SECRET = b"a shared secret of 32 bytes+++++"


def b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def bearer(token: str | bytes) -> tuple[bytes, bytes]:
    if isinstance(token, str):
        token = token.encode()
    return (b"Authorization", b"Bearer " + token)


def make_request(*headers: tuple[bytes, bytes]) -> ProxyRequest:
    head = RequestHead(b"GET", b"/", b"HTTP/1.1", Headers.of((b"Host", b"api.example"), *headers))
    return ProxyRequest(
        head=head, client_ip="192.0.2.1", client_port=40000, scheme="https", host="api.example"
    )


def claims(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"sub": "alice", "exp": NOW + 600, "iat": NOW}
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


class Keys:
    """Keys made once for the module: RSA generation is the slow part."""

    rsa_private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_private = ec.generate_private_key(ec.SECP256R1())
    rsa_public_pem = rsa_private.public_key().public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
    )


class JWTAuthenticatorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.auth = self.make(audience="api", issuer="https://idp.example")

    def make(self, **kwargs: Any) -> JWTAuthenticator:
        keys = [
            VerificationKey.from_pem(Keys.rsa_public_pem),
            VerificationKey(Keys.ec_private.public_key(), {"ES256"}),
            VerificationKey.hmac(SECRET),
        ]
        kwargs.setdefault("keys", keys)
        return JWTAuthenticator(clock=self.clock, **kwargs)

    def token(self, algorithm: str = "RS256", headers: Any = None, **overrides: Any) -> str:
        key: Any = {"RS256": Keys.rsa_private, "ES256": Keys.ec_private, "HS256": SECRET}[algorithm]
        payload = claims(**{"aud": "api", "iss": "https://idp.example", **overrides})
        return jwt.encode(payload, key, algorithm=algorithm, headers=headers)

    def assertAccepted(
        self, token: str | bytes, auth: JWTAuthenticator | None = None
    ) -> ProxyRequest:
        request = make_request(bearer(token))
        self.assertIsNone((auth or self.auth).authenticate(request))
        return request

    def assertInvalid(self, token: str | bytes, description: bytes) -> None:
        request = make_request(bearer(token))
        verdict = self.auth.authenticate(request)
        assert isinstance(verdict, ErrorResponse)
        self.assertEqual(verdict.status, 401)
        self.assertEqual(
            verdict.headers.get(b"www-authenticate"),
            b'Bearer error="invalid_token", error_description="' + description + b'"',
        )
        self.assertIsNone(request.identity)

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IAuthenticator, self.auth))

    def test_accepts_each_algorithm(self) -> None:
        for algorithm in ("RS256", "ES256", "HS256"):
            request = self.assertAccepted(self.token(algorithm))
            self.assertEqual(request.identity, "alice")
            self.assertEqual(request.notes["jwt.claims"]["aud"], "api")
            self.assertIn(b"Authorization", request.head.headers)

    def test_missing_token_challenged_without_error(self) -> None:
        auth = self.make(realm="api")
        for headers in [(), ((b"Authorization", b"Basic YTpi"),), ((b"Authorization", b"Bearer"),)]:
            verdict = auth.authenticate(make_request(*headers))
            assert isinstance(verdict, ErrorResponse)
            self.assertEqual(verdict.status, 401)
            self.assertEqual(verdict.headers.get(b"www-authenticate"), b'Bearer realm="api"')

    def test_realm_and_error(self) -> None:
        verdict = self.make(realm="api").authenticate(make_request(bearer("x.y.z")))
        assert isinstance(verdict, ErrorResponse)
        self.assertEqual(
            verdict.headers.get(b"www-authenticate"),
            b'Bearer realm="api", error="invalid_token", error_description="malformed token"',
        )

    def test_expiry_with_leeway(self) -> None:
        self.assertAccepted(self.token(exp=NOW - 29))
        self.assertInvalid(self.token(exp=NOW - 30), b"token expired")
        self.assertInvalid(self.token(exp="tomorrow"), b"exp is not a number")
        self.assertInvalid(self.token(exp=None), b"missing required claim")

    def test_clock_decides(self) -> None:
        token = self.token(exp=NOW + 60)
        self.assertAccepted(token)
        self.clock.advance(90)
        self.assertInvalid(token, b"token expired")

    def test_not_before(self) -> None:
        self.assertAccepted(self.token(nbf=NOW + 30))
        self.assertInvalid(self.token(nbf=NOW + 31), b"token not yet valid")

    def test_audience(self) -> None:
        self.assertInvalid(self.token(aud="other"), b"wrong audience")
        self.assertAccepted(self.token(aud=["other", "api"]))
        self.assertInvalid(self.token(aud=None), b"missing required claim")
        # Without a configured audience, aud is not looked at.
        self.assertAccepted(self.token(aud="other"), self.make())

    def test_issuer(self) -> None:
        self.assertInvalid(self.token(iss="https://evil.example"), b"wrong issuer")
        auth = self.make(issuer=["https://a.example", "https://idp.example"])
        self.assertAccepted(self.token(), auth)

    def test_tampered(self) -> None:
        header, payload, signature = self.token("RS256").split(".")
        forged = b64url(
            json.dumps(claims(sub="admin", aud="api", iss="https://idp.example")).encode()
        )
        self.assertInvalid(f"{header}.{forged.decode()}.{signature}", b"bad signature")
        self.assertInvalid(f"{header}.{payload}.{signature[:-4]}AAAA", b"bad signature")

    def test_signed_by_another_key(self) -> None:
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        token = jwt.encode(claims(aud="api", iss="https://idp.example"), other, algorithm="RS256")
        self.assertInvalid(token, b"bad signature")

    def test_alg_none_never(self) -> None:
        header = b64url(b'{"alg":"none","typ":"JWT"}')
        payload = b64url(json.dumps(claims(aud="api", iss="https://idp.example")).encode())
        self.assertInvalid(header + b"." + payload + b".", b"algorithm not allowed")
        header = b64url(b'{"alg":"None"}')
        self.assertInvalid(header + b"." + payload + b".", b"algorithm not allowed")
        for algorithms in [("none",), ("HS256", "NONE")]:
            self.assertRaises(ValueError, self.make, algorithms=algorithms)

    def test_rsa_public_key_never_an_hmac_secret(self) -> None:
        header = b64url(b'{"alg":"HS256","typ":"JWT"}')
        payload = b64url(json.dumps(claims(aud="api", iss="https://idp.example")).encode())
        signing_input = header + b"." + payload
        signature = hmac.new(Keys.rsa_public_pem, signing_input, hashlib.sha256).digest()
        self.assertInvalid(signing_input + b"." + b64url(signature), b"bad signature")

    def test_algorithm_not_configured(self) -> None:
        auth = self.make(algorithms=("RS256",))
        verdict = auth.authenticate(make_request(bearer(self.token("HS256"))))
        assert isinstance(verdict, ErrorResponse)
        self.assertIn(b"algorithm not allowed", verdict.headers.get(b"www-authenticate") or b"")
        token = jwt.encode(claims(), Keys.rsa_private, algorithm="RS384")
        self.assertInvalid(token, b"algorithm not allowed")

    def test_identity_claim(self) -> None:
        auth = self.make(identity_claim="email")
        request = self.assertAccepted(self.token(email="alice@example.com"), auth)
        self.assertEqual(request.identity, "alice@example.com")
        verdict = auth.authenticate(make_request(bearer(self.token())))
        assert isinstance(verdict, ErrorResponse)
        self.assertIn(b"no identity claim", verdict.headers.get(b"www-authenticate") or b"")

    def test_other_header_and_removal(self) -> None:
        auth = self.make(header="X-Access-Token", remove_header=True)
        token = self.token().encode()
        for value in (token, b"Bearer " + token):
            request = make_request((b"X-Access-Token", value))
            self.assertIsNone(auth.authenticate(request))
            self.assertNotIn(b"X-Access-Token", request.head.headers)
        self.assertIsInstance(auth.authenticate(make_request(bearer(token))), ErrorResponse)

    def test_kid_selects_key(self) -> None:
        other_secret = b"another shared secret of 32 byte"
        auth = self.make(
            keys=[
                VerificationKey.hmac(SECRET, kid="a"),
                VerificationKey.hmac(other_secret, kid="b"),
            ]
        )
        token = jwt.encode(claims(), other_secret, algorithm="HS256", headers={"kid": "b"})
        self.assertAccepted(token, auth)
        token = jwt.encode(claims(), other_secret, algorithm="HS256", headers={"kid": "a"})
        verdict = auth.authenticate(make_request(bearer(token)))
        self.assertIsInstance(verdict, ErrorResponse)

    def test_bad_configuration(self) -> None:
        self.assertRaises(ValueError, JWTAuthenticator, clock=self.clock)
        self.assertRaises(ValueError, self.make, algorithms=("HS257",))
        self.assertRaises(ValueError, VerificationKey.hmac, b"short")
        self.assertRaises(
            ValueError, self.make, keys=[VerificationKey.hmac(SECRET)], algorithms=("RS256",)
        )


class JWKSTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.path = self.mktemp()

    def write_jwks(self, *jwks: dict[str, Any]) -> None:
        with open(self.path, "w") as f:
            json.dump({"keys": list(jwks)}, f)

    def rsa_jwk(self, private: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
        jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
        return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}

    def assertVerdict(self, auth: JWTAuthenticator, token: str, accepted: bool) -> None:
        verdict = auth.authenticate(make_request(bearer(token)))
        if accepted:
            self.assertIsNone(verdict)
        else:
            self.assertIsInstance(verdict, ErrorResponse)

    def test_rotation(self) -> None:
        old = Keys.rsa_private
        new = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        old_token = jwt.encode(claims(), old, algorithm="RS256", headers={"kid": "2025"})
        new_token = jwt.encode(claims(), new, algorithm="RS256", headers={"kid": "2026"})
        self.write_jwks(self.rsa_jwk(old, "2025"))
        auth = JWTAuthenticator(jwks_file=self.path, clock=self.clock)
        self.assertVerdict(auth, old_token, True)
        self.assertVerdict(auth, new_token, False)
        self.write_jwks(self.rsa_jwk(old, "2025"), self.rsa_jwk(new, "2026"))
        self.clock.advance(1)
        self.assertVerdict(auth, old_token, True)
        self.assertVerdict(auth, new_token, True)
        self.write_jwks(self.rsa_jwk(new, "2026"))
        self.clock.advance(1)
        self.assertVerdict(auth, old_token, False)
        self.assertVerdict(auth, new_token, True)
        # A broken file keeps the keys in force.
        with open(self.path, "w") as f:
            f.write('{"keys": [')
        self.clock.advance(1)
        self.assertVerdict(auth, new_token, True)

    def test_jwk_kinds(self) -> None:
        ec_jwk = ECAlgorithm.to_jwk(Keys.ec_private.public_key(), as_dict=True)
        oct_jwk = HMACAlgorithm.to_jwk(SECRET, as_dict=True)
        encryption = {
            **RSAAlgorithm.to_jwk(Keys.rsa_private.public_key(), as_dict=True),
            "use": "enc",
        }
        keys = parse_jwks(json.dumps({"keys": [ec_jwk, oct_jwk, encryption]}).encode())
        self.assertEqual([k.algorithms for k in keys], [{"ES256"}, {"HS256"}])
        private = RSAAlgorithm.to_jwk(Keys.rsa_private, as_dict=True)
        (key,) = parse_jwks(json.dumps(private).encode())
        self.assertIsInstance(key.key, rsa.RSAPublicKey)
        self.assertIn("PS256", key.algorithms)

    def test_pem_private_key_keeps_public_half(self) -> None:
        pem = Keys.ec_private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        key = VerificationKey.from_pem(pem, kid="ec")
        self.assertIsInstance(key.key, ec.EllipticCurvePublicKey)
        self.assertEqual((key.algorithms, key.kid), ({"ES256"}, "ec"))
        self.assertRaises(ValueError, VerificationKey.from_pem, b"not a key")

    def test_bad_jwks(self) -> None:
        self.assertRaises(ValueError, parse_jwks, b"[]")
        self.assertRaises(ValueError, parse_jwks, b'{"keys": []}')
        self.assertRaises(ValueError, parse_jwks, b"not json")
        ec_jwk = ECAlgorithm.to_jwk(Keys.ec_private.public_key(), as_dict=True)
        self.assertRaises(ValueError, VerificationKey.from_jwk, {**ec_jwk, "alg": "HS256"})
        self.assertRaises(ValueError, VerificationKey.from_jwk, {"kty": "oct", "k": "c2hvcnQ"})
