# -*- test-case-name: tests.test_errors -*-
"""
The exception tree of sprites_twisted.

Every error a caller can get from this package derives from
:class:`SpritesError`.  Errors about a tunnel also derive from Twisted's
:class:`~twisted.internet.error.ConnectError`, because an
``IStreamClientEndpoint.connect`` must fail with one; callers that only know
Twisted's contract keep working, callers that know ours can ``trap`` the
precise subclass and read its attributes.

No error ever carries the API token: messages are built from status codes,
server messages and addresses only.
"""

from __future__ import annotations

from twisted.internet.error import ConnectError

__all__ = [
    "SpritesError",
    "MappingError",
    "AddressError",
    "ConfigurationError",
    "TunnelError",
    "APIUnreachableError",
    "TLSVerificationError",
    "TLSHandshakeError",
    "UpgradeRefusedError",
    "SpriteAuthError",
    "SpriteNotFoundError",
    "RateLimitedError",
    "SpriteServerError",
    "HandshakeError",
    "TunnelTimeoutError",
    "TunnelClosedError",
]

_MAX_SHOWN = 200


def _shorten(text: str, limit: int = _MAX_SHOWN) -> str:
    """
    Cut C{text} to C{limit} characters so that a hostile or broken server
    cannot flood logs and exception messages.
    """
    text = "".join(c if c.isprintable() else "?" for c in text)
    if len(text) > limit:
        return text[:limit] + "..."
    return text


class SpritesError(Exception):
    """
    Base class of every error raised by sprites_twisted.
    """


class MappingError(SpritesError, ValueError):
    """
    A port mapping (``--map`` value or :class:`PortMapping` field) is not
    valid.

    :ivar value: the bad value, as given.
    """

    def __init__(self, value: object, problem: str) -> None:
        self.value = value
        self.problem = problem
        super().__init__(f"invalid port mapping {value!r}: {problem}")


class AddressError(SpritesError, ValueError):
    """
    A ``host:port`` address (for ``proxySocket``) or a network name is not
    valid.

    :ivar value: the bad value, as given.
    """

    def __init__(self, value: object, problem: str) -> None:
        self.value = value
        self.problem = problem
        super().__init__(f"invalid address {value!r}: {problem}")


class ConfigurationError(SpritesError, ValueError):
    """
    A setting (API URL, sprite name, token source) is not usable.

    The message names the setting and what is expected; it never contains
    the token itself.
    """


class TunnelError(SpritesError, ConnectError):
    """
    A tunnel into a sprite could not be opened.

    Subclasses carry the facts a user needs to act on.
    """

    def __init__(self, message: str) -> None:
        # ConnectError's constructor formats its own message; we want ours.
        Exception.__init__(self, message)
        self.osError = None
        self.message = message

    def __str__(self) -> str:
        return self.message


class APIUnreachableError(TunnelError):
    """
    The TCP (or TLS) connection to the Sprites API could not be made.

    :ivar address: ``host:port`` of the API.
    :ivar reason: what the operating system or TLS layer said.
    """

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        self.reason = reason
        super().__init__(f"cannot reach the Sprites API at {address}: {reason}")


class TLSVerificationError(TunnelError):
    """
    The API's TLS certificate could not be verified (untrusted issuer,
    expired, or issued for another host name).  The token was not sent.

    :ivar host: the host name that was checked.
    :ivar reason: the verification failure as reported by OpenSSL or
        service_identity.
    """

    def __init__(self, host: str, reason: str) -> None:
        self.host = host
        self.reason = reason
        super().__init__(f"TLS certificate verification failed for {host}: {_shorten(reason)}")


class TLSHandshakeError(TunnelError):
    """
    The TLS handshake with the API failed before any certificate was
    presented: the server does not speak TLS at that address (a ``wss://``
    or ``https://`` URL pointing at a plain-text port), or it broke the
    handshake.  The token was not sent.

    :ivar host: the API host.
    :ivar reason: what OpenSSL reported.
    """

    def __init__(self, host: str, reason: str) -> None:
        self.host = host
        self.reason = reason
        super().__init__(
            f"TLS handshake with {host} failed (does the server speak TLS on that "
            f"port?): {_shorten(reason)}"
        )


class UpgradeRefusedError(TunnelError):
    """
    The API answered the WebSocket upgrade with an HTTP status other than
    101.

    :ivar status: the HTTP status code.
    :ivar errorCode: the ``error`` field of the JSON body, if any.
    :ivar serverMessage: the ``message`` field of the JSON body, or the start
        of a non-JSON body, if any.
    """

    explanation = "the Sprites API refused the tunnel"

    def __init__(
        self,
        status: int,
        serverMessage: str | None = None,
        errorCode: str | None = None,
    ) -> None:
        self.status = status
        self.serverMessage = serverMessage
        self.errorCode = errorCode
        text = f"{self.explanation} (HTTP {status})"
        details = [_shorten(x) for x in (errorCode, serverMessage) if x]
        if details:
            text += ": " + " - ".join(details)
        super().__init__(text)


class SpriteAuthError(UpgradeRefusedError):
    """
    HTTP 401 or 403: the token is missing, wrong, or lacks access to the
    sprite.
    """

    explanation = "the Sprites API rejected the token; check SPRITE_TOKEN"


class SpriteNotFoundError(UpgradeRefusedError):
    """
    HTTP 404: no such sprite (or the API has no proxy endpoint there).
    """

    explanation = "no such sprite, or no proxy endpoint at this API URL"


class RateLimitedError(UpgradeRefusedError):
    """
    HTTP 429: too many requests.

    :ivar retryAfter: seconds to wait before trying again, from the
        ``Retry-After`` header or the body's ``retry_after_seconds``
        (``None`` when the server gave neither).
    """

    explanation = "rate limited by the Sprites API"

    def __init__(
        self,
        status: int,
        serverMessage: str | None = None,
        errorCode: str | None = None,
        retryAfter: float | None = None,
    ) -> None:
        self.retryAfter = retryAfter
        super().__init__(status, serverMessage, errorCode)
        if retryAfter is not None:
            self.message += f" (retry after {retryAfter:g} s)"


class SpriteServerError(UpgradeRefusedError):
    """
    HTTP 5xx: trouble on the server side; trying again later may work.
    """

    explanation = "the Sprites API failed"


class HandshakeError(TunnelError):
    """
    The WebSocket opened but the tunnel handshake failed: the server
    answered with a status other than ``connected``, sent something that is
    not a valid reply, or closed before replying.

    :ivar status: the reply's ``status`` (``None`` if there was no valid
        reply).
    :ivar serverMessage: the server's explanation, if it gave one.
    """

    def __init__(self, status: str | None, serverMessage: str | None = None) -> None:
        self.status = status
        self.serverMessage = serverMessage
        if status is not None:
            text = f"tunnel refused: unexpected status {_shorten(status)!r}"
        else:
            text = "tunnel handshake failed"
        if serverMessage:
            text += f": {_shorten(serverMessage)}"
        super().__init__(text)


class TunnelTimeoutError(TunnelError):
    """
    The tunnel was not ready (connected and handshake answered) within the
    handshake timeout.

    :ivar timeout: the timeout, in seconds.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(f"no answer from the sprite within {timeout:g} s")


class TunnelClosedError(TunnelError):
    """
    The WebSocket closed (or the TCP connection dropped) before the tunnel
    handshake completed.

    :ivar code: the WebSocket close code, if any.
    :ivar reason: the close reason or connection error.
    """

    def __init__(self, code: int | None, reason: str | None) -> None:
        self.code = code
        self.reason = reason
        text = "the connection closed before the tunnel was ready"
        if code is not None:
            text += f" (close code {code})"
        if reason:
            text += f": {_shorten(reason)}"
        super().__init__(text)
