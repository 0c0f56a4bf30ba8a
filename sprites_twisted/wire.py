# -*- test-case-name: tests.test_wire -*-
"""
The tunnel handshake as pure functions, shared by the client (the tunnel)
and the local sprite server.

After the WebSocket opens the client sends one text message
``{"host": ..., "port": ...}`` and the server answers one text message
``{"status": "connected", "target": "host:port"}`` (or another status,
optionally with ``message``/``error``).  See ``PROTOCOL.md``.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from sprites_twisted.errors import HandshakeError
from sprites_twisted.mapping import checkHost, checkPort, formatTarget

__all__ = [
    "MAX_INIT_SIZE",
    "MAX_REPLY_SIZE",
    "InitError",
    "Init",
    "encodeInit",
    "parseInit",
    "encodeReply",
    "parseReply",
    "formatTarget",
]

#: The largest init message the server accepts, in bytes.
MAX_INIT_SIZE = 4096
#: The largest handshake reply the client accepts, in bytes.
MAX_REPLY_SIZE = 64 * 1024


class InitError(ValueError):
    """
    An init message the server must refuse; the message says why (and is
    safe to send back to the client).
    """


class Init(NamedTuple):
    """
    A parsed init message: where the client wants to go.
    """

    host: str
    port: int


def encodeInit(host: str, port: int) -> bytes:
    """
    The client's init message.  C{host} C{""} becomes ``localhost``; IPv6
    literals go without brackets.
    """
    return json.dumps({"host": checkHost(host) or "localhost", "port": checkPort(port)}).encode()


def parseInit(payload: bytes) -> Init:
    """
    Parse and validate a client's init message (server side).

    :raises InitError: for anything but a JSON object with a valid
        ``host`` (string, may be empty) and ``port`` (integer 1..65535).
    """
    if len(payload) > MAX_INIT_SIZE:
        raise InitError(f"init message larger than {MAX_INIT_SIZE} bytes")
    try:
        message = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        # RecursionError: a few thousand "[" nest deeper than json allows.
        raise InitError("init message is not JSON") from None
    if not isinstance(message, dict):
        raise InitError("init message is not a JSON object")
    host = message.get("host", "")
    if host is None:
        host = ""
    if not isinstance(host, str):
        raise InitError("init 'host' is not a string")
    port = message.get("port")
    if isinstance(port, bool) or not isinstance(port, int):
        raise InitError("init 'port' is missing or not an integer")
    try:
        checkPort(port)
        host = checkHost(host)
    except ValueError as e:
        raise InitError(f"init {e}") from None
    return Init(host or "localhost", port)


def encodeReply(status: str, target: str | None = None, message: str | None = None) -> bytes:
    """
    The server's reply: ``connected`` with the target, or an error status
    with a message for the user.
    """
    reply: dict[str, Any] = {"status": status}
    if target is not None:
        reply["target"] = target
    if message is not None:
        reply["message"] = message
    return json.dumps(reply).encode()


def parseReply(payload: bytes) -> str:
    """
    Parse the server's reply (client side).

    :returns: the ``target`` the server connected to (``""`` if it named
        none).
    :raises HandshakeError: for any status but ``connected`` (with the
        server's ``message``/``error``), and for a reply that is too large,
        not JSON, or not an object.
    """
    if len(payload) > MAX_REPLY_SIZE:
        raise HandshakeError(None, f"reply larger than {MAX_REPLY_SIZE} bytes")
    try:
        reply = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise HandshakeError(None, f"reply is not JSON: {payload[:80]!r}") from None
    if not isinstance(reply, dict):
        raise HandshakeError(None, f"reply is not a JSON object: {payload[:80]!r}")
    status = reply.get("status")
    if status != "connected":
        explanation = reply.get("message") or reply.get("error")
        raise HandshakeError(
            str(status),
            explanation if isinstance(explanation, str) else None,
        )
    target = reply.get("target")
    return target if isinstance(target, str) else ""
