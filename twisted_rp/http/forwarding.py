"""
What the proxy changes in the headers it forwards: hop-by-hop fields, and the fields that
tell a backend who the client is (X-Forwarded-*, RFC 7239 Forwarded, Via, a request id).

Both directions are rewritten in one pass over the fields: this runs for every request.
"""

from __future__ import annotations

import re
from random import getrandbits

from attrs import frozen

from twisted_rp.http.message import Headers
from twisted_rp.settings import HeaderPolicy

#: RFC 9110 section 7.6.1 connection-specific fields, plus the legacy Proxy-Connection.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

#: What an HTTPS listener tells backends of a client certificate (RFC 9440, and the
#: X-SSL-* names nginx and HAProxy setups use).  Removed from every incoming request, on
#: every listener, so that they cannot be forged.
CLIENT_CERT_FIELDS = frozenset(
    {
        b"client-cert",
        b"client-cert-chain",
        b"x-ssl-client-verify",
        b"x-ssl-client-s-dn",
        b"x-ssl-client-fingerprint",
    }
)

#: Fields a peer may not remove by naming them in C{Connection}.
_PROTECTED = frozenset({b"host", b"content-length"})

_X_FORWARDED = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port")

_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:+/=-]{1,200}").fullmatch
_FORWARDED_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+").fullmatch


def remove_hop_by_hop(
    headers: Headers, connection: list[bytes], also: frozenset[bytes] = frozenset()
) -> None:
    """
    Drop hop-by-hop fields, those named in C{connection} (the C{Connection} tokens), and
    C{also}.
    """
    drop = HOP_BY_HOP | also
    if connection:
        drop = drop | (frozenset(connection) - _PROTECTED)
    headers.fields = [f for f in headers.fields if f[0] not in drop]


def new_request_id() -> str:
    """
    A random 128-bit request id, as 32 hex digits.

    Ids must be unique, not secret: the C{random} module's generator (seeded from the
    system's, and again in a forked child) saves a system call per request.
    """
    return getrandbits(128).to_bytes(16, "big").hex()


def _forwarded_node(ip: str) -> bytes:
    # RFC 7239 section 6: IPv6 addresses are bracketed and the value quoted.
    return f'"[{ip}]"'.encode() if ":" in ip else ip.encode()


def _forwarded_value(value: bytes) -> bytes:
    return value if _FORWARDED_TOKEN(value) else b'"' + value.replace(b'"', b"") + b'"'


_MERGE_XFF, _MERGE_FORWARDED, _MERGE_VIA, _REQUEST_ID, _KEEP_IF_TRUSTED = range(5)


@frozen
class RequestForwarding:
    """
    The forwarding fields one listener adds to requests, prepared once from its policy.
    """

    policy: HeaderPolicy
    _drop: frozenset[bytes]
    _special: dict[bytes, int]
    _needs_fields: re.Pattern[bytes]
    _via: bytes
    _request_id_name: bytes

    @property
    def needs_fields(self) -> re.Pattern[bytes]:
        """
        Matches CRLF, a lower-cased name and a colon for every field this forwarding removes
        or merges: a head without any is forwarded as it came, with the fields appended.
        """
        return self._needs_fields

    @classmethod
    def from_policy(cls, policy: HeaderPolicy) -> RequestForwarding:
        # Hop-by-hop fields, and the framing and expectation fields the proxy re-creates.
        drop = HOP_BY_HOP | CLIENT_CERT_FIELDS | {b"content-length", b"expect"}
        special: dict[bytes, int] = {}
        if policy.x_forwarded:
            special[b"x-forwarded-for"] = _MERGE_XFF
            for name in _X_FORWARDED[1:]:
                special[name] = _KEEP_IF_TRUSTED
        if policy.forwarded:
            special[b"forwarded"] = _MERGE_FORWARDED
        if policy.via:
            special[b"via"] = _MERGE_VIA
        if policy.request_id:
            special[policy.request_id_header.lower().encode()] = _REQUEST_ID
        names = b"|".join(re.escape(name) for name in sorted(drop | set(special)))
        needs_fields = re.compile(rb"\r\n(?:" + names + rb"):")
        return cls(
            policy,
            frozenset(drop),
            special,
            needs_fields,
            b"1.1 " + policy.via_name.encode(),
            policy.request_id_header.encode(),
        )

    def apply(
        self,
        headers: Headers,
        connection: list[bytes],
        client_ip: str,
        scheme: str,
        host: bytes | None,
        local_port: int,
        keep: frozenset[bytes] = frozenset(),
        lowered: bytes | None = None,
        cache: dict[bytes | None, bytes] | None = None,
    ) -> str:
        """
        Rewrite request C{headers} for the backend: drop hop-by-hop fields (and those named in
        C{connection}) except C{keep}, then add the forwarding fields.

        Incoming forwarding fields are kept (and appended to) only from a trusted proxy; from
        anyone else they are replaced, so a client cannot pose as another address or scheme.

        @param lowered: CRLF and the lower-cased raw field block, if C{headers} was never
            split.
        @param cache: where one client connection keeps the fields it added, by host: they
            depend only on the connection and the host, except for the request id.
        @return: the request id (the client's if it sent a valid one, else a new one), or
            C{""} when the policy adds none.
        """
        policy = self.policy
        raw = headers.raw
        if (
            raw is not None
            and lowered is not None
            and not connection
            and not keep
            and self._needs_fields.search(lowered) is None
        ):
            return self.append(headers, client_ip, scheme, host, local_port, cache)
        trusted = policy.trusts(client_ip)
        drop = self._drop
        if connection:
            drop = drop | (frozenset(connection) - _PROTECTED)
        if keep:
            drop = drop - keep
        special = self._special.get
        kept: list[list[bytes]] = []
        xff: list[bytes] = []
        forwarded: list[bytes] = []
        via: list[bytes] = []
        present: set[bytes] = set()
        incoming_id: bytes | None = None
        for field in headers.fields:
            lname = field[0]
            if lname in drop:
                continue
            kind = special(lname)
            if kind is None:
                kept.append(field)
            elif kind == _MERGE_VIA:
                via.append(field[2])
            elif kind == _REQUEST_ID:
                incoming_id = field[2]
            elif trusted:
                if kind == _MERGE_XFF:
                    xff.append(field[2])
                elif kind == _MERGE_FORWARDED:
                    forwarded.append(field[2])
                else:
                    present.add(lname)
                    kept.append(field)
        ip = client_ip.encode()
        proto = scheme.encode()
        if policy.x_forwarded:
            xff.append(ip)
            kept.append([b"x-forwarded-for", b"X-Forwarded-For", b", ".join(xff)])
            if b"x-forwarded-proto" not in present:
                kept.append([b"x-forwarded-proto", b"X-Forwarded-Proto", proto])
            if host is not None and b"x-forwarded-host" not in present:
                kept.append([b"x-forwarded-host", b"X-Forwarded-Host", host])
            if b"x-forwarded-port" not in present:
                kept.append([b"x-forwarded-port", b"X-Forwarded-Port", b"%d" % local_port])
        if policy.forwarded:
            element = b"for=" + _forwarded_node(client_ip) + b";proto=" + proto
            if host is not None:
                element += b";host=" + _forwarded_value(host)
            forwarded.append(element)
            kept.append([b"forwarded", b"Forwarded", b", ".join(forwarded)])
        if policy.via:
            via.append(b"1.1 " + policy.via_name.encode())
            kept.append([b"via", b"Via", b", ".join(via)])
        request_id = ""
        if policy.request_id:
            if incoming_id is not None and _VALID_REQUEST_ID(incoming_id):
                request_id = incoming_id.decode("ascii")
            else:
                request_id = new_request_id()
            name = policy.request_id_header.encode()
            kept.append([name.lower(), name, request_id.encode()])
        headers.fields = kept
        return request_id

    def append(
        self,
        headers: Headers,
        client_ip: str,
        scheme: str,
        host: bytes | None,
        local_port: int,
        cache: dict[bytes | None, bytes] | None = None,
    ) -> str:
        """
        L{apply} for unsplit C{headers} known to have none of the fields it removes or merges
        (L{needs_fields}) and no C{Connection} field: the forwarding fields are appended to
        the block as it came.
        """
        raw = headers.raw
        assert raw is not None
        block, request_id = self.append_block(raw, client_ip, scheme, host, local_port, cache)
        headers.replace_raw(block)
        return request_id

    def append_block(
        self,
        raw: bytes,
        client_ip: str,
        scheme: str,
        host: bytes | None,
        local_port: int,
        cache: dict[bytes | None, bytes] | None = None,
    ) -> tuple[bytes, str]:
        """
        L{append} for a raw field block: the block with the forwarding fields, and the
        request id (C{""} when the policy adds none).
        """
        block = cache.get(host) if cache is not None else None
        if block is None:
            block = self._forwarding_block(client_ip, scheme, host, local_port)
            if cache is not None and len(cache) < 8:
                cache[host] = block
        request_id = ""
        if self.policy.request_id:
            request_id = new_request_id()
            block += request_id.encode()
        return (raw + block if raw else block[2:]), request_id

    def _forwarding_block(
        self, client_ip: str, scheme: str, host: bytes | None, local_port: int
    ) -> bytes:
        """The forwarding fields for an untrusted client, as lines each starting with CRLF."""
        policy = self.policy
        ip = client_ip.encode()
        proto = scheme.encode()
        lines = [b""]
        if policy.x_forwarded:
            lines.append(b"X-Forwarded-For: " + ip)
            lines.append(b"X-Forwarded-Proto: " + proto)
            if host is not None:
                lines.append(b"X-Forwarded-Host: " + host)
            lines.append(b"X-Forwarded-Port: %d" % local_port)
        if policy.forwarded:
            element = b"Forwarded: for=" + _forwarded_node(client_ip) + b";proto=" + proto
            if host is not None:
                element += b";host=" + _forwarded_value(host)
            lines.append(element)
        if policy.via:
            lines.append(b"Via: " + self._via)
        if policy.request_id:
            lines.append(self._request_id_name + b": ")
        return b"\r\n".join(lines)
