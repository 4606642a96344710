"""
The write path shared by every protocol: send at once when nothing is queued.

Twisted's C{transport.write} always queues and sends on the next reactor turn, which costs a
proxy that writes once per read two extra dispatches and four C{epoll_ctl} calls per exchange.
L{writer_for} returns a function that, on a plain TCP transport with an empty send buffer,
calls C{send()} immediately and queues only what the kernel did not take; in every other case
(TLS, a non-TCP transport, a transport with queued data, a reactor whose transports lack the
internals relied on here) it is the transport's own C{write}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import ITransport

_REQUIRED = ("_tempDataLen", "dataBuffer", "offset", "socket", "connected", "_writeDisconnected")


def supports_send_now(transport: object) -> bool:
    """Whether C{transport} is a plain Twisted TCP connection whose internals we rely on."""
    return (
        isinstance(transport, tcp.Connection)
        and not getattr(transport, "TLS", False)
        and all(hasattr(transport, name) for name in _REQUIRED)
    )


def send_now(transport: tcp.Connection, data: bytes) -> None:
    """
    Write C{data} to C{transport}, sending it at once if nothing is queued ahead of it.
    """
    _immediate_writer(transport)(data)


def _immediate_writer(connection: Any) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        if (
            connection._tempDataLen
            or len(connection.dataBuffer) - connection.offset
            or not connection.connected
            or connection._writeDisconnected
            # startTLS may come later.
            or connection.TLS
        ):
            connection.write(data)
            return
        try:
            sent = connection.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # Let the normal path discover and report the failure.
            connection.write(data)
            return
        if sent < len(data):
            connection.write(data[sent:])

    return write


def writer_for(transport: ITransport, enabled: bool = True) -> Callable[[bytes], None]:
    """
    The fastest correct write function for C{transport}.

    @param enabled: C{False} always returns C{transport.write}.
    """
    if enabled and supports_send_now(transport):
        return _immediate_writer(transport)
    return transport.write
