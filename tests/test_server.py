"""
Tests for L{sprites_twisted.server}: routing, authentication, JSON errors
and the target policy, over in-memory HTTP.
"""

from __future__ import annotations

import json

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from sprites_twisted.server import (
    DEFAULT_REQUEST_TIMEOUT,
    MAX_REQUEST_HEADER,
    TargetPolicy,
    parseProxyPath,
)
from sprites_twisted.testing import TEST_TOKEN, MemorySprite


class RawHTTP(Protocol):
    """
    Sends one raw request and collects the raw response.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.response = b""
        self.closed = False

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.response += data

    def connectionLost(self, reason: object = None) -> None:
        self.closed = True


def send(sprite: MemorySprite, raw: bytes) -> RawHTTP:
    """
    Send C{raw} bytes to the server; the protocol collects the answer.
    """
    client = RawHTTP(raw)
    sprite.apiEndpoint.connect(Factory.forProtocol(lambda: client))
    sprite.flush()
    return client


def request(
    sprite: MemorySprite, path: bytes, headers: dict[bytes, bytes]
) -> tuple[int, dict[bytes, bytes], bytes]:
    lines = [b"GET " + path + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [k + b": " + v for k, v in headers.items()]
    raw = RawHTTP(b"\r\n".join(lines) + b"\r\n\r\n")
    from twisted.internet.protocol import Factory

    sprite.apiEndpoint.connect(Factory.forProtocol(lambda: raw))
    sprite.flush()
    head, _, body = raw.response.partition(b"\r\n\r\n")
    statusLine, *headerLines = head.split(b"\r\n")
    parsed = {}
    for line in headerLines:
        k, _, v = line.partition(b":")
        parsed[k.strip().lower()] = v.strip()
    return int(statusLine.split()[1]), parsed, body


UPGRADE = {
    b"Upgrade": b"websocket",
    b"Connection": b"Upgrade",
    b"Sec-WebSocket-Key": b"dGhlIHNhbXBsZSBub25jZQ==",
    b"Sec-WebSocket-Version": b"13",
}


class RoutingTests(SynchronousTestCase):
    """
    Everything but an authenticated upgrade at the proxy path is refused
    with a JSON error.
    """

    def setUp(self) -> None:
        self.sprite = MemorySprite(sprites=["demo", "a/b"])
        self.auth = {b"Authorization": b"Bearer " + TEST_TOKEN.encode()}

    def test_otherPathsNotFound(self) -> None:
        """
        /control, the root and anything else are 404 with a JSON body.
        """
        for path in [
            b"/",
            b"/v1/sprites/demo/control",
            b"/v1/sprites/demo/proxy/x",
            b"/v1/sprites//proxy",
        ]:
            status, headers, body = request(self.sprite, path, {**self.auth, **UPGRADE})
            self.assertEqual(status, 404, path)
            self.assertEqual(headers[b"content-type"], b"application/json")
            self.assertEqual(json.loads(body)["error"], "not_found")

    def test_authRequired(self) -> None:
        """
        A missing, wrong or malformed token is 401 and the body does not
        echo it.
        """
        for auth in [
            {},
            {b"Authorization": b"Bearer nope"},
            {b"Authorization": b"Basic " + TEST_TOKEN.encode()},
            {b"Authorization": TEST_TOKEN.encode()},
        ]:
            status, headers, body = request(
                self.sprite, b"/v1/sprites/demo/proxy", {**auth, **UPGRADE}
            )
            self.assertEqual(status, 401)
            self.assertEqual(headers[b"www-authenticate"], b'Bearer realm="sprites"')
            self.assertNotIn(b"nope", body)
            self.assertNotIn(TEST_TOKEN.encode(), body)

    def test_authBeforeSpriteExistence(self) -> None:
        """
        Without a valid token an unknown sprite is 401, not 404: no probing
        for names.
        """
        status, _, _ = request(self.sprite, b"/v1/sprites/ghost/proxy", UPGRADE)
        self.assertEqual(status, 401)

    def test_unknownSprite(self) -> None:
        """
        A name outside the served set is 404 naming it.
        """
        status, _, body = request(self.sprite, b"/v1/sprites/ghost/proxy", {**self.auth, **UPGRADE})
        self.assertEqual(status, 404)
        self.assertIn("ghost", json.loads(body)["message"])

    def test_encodedNameDecoded(self) -> None:
        """
        A percent-encoded name is one segment, decoded.
        """
        status, _, _ = request(self.sprite, b"/v1/sprites/a%2Fb/proxy", {**self.auth, **UPGRADE})
        self.assertEqual(status, 101)

    def test_notAnUpgrade(self) -> None:
        """
        A plain GET on the proxy path is 400.
        """
        status, _, body = request(self.sprite, b"/v1/sprites/demo/proxy", self.auth)
        self.assertEqual(status, 400)
        self.assertIn("WebSocket", json.loads(body)["message"])

    def test_tooManyTunnels(self) -> None:
        """
        Over the limit: 429 with Retry-After and retry_after_seconds.
        """
        self.sprite.server.maxTunnels = 0
        status, headers, body = request(
            self.sprite, b"/v1/sprites/demo/proxy", {**self.auth, **UPGRADE}
        )
        self.assertEqual(status, 429)
        self.assertEqual(headers[b"retry-after"], b"1")
        self.assertEqual(json.loads(body)["retry_after_seconds"], 1)


class ResponseTests(SynchronousTestCase):
    """
    Refusals are complete HTTP/1.1 responses, limited in size and time,
    and logged in one line without headers.
    """

    def setUp(self) -> None:
        self.sprite = MemorySprite(sprites=["demo"])
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def test_responseShape(self) -> None:
        """
        A refusal has a status line, a JSON content type, the body's length
        and C{Connection: close}, and the server closes the connection.
        """
        client = send(self.sprite, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = client.response.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.assertEqual(lines[0], b"HTTP/1.1 404 Not Found")
        self.assertIn(b"Content-Type: application/json", lines)
        self.assertIn(b"Content-Length: %d" % len(body), lines)
        self.assertIn(b"Connection: close", lines)
        self.assertEqual(json.loads(body)["error"], "not_found")
        self.assertTrue(client.closed)

    def test_queryIgnoredInRouting(self) -> None:
        """
        A query string does not change the route.
        """
        status, _, _ = request(
            self.sprite,
            b"/v1/sprites/demo/proxy?x=1",
            {b"Authorization": b"Bearer " + TEST_TOKEN.encode(), **UPGRADE},
        )
        self.assertEqual(status, 101)

    def test_otherMethodAfterRouting(self) -> None:
        """
        Past routing and auth, Autobahn validates the upgrade itself: a POST
        is refused (405) and no tunnel is counted.
        """
        lines = [b"POST /v1/sprites/demo/proxy HTTP/1.1", b"Host: x"]
        lines += [k + b": " + v for k, v in UPGRADE.items()]
        lines.append(b"Authorization: Bearer " + TEST_TOKEN.encode())
        client = send(self.sprite, b"\r\n".join(lines) + b"\r\n\r\n")
        self.assertTrue(client.response.startswith(b"HTTP/1.1 405 "))
        self.assertTrue(client.closed)
        self.assertEqual(self.sprite.server.tunnels, set())

    def test_malformedRequestLine(self) -> None:
        """
        A request line that is not three words is 400.
        """
        client = send(self.sprite, b"HELLO\r\n\r\n")
        self.assertTrue(client.response.startswith(b"HTTP/1.1 400 Bad Request\r\n"))
        self.assertTrue(client.closed)

    def test_headerTooLarge(self) -> None:
        """
        A request head over the limit is answered 431 without waiting for
        its end.
        """
        client = send(
            self.sprite,
            b"GET /v1/sprites/demo/proxy HTTP/1.1\r\nX-Pad: " + b"a" * MAX_REQUEST_HEADER,
        )
        self.assertTrue(
            client.response.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        )
        self.assertTrue(client.closed)

    def test_requestTimeout(self) -> None:
        """
        A request head still incomplete after the request timeout is
        answered 408, and not before.
        """
        client = send(self.sprite, b"GET /v1/sprites/demo/proxy HTTP/1.1\r\n")
        self.sprite.reactor.advance(DEFAULT_REQUEST_TIMEOUT - 0.1)
        self.sprite.flush()
        self.assertEqual(client.response, b"")
        self.sprite.reactor.advance(0.1)
        self.sprite.flush()
        self.assertTrue(client.response.startswith(b"HTTP/1.1 408 Request Timeout\r\n"))
        self.assertTrue(client.closed)

    def test_upgradeCancelsRequestTimeout(self) -> None:
        """
        Once the upgrade succeeded, the request timeout no longer applies
        (the init timeout does).
        """
        status, _, _ = request(
            self.sprite,
            b"/v1/sprites/demo/proxy",
            {b"Authorization": b"Bearer " + TEST_TOKEN.encode(), **UPGRADE},
        )
        self.assertEqual(status, 101)
        self.assertEqual(len(self.sprite.reactor.getDelayedCalls()), 1)

    def test_refusalsLogged(self) -> None:
        """
        Each refused request is logged once with its method, path (no
        query) and status, never with headers or the token.
        """
        request(self.sprite, b"/v1/sprites/demo/control?token=" + TEST_TOKEN.encode(), {})
        request(
            self.sprite,
            b"/v1/sprites/demo/proxy",
            {b"Authorization": b"Bearer wrong-" + TEST_TOKEN.encode(), **UPGRADE},
        )
        lines = [formatEvent(e) for e in self.events if "refused" in e.get("log_format", "")]
        self.assertEqual(
            lines,
            [
                "refused GET '/v1/sprites/demo/control': HTTP 404 (not_found)",
                "refused GET '/v1/sprites/demo/proxy': HTTP 401 (unauthorized)",
            ],
        )
        for event in self.events:
            self.assertNotIn(TEST_TOKEN, formatEvent(event))


class PathTests(SynchronousTestCase):
    """
    L{parseProxyPath}.
    """

    def test_parse(self) -> None:
        """
        Only /v1/sprites/NAME/proxy matches; NAME is percent-decoded.
        """
        self.assertEqual(parseProxyPath(b"/v1/sprites/demo/proxy"), "demo")
        self.assertEqual(parseProxyPath(b"/v1/sprites/a%2Fb/proxy"), "a/b")
        self.assertEqual(parseProxyPath(b"/v1/sprites/%2E%2E/proxy"), "..")
        for path in [
            b"/v1/sprites/demo",
            b"/v2/sprites/demo/proxy",
            b"/v1/sprites//proxy",
            b"/v1/sprites/a/b/proxy",
            b"/v1/sprites/%ff/proxy",
        ]:
            self.assertIsNone(parseProxyPath(path), path)


class TargetPolicyTests(SynchronousTestCase):
    """
    The server relays to loopback only, unless an allow list says more.
    """

    def test_loopbackOnlyByDefault(self) -> None:
        """
        localhost, 127/8 and ::1 are allowed; anything else is not.
        """
        policy = TargetPolicy()
        for host in ["localhost", "127.0.0.1", "127.9.9.9", "::1", "LOCALHOST"]:
            self.assertTrue(policy.allows(host), host)
        for host in [
            "10.0.0.1",
            "example.com",
            "0.0.0.0",
            "::",
            "169.254.169.254",
            "localhost.evil",
        ]:
            self.assertFalse(policy.allows(host), host)

    def test_allowList(self) -> None:
        """
        Names match exactly; networks by address.
        """
        policy = TargetPolicy(["db.internal", "10.1.0.0/16", "fd00::1"])
        self.assertTrue(policy.allows("DB.internal"))
        self.assertTrue(policy.allows("10.1.2.3"))
        self.assertTrue(policy.allows("fd00::1"))
        self.assertFalse(policy.allows("10.2.0.1"))
        self.assertFalse(policy.allows("x.db.internal"))

    def test_constantTimeCompare(self) -> None:
        """
        Authorization accepts exactly 'Bearer <token>' (scheme case-insensitive).
        """
        server = MemorySprite().server
        self.assertTrue(server.checkAuthorization(b"Bearer " + TEST_TOKEN.encode()))
        self.assertTrue(server.checkAuthorization(b"bearer " + TEST_TOKEN.encode()))
        self.assertFalse(server.checkAuthorization(b"Bearer " + TEST_TOKEN.encode() + b"x"))
        self.assertFalse(server.checkAuthorization(b""))
        self.assertFalse(server.checkAuthorization(None))
