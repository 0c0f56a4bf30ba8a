# -*- test-case-name: tests.test_refusal -*-
"""
A refused WebSocket upgrade, read as HTTP: the status line, headers and
(a bounded part of) the body become a typed error with the server's
message and ``Retry-After``.

Autobahn reports a refused upgrade only as text; the tunnel's client
protocol keeps the response bytes until the head is complete and, for
anything but ``101``, until the body is (L{ResponseHead.bodyComplete}),
then asks L{refusalError} what it means.  Pure functions over bytes.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from sprites_twisted.errors import (
    RateLimitedError,
    SpriteAuthError,
    SpriteNotFoundError,
    SpriteServerError,
    UpgradeRefusedError,
)

__all__ = [
    "MAX_ERROR_BODY",
    "MAX_RESPONSE_HEADER",
    "ResponseHead",
    "parseResponseHead",
    "refusalError",
]

#: The most of a refused upgrade's body we read and keep.
MAX_ERROR_BODY = 8 * 1024
#: The most of an HTTP response head we accept before giving up.
MAX_RESPONSE_HEADER = 16 * 1024


class ResponseHead(NamedTuple):
    """
    A parsed HTTP response head.

    :ivar status: the status code, or C{None} for an unparsable status line.
    :ivar headers: lower-cased names to values (repeated names joined by
        ``, ``).
    :ivar size: bytes of the head, blank line included (where the body
        starts).
    """

    status: int | None
    headers: dict[str, str]
    size: int

    def bodyComplete(self, body: bytes) -> bool:
        """
        Has all of the body (as far as we read it) arrived in C{body}?
        """
        if len(body) >= MAX_ERROR_BODY:
            return True
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            return body.endswith(b"0\r\n\r\n")
        try:
            wanted = int(self.headers.get("content-length", ""))
        except ValueError:
            return False
        return len(body) >= wanted


def parseResponseHead(data: bytes) -> ResponseHead | None:
    """
    The response head at the start of C{data}, or C{None} while it is
    incomplete.

    :raises ValueError: when the head is over L{MAX_RESPONSE_HEADER} bytes.
    """
    end = data.find(b"\r\n\r\n", 0, MAX_RESPONSE_HEADER + 4)
    if end < 0:
        if len(data) > MAX_RESPONSE_HEADER:
            raise ValueError("HTTP response header too large")
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(None, 2)
    status: int | None
    try:
        status = int(parts[1]) if parts[0].startswith("HTTP/") else None
    except (IndexError, ValueError):
        status = None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return ResponseHead(status, headers, end + 4)


def _decodeBody(headers: dict[str, str], body: bytes) -> bytes:
    """
    Undo chunked transfer encoding, as far as the body goes.
    """
    if "chunked" not in headers.get("transfer-encoding", "").lower():
        return body
    out = []
    rest = body
    while rest:
        line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            break
        try:
            size = int(line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2 :]
    return b"".join(out)


def _retryAfter(headers: dict[str, str], body: dict[str, Any]) -> float | None:
    for value in (headers.get("retry-after"), body.get("retry_after_seconds")):
        if value is None or isinstance(value, bool):
            continue
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            continue
        if seconds >= 0:
            return seconds
    return None


def refusalError(status: int, headers: dict[str, str], body: bytes) -> UpgradeRefusedError:
    """
    The typed error for an upgrade refused with HTTP C{status}.

    The body's JSON ``message``/``error`` fields are used when present;
    otherwise the start of the body (truncated) is the message.
    """
    body = _decodeBody(headers, body)[:MAX_ERROR_BODY]
    parsed: dict[str, Any] = {}
    message: str | None = None
    code: str | None = None
    try:
        value = json.loads(body.decode("utf-8"))
        if isinstance(value, dict):
            parsed = value
    except (UnicodeDecodeError, ValueError, RecursionError):
        pass
    if parsed:
        m = parsed.get("message")
        c = parsed.get("error")
        message = m if isinstance(m, str) else None
        code = c if isinstance(c, str) else None
    elif body.strip():
        message = body.decode("utf-8", "replace").strip()
    if status in (401, 403):
        return SpriteAuthError(status, message, code)
    if status == 404:
        return SpriteNotFoundError(status, message, code)
    if status == 429:
        return RateLimitedError(status, message, code, _retryAfter(headers, parsed))
    if 500 <= status <= 599:
        return SpriteServerError(status, message, code)
    return UpgradeRefusedError(status, message, code)
