"""
Tests for L{sprites_twisted.check}: the sprite-information request against
a small C{twisted.web} resource on 127.0.0.1 standing in for the API.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor as _globalReactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from sprites_twisted.check import checkSprite, isRefusal, spritePath
from sprites_twisted.client import SpritesClient
from sprites_twisted.errors import (
    APIUnreachableError,
    RateLimitedError,
    SpriteAuthError,
    SpriteNotFoundError,
    SpriteServerError,
)
from sprites_twisted.testing import TEST_TOKEN

reactor: Any = _globalReactor


class FakeAPI(Resource):
    """
    Answers ``GET /v1/sprites/{name}`` as PROTOCOL.md says, for the names
    in C{sprites}; records each request's path and headers.
    """

    isLeaf = True

    def __init__(
        self, sprites: set[str], status: int | None = None, token: str = TEST_TOKEN
    ) -> None:
        super().__init__()
        self.token = token
        self.sprites = sprites
        self.status = status
        self.requests: list[tuple[bytes, dict[bytes, bytes]]] = []

    def render_GET(self, request: Request) -> bytes:
        headers = {k.lower(): v[0] for k, v in request.requestHeaders.getAllRawHeaders()}
        self.requests.append((request.uri, headers))
        request.setHeader(b"content-type", b"application/json")
        if self.status is not None:
            request.setResponseCode(self.status)
            if self.status == 429:
                request.setHeader(b"retry-after", b"7")
            return json.dumps({"error": "busy", "message": "try later"}).encode()
        if headers.get(b"authorization") != f"Bearer {self.token}".encode():
            request.setResponseCode(401)
            return json.dumps({"error": "unauthorized", "message": "bad token"}).encode()
        name = request.uri.decode().rsplit("/", 1)[-1]
        if request.uri != f"/v1/sprites/{name}".encode() or name not in self.sprites:
            request.setResponseCode(404)
            return json.dumps({"error": "not_found", "message": "sprite not found"}).encode()
        return json.dumps({"id": "s-1", "name": name, "status": "warm"}).encode()


class CheckTests(TestCase):
    """
    L{checkSprite} over real loopback HTTP.
    """

    timeout = 15

    async def serve(self, api: FakeAPI) -> str:
        site = Site(api)
        site.noisy = False
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    async def test_found(self) -> None:
        """
        A known sprite: the Deferred fires with its information; the
        request carried the bearer token and our User-Agent.
        """
        api = FakeAPI({"alpha"})
        url = await self.serve(api)
        info = await checkSprite(reactor, "alpha", token=TEST_TOKEN, apiURL=url)
        self.assertEqual(info["name"], "alpha")
        self.assertEqual(info["status"], "warm")
        [(path, headers)] = api.requests
        self.assertEqual(path, b"/v1/sprites/alpha")
        self.assertTrue(headers[b"user-agent"].startswith(b"sprites-twisted/"))

    async def test_badToken(self) -> None:
        """
        401: SpriteAuthError, a refusal; the token is not in its message.
        """
        url = await self.serve(FakeAPI({"alpha"}))
        d = checkSprite(reactor, "alpha", token="wrong-token-123", apiURL=url)
        error = await self.assertFailure(d, SpriteAuthError)
        self.assertEqual(error.status, 401)
        self.assertNotIn("wrong-token-123", str(error))

    async def test_unknownSprite(self) -> None:
        """
        404: SpriteNotFoundError, a refusal.
        """
        url = await self.serve(FakeAPI({"alpha"}))
        d = checkSprite(reactor, "beta", token=TEST_TOKEN, apiURL=url)
        error = await self.assertFailure(d, SpriteNotFoundError)
        self.assertEqual(error.serverMessage, "sprite not found")

    async def test_nameIsOneSegment(self) -> None:
        """
        A name holding ``/`` or ``..`` stays one encoded path segment.
        """
        api = FakeAPI(set())
        url = await self.serve(api)
        d = checkSprite(reactor, "../x/y", token=TEST_TOKEN, apiURL=url)
        await self.assertFailure(d, SpriteNotFoundError)
        self.assertEqual(api.requests[0][0], b"/v1/sprites/..%2Fx%2Fy")
        self.assertEqual(spritePath(".."), "/v1/sprites/%2E%2E")

    async def test_rateLimited(self) -> None:
        """
        429: RateLimitedError with Retry-After; not a refusal.
        """
        url = await self.serve(FakeAPI({"alpha"}, status=429))
        d = checkSprite(reactor, "alpha", token=TEST_TOKEN, apiURL=url)
        error = await self.assertFailure(d, RateLimitedError)
        self.assertEqual(error.retryAfter, 7)

    async def test_serverError(self) -> None:
        """
        503: SpriteServerError.
        """
        url = await self.serve(FakeAPI({"alpha"}, status=503))
        d = checkSprite(reactor, "alpha", token=TEST_TOKEN, apiURL=url)
        await self.assertFailure(d, SpriteServerError)

    async def test_unreachable(self) -> None:
        """
        Nothing listening: APIUnreachableError naming the address.
        """
        # A port that was just closed.
        listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Site(FakeAPI(set()))
        )
        port = listening.getHost().port
        await listening.stopListening()
        d = checkSprite(reactor, "alpha", token=TEST_TOKEN, apiURL=f"http://127.0.0.1:{port}")
        error = await self.assertFailure(d, APIUnreachableError)
        self.assertIn(f"127.0.0.1:{port}", str(error))

    async def test_client(self) -> None:
        """
        SpritesClient.checkSprite and Sprite.check use the client's token
        and URL.
        """
        url = await self.serve(FakeAPI({"alpha"}))
        client = SpritesClient(reactor, TEST_TOKEN, url)
        self.assertEqual((await client.checkSprite("alpha"))["id"], "s-1")
        await self.assertFailure(client.sprite("nope").check(), SpriteNotFoundError)


class CheckUnitTests(SynchronousTestCase):
    """
    L{checkSprite} and L{isRefusal} without the network.
    """

    def test_timeout(self) -> None:
        """
        No answer within the timeout: APIUnreachableError saying so.
        """
        clock = MemoryReactorClock()
        d = checkSprite(clock, "alpha", token=TEST_TOKEN, apiURL="http://127.0.0.1:8900", timeout=3)
        self.assertNoResult(d)
        clock.advance(3)
        error = self.failureResultOf(d, APIUnreachableError).value
        self.assertIn("no answer within 3 s", str(error))

    def test_badInput(self) -> None:
        """
        A bad URL fails the Deferred at once.
        """
        from sprites_twisted.errors import ConfigurationError

        d = checkSprite(MemoryReactorClock(), "a", token=TEST_TOKEN, apiURL="ftp://x")
        self.failureResultOf(d, ConfigurationError)

    def test_isRefusal(self) -> None:
        """
        Only a bad token or an unknown name are refusals.
        """
        from twisted.python.failure import Failure

        self.assertTrue(isRefusal(Failure(SpriteAuthError(403))))
        self.assertTrue(isRefusal(Failure(SpriteNotFoundError(404))))
        self.assertFalse(isRefusal(Failure(RateLimitedError(429))))
        self.assertFalse(isRefusal(Failure(APIUnreachableError("h:1", "x"))))
