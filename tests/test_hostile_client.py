"""
Hostile input to the local sprite server, in memory on a Clock
(L{sprites_twisted.testing.MemorySprite}): bad tokens, bad inits, early
binary data, silence, forbidden targets, floods of tunnels and oversized
frames.  Each is refused without a crash, leaks nothing, holds no tunnel
open, and the server then serves a well-behaved client as before.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase

from sprites_twisted.server import DEFAULT_INIT_TIMEOUT
from sprites_twisted.testing import TEST_TOKEN, MemorySprite
from sprites_twisted.wire import MAX_INIT_SIZE
from tests import wsfake
from tests.helpers import Echo, LogCapture
from tests.test_server import UPGRADE, request


def maskedFrame(opcode: int, payload: bytes, length: int | None = None) -> bytes:
    """
    A client-to-server frame (masked, as RFC 6455 requires); C{length}
    overrides the declared payload length.
    """
    n = len(payload) if length is None else length
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawWebSocket(Protocol):
    """
    A hand-made WebSocket client that sends whatever a test tells it to and
    records the server's frames.
    """

    def __init__(self, token: str = TEST_TOKEN) -> None:
        self.token = token
        self.buffer = b""
        self.status: int | None = None
        self.frames: list[tuple[int, bytes]] = []
        self.lost = False

    def connectionMade(self) -> None:
        lines = [b"GET /v1/sprites/demo/proxy HTTP/1.1", b"Host: 127.0.0.1"]
        lines += [k + b": " + v for k, v in UPGRADE.items()]
        lines.append(b"Authorization: Bearer " + self.token.encode())
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.status is None:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            self.status = int(head.split()[1])
            self.buffer = rest
        if self.status == 101:
            frames, self.buffer = wsfake.parseClientFrames(self.buffer)
            self.frames += frames

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True

    def send(self, opcode: int, payload: bytes, length: int | None = None) -> None:
        self.transport.write(maskedFrame(opcode, payload, length))

    def replies(self) -> list[dict[str, Any]]:
        """
        The JSON text messages the server sent.
        """
        return [json.loads(p) for op, p in self.frames if op == 0x1]

    def closeCode(self) -> int | None:
        """
        The code of the server's close frame, if it sent one.
        """
        for op, payload in self.frames:
            if op == 0x8:
                return struct.unpack("!H", payload[:2])[0] if payload else None
        return None


class HostileClientTests(SynchronousTestCase):
    """
    The local sprite server refuses hostile clients and keeps serving.
    """

    def setUp(self) -> None:
        self.logs = LogCapture(self)
        self.sprite = MemorySprite(maxTunnels=3, maxFramePayloadSize=4096)
        self.sprite.addTarget(5432, Factory.forProtocol(Echo))

    def rawTunnel(self, token: str = TEST_TOKEN) -> RawWebSocket:
        """
        A raw client, upgraded (or refused).
        """
        client = RawWebSocket(token)
        self.sprite.apiEndpoint.connect(Factory.forProtocol(lambda: client))
        self.sprite.flush()
        return client

    def refusedWith(self, client: RawWebSocket, message: str) -> None:
        """
        Check that C{client}'s tunnel got an error reply containing
        C{message}, then a close, and that the connection is gone.
        """
        self.sprite.reactor.advance(self.sprite.server.closeTimeout)
        self.sprite.flush()
        replies = client.replies()
        self.assertEqual(len(replies), 1, replies)
        self.assertEqual(replies[0]["status"], "error")
        self.assertIn(message, replies[0]["message"])
        self.assertNotIn("connected", [r["status"] for r in replies])
        self.assertTrue(client.lost)

    def assertDropped(
        self, client: RawWebSocket, replies: int = 0, code: int | None = None
    ) -> None:
        """
        Check that the server closed C{client}'s connection (with close
        C{code} when given, else none or a 1002/1007/1009 one) without
        answering anything more, within its close timeout.
        """
        self.sprite.flush()
        self.sprite.reactor.advance(self.sprite.server.closeTimeout)
        self.sprite.flush()
        self.assertTrue(client.lost)
        if code is not None:
            self.assertEqual(client.closeCode(), code)
        else:
            self.assertIn(client.closeCode(), (None, 1002, 1007, 1009))
        self.assertEqual(len(client.replies()), replies)
        self.assertEqual(self.sprite.server.tunnels, set())

    def assertStillServing(self) -> None:
        """
        No tunnel is left open, a good client still gets bytes through, and
        nothing unexpected was logged.
        """
        self.sprite.reactor.advance(10)
        self.sprite.flush()
        self.assertEqual(self.sprite.server.tunnels, set())
        results: list[Any] = []
        received: list[bytes] = []

        class Client(Protocol):
            def dataReceived(self, data: bytes) -> None:
                received.append(data)

        d = self.sprite.client().proxySocket(
            "tcp", "demo", "localhost:5432", Factory.forProtocol(Client)
        )
        d.addBoth(results.append)
        self.sprite.flush()
        self.assertIsInstance(results[0], Client)
        results[0].transport.write(b"hello")
        self.sprite.flush()
        self.assertEqual(b"".join(received), b"hello")
        results[0].transport.loseConnection()
        self.sprite.reactor.advance(10)
        self.sprite.flush()
        self.assertEqual(self.logs.problems(), [])
        for text in self.logs.texts():
            self.assertNotIn(TEST_TOKEN, text)

    def sendInit(self, init: Any, raw: bool = False) -> RawWebSocket:
        """
        Upgrade, then send C{init} (JSON-encoded unless C{raw}).
        """
        client = self.rawTunnel()
        self.assertEqual(client.status, 101)
        client.send(0x1, init if raw else json.dumps(init).encode())
        self.sprite.flush()
        return client

    def test_badTokens(self) -> None:
        """
        Missing, malformed and wrong tokens get 401, and the response holds
        neither the server's token nor what was sent.
        """
        for header in (
            None,
            b"",
            b"Bearer",
            b"Bearer ",
            b"Basic " + TEST_TOKEN.encode(),
            b"Bearer wrong-token-value",
            b"Bearer " + TEST_TOKEN.encode() + b"x",
            b"Bearer " + TEST_TOKEN[:-1].encode(),
            b"bearer  " + b"A" * 10000,
        ):
            headers = dict(UPGRADE)
            if header is not None:
                headers[b"Authorization"] = header
            status, _, body = request(self.sprite, b"/v1/sprites/demo/proxy", headers)
            self.assertEqual(status, 401, header)
            self.assertNotIn(TEST_TOKEN.encode()[:8], body)
            if header:
                self.assertNotIn(header, body)
            self.assertEqual(json.loads(body)["error"], "unauthorized")
        self.assertStillServing()

    def test_malformedHeader(self) -> None:
        """
        A header value holding a NUL byte is a malformed request: 400 with
        a message naming the header (not the request line), and the
        response does not echo the value.
        """
        headers = {**UPGRADE, b"Authorization": b"Bearer " + TEST_TOKEN.encode() + b"\x00"}
        status, _, body = request(self.sprite, b"/v1/sprites/demo/proxy", headers)
        self.assertEqual(status, 400)
        reply = json.loads(body)
        self.assertEqual(reply["error"], "bad_request")
        self.assertIn("malformed header 'Authorization'", reply["message"])
        self.assertNotIn(TEST_TOKEN.encode()[:8], body)
        self.assertStillServing()

    def test_initNotJSON(self) -> None:
        """
        An init that is not JSON (or not UTF-8) is refused.
        """
        for payload in (b"hello", b"{'host': 'localhost'}", b"[" * 4000, b"\xff\xfe"):
            client = self.sendInit(payload, raw=True)
            if payload == b"\xff\xfe":
                # Not UTF-8: Autobahn drops the connection itself.
                self.assertDropped(client)
                continue
            self.refusedWith(client, "not JSON")
        self.assertStillServing()

    def test_initNotAnObject(self) -> None:
        """
        JSON that is not an object is refused.
        """
        for init in ([], ["localhost", 5432], "localhost:5432", 5432, None):
            self.refusedWith(self.sendInit(init), "not a JSON object")
        self.assertStillServing()

    def test_badPorts(self) -> None:
        """
        A port of the wrong type or out of range is refused.
        """
        for port, message in (
            ("5432", "not an integer"),
            (5432.0, "not an integer"),
            (True, "not an integer"),
            (None, "not an integer"),
            ([5432], "not an integer"),
            (0, "outside 1..65535"),
            (-1, "outside 1..65535"),
            (65536, "outside 1..65535"),
            (10**100, "outside 1..65535"),
        ):
            self.refusedWith(self.sendInit({"host": "localhost", "port": port}), message)
        self.refusedWith(self.sendInit({"host": "localhost"}), "missing")
        self.assertStillServing()

    def test_badHosts(self) -> None:
        """
        A host with control characters, spaces or URL syntax is refused.
        """
        for host in ("local\nhost", "localhost\x00", "\x1b[31m", "a b", "host/path", 5, "x" * 300):
            self.refusedWith(self.sendInit({"host": host, "port": 5432}), "init")
        self.assertStillServing()

    def test_binaryBeforeInit(self) -> None:
        """
        Binary data before the init is refused.
        """
        client = self.rawTunnel()
        client.send(0x2, b"\x00\x01 early")
        self.sprite.flush()
        self.refusedWith(client, "binary message before the init")
        self.assertStillServing()

    def test_hugeTextAfterInitIgnored(self) -> None:
        """
        Text messages of any size after the init (a 2 MiB frame, a message
        in many fragments) are ignored without being kept: the binary data
        around them reaches the target and the tunnel goes on.
        """
        client = self.sendInit({"host": "localhost", "port": 5432})
        self.assertEqual(client.replies()[0]["status"], "connected")
        client.send(0x2, b"be")
        client.send(0x1, b"x" * (2 * 1024 * 1024))
        client.send(0x2, b"fo")
        self.sprite.flush()
        echoed = [p for op, p in client.frames if op == 0x2]
        self.assertEqual(b"".join(echoed), b"befo")
        self.assertFalse(client.lost)
        self.assertEqual(len(self.sprite.server.tunnels), 1)
        client.transport.loseConnection()
        self.assertStillServing()

    def test_initTooLarge(self) -> None:
        """
        An init over the size limit drops the tunnel without being parsed.
        """
        init = json.dumps({"host": "localhost", "port": 5432, "pad": "x" * MAX_INIT_SIZE})
        client = self.sendInit(init.encode(), raw=True)
        self.refusedWith(client, f"init message larger than {MAX_INIT_SIZE} bytes")
        self.assertEqual(self.sprite.server.tunnels, set())
        self.assertStillServing()

    def test_noInit(self) -> None:
        """
        A client that sends nothing is refused when the init timeout passes,
        and not before.
        """
        client = self.rawTunnel()
        self.sprite.reactor.advance(DEFAULT_INIT_TIMEOUT - 0.1)
        self.sprite.flush()
        self.assertEqual(client.frames, [])
        self.sprite.reactor.advance(0.1)
        self.sprite.flush()
        self.refusedWith(client, f"no init message within {DEFAULT_INIT_TIMEOUT:g} s")
        self.assertStillServing()

    def test_targetNotAllowed(self) -> None:
        """
        Targets outside loopback are refused unless allow-listed.
        """
        for host in ("10.0.0.1", "169.254.169.254", "example.com", "0.0.0.0", "::"):
            client = self.sendInit({"host": host, "port": 5432})
            self.refusedWith(client, "is not allowed by this server")
        self.assertStillServing()

    def test_tooManyTunnels(self) -> None:
        """
        Over the tunnel limit the upgrade is answered 429 with Retry-After;
        once tunnels end, new ones are accepted again.
        """
        held = [self.rawTunnel() for _ in range(3)]
        self.assertEqual([c.status for c in held], [101, 101, 101])
        status, headers, body = request(
            self.sprite,
            b"/v1/sprites/demo/proxy",
            {**UPGRADE, b"Authorization": b"Bearer " + TEST_TOKEN.encode()},
        )
        self.assertEqual(status, 429)
        self.assertEqual(headers[b"retry-after"], b"1")
        self.assertEqual(json.loads(body)["retry_after_seconds"], 1)
        for client in held:
            client.transport.loseConnection()
        self.assertStillServing()

    def test_oversizedFrames(self) -> None:
        """
        A frame over the maximum size drops that tunnel, whether the payload
        came or only its header.
        """
        for payload, length in ((b"x" * 5000, None), (b"", 2**40)):
            client = self.sendInit({"host": "localhost", "port": 5432})
            self.assertEqual(client.replies()[0]["status"], "connected")
            client.send(0x2, payload, length)
            self.sprite.flush()
            self.assertDropped(client, replies=1, code=1009)
        self.assertStillServing()
