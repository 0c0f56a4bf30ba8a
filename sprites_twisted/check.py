# -*- test-case-name: tests.test_check -*-
"""
The up-front check: one ``GET {base}/v1/sprites/{name}`` with the token
(PROTOCOL.md, "Sprite information") tells at start-up whether the token
and the sprite name are good, before any local connection depends on them.

The request goes through the same transport (and so the same TLS checks)
as the tunnels: :func:`sprites_twisted.endpoint.apiTransportEndpoint`.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from zope.interface import implementer

from sprites_twisted.config import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    checkSpriteName,
    checkToken,
    parseAPIURL,
    proxyPath,
)
from sprites_twisted.endpoint import apiTransportEndpoint
from sprites_twisted.errors import (
    APIUnreachableError,
    SpriteAuthError,
    SpriteNotFoundError,
    UpgradeRefusedError,
)
from sprites_twisted.refusal import refusalError

__all__ = ["checkSprite", "isRefusal", "spritePath"]

#: The most of a response body that is read (an information object is small).
MAX_BODY = 64 * 1024


def spritePath(spriteName: str) -> str:
    """
    ``/v1/sprites/{name}``, the name percent-encoded as one path segment
    exactly as in :func:`sprites_twisted.config.proxyPath`.
    """
    return proxyPath(spriteName)[: -len("/proxy")]


def isRefusal(failure: Failure) -> bool:
    """
    Does C{failure} (from L{checkSprite}) mean the token or the name is
    bad, so that forwarding cannot work?  Anything else (rate limits,
    server trouble, an unreachable API) may pass, and callers start anyway.
    """
    return failure.check(SpriteAuthError, SpriteNotFoundError) is not None


@implementer(IAgentEndpointFactory)
class _OneEndpoint:
    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        return self._endpoint


class _Body(Protocol):
    """
    Collects at most L{MAX_BODY} bytes of a response body.
    """

    def __init__(self, done: Deferred[bytes]) -> None:
        self.done = done
        self.data = b""

    def dataReceived(self, data: bytes) -> None:
        if len(self.data) < MAX_BODY:
            self.data += data[: MAX_BODY - len(self.data)]

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done.callback(self.data)


def _readBody(response: IResponse) -> Deferred[bytes]:
    done: Deferred[bytes] = Deferred()
    response.deliverBody(_Body(done))
    return done


def _refusal(status: int, headers: Headers, body: bytes) -> UpgradeRefusedError:
    """
    The typed error for an answer other than 200, read the way a refused
    tunnel upgrade is (L{sprites_twisted.refusal.refusalError}).
    """
    fields = {
        name.decode("latin-1").lower(): values[-1].decode("latin-1")
        for name, values in headers.getAllRawHeaders()
        if values
    }
    # The agent already undid any transfer encoding.
    fields.pop("transfer-encoding", None)
    return refusalError(status, fields, body)


def checkSprite(
    reactor: Any,
    spriteName: str,
    *,
    token: str,
    apiURL: str,
    trustRoot: Any = None,
    allowInsecure: bool = False,
    timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    transportEndpoint: IStreamClientEndpoint | None = None,
    userAgent: str | None = None,
) -> Deferred[dict[str, Any]]:
    """
    Ask the API about C{spriteName}.

    :param transportEndpoint: connect through this endpoint instead of one
        made from C{apiURL} (tests, custom transports).
    :returns: a Deferred that fires with the sprite's information (the
        decoded JSON object; C{{}} if the body is not one), or fails with
        L{SpriteAuthError} (401/403), L{SpriteNotFoundError} (404),
        L{RateLimitedError} (429), L{SpriteServerError} (5xx), another
        L{UpgradeRefusedError}, or L{APIUnreachableError} when the API
        cannot be reached or does not answer within C{timeout} seconds.
        L{isRefusal} tells the first two from the rest.  The token is
        sent only in the ``Authorization`` header and appears in no error.
    """
    try:
        from sprites_twisted import __version__

        checkSpriteName(spriteName)
        api = parseAPIURL(apiURL, allowInsecure=allowInsecure)
        bearer = checkToken(token)
        if transportEndpoint is None:
            transportEndpoint = apiTransportEndpoint(reactor, api, trustRoot, timeout)
        scheme = "https" if api.secure else "http"
        url = api.webSocketURL(spritePath(spriteName)).split("://", 1)[1]
        headers = Headers(
            {
                b"Authorization": [f"Bearer {bearer}".encode("ascii")],
                b"User-Agent": [(userAgent or f"sprites-twisted/{__version__}").encode("ascii")],
                b"Accept": [b"application/json"],
            }
        )
        agent = Agent.usingEndpointFactory(reactor, _OneEndpoint(transportEndpoint))
        requested = agent.request(b"GET", f"{scheme}://{url}".encode("ascii"), headers)
    except BaseException:
        return defer.fail()

    async def answer() -> dict[str, Any]:
        response = await requested
        body = await _readBody(response)
        if response.code != 200:
            raise _refusal(response.code, response.headers, body)
        try:
            value = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    result = Deferred.fromCoroutine(answer())

    def unreachable(failure: Failure) -> Failure:
        if failure.check(UpgradeRefusedError, APIUnreachableError, CancelledError):
            return failure
        if failure.check(ConnectError):
            reason = failure.getErrorMessage()
        else:
            reason = f"the request failed: {failure.getErrorMessage()}"
        return Failure(APIUnreachableError(api.describe(), reason))

    result.addErrback(unreachable)
    if timeout:

        def timedOut(value: object, _timeout: float) -> Failure:
            return Failure(APIUnreachableError(api.describe(), f"no answer within {timeout:g} s"))

        result.addTimeout(timeout, reactor, onTimeoutCancel=timedOut)
    return result
