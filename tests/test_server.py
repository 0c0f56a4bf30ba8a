"""
Tests for L{sprites_twisted.server}: routing, authentication, JSON errors
and the target policy, over in-memory HTTP.
"""

from __future__ import annotations

import json

from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase

from sprites_twisted.server import TargetPolicy, parseProxyPath
from sprites_twisted.testing import TEST_TOKEN, MemorySprite


class RawHTTP(Protocol):
    """
    Sends one raw request and collects the raw response.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.response = b""

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.response += data


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
