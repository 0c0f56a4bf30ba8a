"""
Tests for the tunnel (L{sprites_twisted.tunnel}) through
L{sprites_twisted.endpoint.SpriteProxyEndpoint}, in memory: against the
real local sprite server (L{MemorySprite}) and against scripted servers.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from sprites_twisted import __version__
from sprites_twisted.endpoint import SpriteProxyEndpoint
from sprites_twisted.errors import (
    APIUnreachableError,
    HandshakeError,
    RateLimitedError,
    SpriteAuthError,
    SpriteNotFoundError,
    SpriteServerError,
    TunnelClosedError,
    TunnelTimeoutError,
    UpgradeRefusedError,
)
from sprites_twisted.keepalive import Keepalive
from sprites_twisted.refusal import MAX_RESPONSE_HEADER
from sprites_twisted.testing import (
    TEST_API_URL,
    TEST_TOKEN,
    MemoryClientEndpoint,
    MemoryNetwork,
    MemorySprite,
)
from tests import wsfake
from tests.helpers import Echo


class Recorder(Protocol):
    """
    Records what arrives and how the connection ended.
    """

    def __init__(self) -> None:
        self.received = b""
        self.made = False
        self.lostReason: Failure | None = None

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lostReason = reason


class Sink(Protocol):
    """
    A target that records what it receives and can be told to send.
    """

    instances: list[Sink] = []

    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def connectionMade(self) -> None:
        Sink.instances.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True


class LocalServerTunnelTests(SynchronousTestCase):
    """
    Tunnels against the real local sprite server.
    """

    def setUp(self) -> None:
        self.sprite = MemorySprite()
        self.sprite.addTarget(5432, Factory.forProtocol(Echo))
        Sink.instances = []
        self.sprite.addTarget(6000, Factory.forProtocol(Sink), host="db")
        self.sprite.server.policy.names.add("db")

    def connect(self, port: int = 5432, host: str = "localhost", **kw: object) -> tuple:
        endpoint = self.sprite.client(**kw).endpoint("demo", port, host)
        d = endpoint.connect(Factory.forProtocol(Recorder))
        self.sprite.flush()
        return endpoint, d

    def test_relayBothWays(self) -> None:
        """
        After the handshake, bytes written reach the target and its answer
        comes back, in order.
        """
        _, d = self.connect()
        proto = self.successResultOf(d)
        self.assertTrue(proto.made)
        for chunk in [b"hello ", b"world", b"x" * 300000]:
            proto.transport.write(chunk)
        self.sprite.flush()
        self.assertEqual(proto.received, b"hello world" + b"x" * 300000)

    def test_initNamesTarget(self) -> None:
        """
        The init carries the requested host and port: the server connects
        to exactly that target.
        """
        _, d = self.connect(6000, "db")
        proto = self.successResultOf(d)
        proto.transport.write(b"ping")
        self.sprite.flush()
        self.assertEqual([s.received for s in Sink.instances], [b"ping"])

    def test_peerAddress(self) -> None:
        """
        The protocol's peer is the sprite address.
        """
        _, d = self.connect()
        peer = self.successResultOf(d).transport.getPeer()
        self.assertEqual((peer.spriteName, peer.host, peer.port), ("demo", "localhost", 5432))

    def test_cleanCloseByClient(self) -> None:
        """
        loseConnection closes the tunnel cleanly and the target sees it.
        """
        _, d = self.connect(6000, "db")
        proto = self.successResultOf(d)
        proto.transport.write(b"last words")
        proto.transport.loseConnection()
        self.sprite.flush()
        self.assertEqual(Sink.instances[0].received, b"last words")
        self.assertTrue(Sink.instances[0].lost)
        self.assertIsInstance(proto.lostReason.value, ConnectionDone)
        self.assertEqual(self.sprite.server.tunnels, set())

    def test_cleanCloseByTarget(self) -> None:
        """
        When the target closes, what it sent arrives, then ConnectionDone.
        """
        _, d = self.connect(6000, "db")
        proto = self.successResultOf(d)
        self.sprite.flush()
        sink = Sink.instances[0]
        sink.transport.write(b"bye")
        sink.transport.loseConnection()
        self.sprite.flush()
        self.assertEqual(proto.received, b"bye")
        self.assertIsInstance(proto.lostReason.value, ConnectionDone)

    def test_badToken(self) -> None:
        """
        A wrong token fails with SpriteAuthError carrying status and
        message.
        """
        _, d = self.connect(token="wrong-token")
        error = self.failureResultOf(d, SpriteAuthError).value
        self.assertEqual(error.status, 401)
        self.assertIn("invalid bearer token", str(error))
        self.assertNotIn("wrong-token", str(error))

    def test_unknownSprite(self) -> None:
        """
        A sprite the server does not serve fails with SpriteNotFoundError.
        """
        self.sprite.server.sprites = frozenset({"other"})
        _, d = self.connect()
        error = self.failureResultOf(d, SpriteNotFoundError).value
        self.assertEqual(error.status, 404)
        self.assertIn("demo", str(error))

    def test_tooManyTunnels(self) -> None:
        """
        Over the server's limit the tunnel fails with RateLimitedError and
        the Retry-After value.
        """
        self.sprite.server.maxTunnels = 1
        _, first = self.connect()
        self.successResultOf(first)
        _, d = self.connect()
        error = self.failureResultOf(d, RateLimitedError).value
        self.assertEqual(error.retryAfter, 1.0)
        self.assertIn("retry after 1 s", str(error))

    def test_targetRefused(self) -> None:
        """
        A target that refuses gives HandshakeError with the server's reason.
        """
        _, d = self.connect(1)
        error = self.failureResultOf(d, HandshakeError).value
        self.assertEqual(error.status, "error")
        self.assertIn("cannot connect to localhost:1", str(error))

    def test_targetNotAllowed(self) -> None:
        """
        The server refuses non-loopback targets that are not allow-listed.
        """
        _, d = self.connect(80, "example.com")
        error = self.failureResultOf(d, HandshakeError).value
        self.assertIn("not allowed", str(error))

    def test_apiUnreachable(self) -> None:
        """
        A refused TCP connection to the API is APIUnreachableError naming
        the address.
        """
        network = MemoryNetwork(self.sprite.reactor)
        endpoint = SpriteProxyEndpoint(
            self.sprite.reactor,
            "demo",
            5432,
            token=TEST_TOKEN,
            apiURL=TEST_API_URL,
            transportEndpoint=MemoryClientEndpoint(network, None),
        )
        error = self.failureResultOf(
            endpoint.connect(Factory.forProtocol(Recorder)), APIUnreachableError
        ).value
        self.assertIn("127.0.0.1:8900", str(error))


class ScriptedServerTests(SynchronousTestCase):
    """
    The client against servers scripted byte by byte.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.network = MemoryNetwork(self.reactor)

    def connect(self, factory: wsfake.ScriptedServerFactory, name: str = "demo", **kw: object):
        endpoint = SpriteProxyEndpoint(
            self.reactor,
            name,
            5432,
            token=TEST_TOKEN,
            apiURL=TEST_API_URL,
            transportEndpoint=MemoryClientEndpoint(self.network, factory),
            **kw,
        )
        d = endpoint.connect(Factory.forProtocol(Recorder))
        self.network.flush()
        return d

    def test_requestShape(self) -> None:
        """
        The upgrade goes to the percent-encoded proxy path with the bearer
        token and our User-Agent; the init is one text message.
        """
        factory = wsfake.acceptThenReply(wsfake.text(b'{"status": "connected"}'))
        d = self.connect(factory, name="a/b?..")
        self.successResultOf(d)
        server = factory.servers[0]
        self.assertTrue(server.request.startswith(b"GET /v1/sprites/a%2Fb%3F../proxy HTTP/1.1\r\n"))
        self.assertEqual(server.header(b"authorization"), b"Bearer " + TEST_TOKEN.encode())
        self.assertEqual(server.header(b"user-agent"), f"sprites-twisted/{__version__}".encode())
        self.assertEqual(server.frames[0][0], 0x1)
        self.assertEqual(json.loads(server.frames[0][1]), {"host": "localhost", "port": 5432})

    def test_payloadIsBinaryAndMasked(self) -> None:
        """
        Data goes out as binary frames (masked, as clients must).
        """
        factory = wsfake.acceptThenReply(wsfake.text(b'{"status": "connected"}'))
        proto = self.successResultOf(self.connect(factory))
        proto.transport.write(b"data")
        self.network.flush()
        self.assertEqual(factory.servers[0].frames[-1], (0x2, b"data"))

    def test_textDuringRelayIgnored(self) -> None:
        """
        Text frames after the handshake are not payload.
        """
        factory = wsfake.acceptThenReply(
            wsfake.text(b'{"status": "connected"}')
            + wsfake.binary(b"a")
            + wsfake.text(b"noise")
            + wsfake.binary(b"b")
        )
        proto = self.successResultOf(self.connect(factory))
        self.assertEqual(proto.received, b"ab")

    def test_dataInSameReadAsReply(self) -> None:
        """
        Data arriving right behind the reply reaches the protocol.
        """
        factory = wsfake.acceptThenReply(
            wsfake.text(b'{"status": "connected"}') + wsfake.binary(b"early")
        )
        proto = self.successResultOf(self.connect(factory))
        self.assertEqual(proto.received, b"early")

    def test_refusedStatus(self) -> None:
        """
        A status other than connected fails with the server's message.
        """
        factory = wsfake.acceptThenReply(
            wsfake.text(b'{"status": "denied", "message": "port closed"}')
        )
        error = self.failureResultOf(self.connect(factory), HandshakeError).value
        self.assertEqual((error.status, error.serverMessage), ("denied", "port closed"))

    def test_replyNotJSON(self) -> None:
        """
        A reply that is not JSON fails with HandshakeError.
        """
        factory = wsfake.acceptThenReply(wsfake.text(b"hello there"))
        error = self.failureResultOf(self.connect(factory), HandshakeError).value
        self.assertIn("not JSON", str(error))

    def test_binaryBeforeReply(self) -> None:
        """
        Binary data before the reply fails the handshake.
        """
        factory = wsfake.acceptThenReply(wsfake.binary(b"x"))
        error = self.failureResultOf(self.connect(factory), HandshakeError).value
        self.assertIn("before the handshake reply", str(error))

    def test_closeBeforeReply(self) -> None:
        """
        A close before the reply fails with TunnelClosedError and the code.
        """
        factory = wsfake.acceptThenReply(wsfake.close(4000, b"nope"))
        error = self.failureResultOf(self.connect(factory), TunnelClosedError).value
        self.assertEqual(error.code, 4000)

    def test_noReplyTimesOut(self) -> None:
        """
        No reply within the timeout fails with TunnelTimeoutError and drops
        the connection.
        """
        factory = wsfake.acceptThenReply(b"")
        d = self.connect(factory, timeout=5)
        self.assertNoResult(d)
        self.reactor.advance(5)
        self.network.flush()
        error = self.failureResultOf(d, TunnelTimeoutError).value
        self.assertEqual(error.timeout, 5)
        self.assertTrue(factory.servers[0].lost)

    def test_cancel(self) -> None:
        """
        Cancelling a pending connect aborts the attempt.
        """
        factory = wsfake.acceptThenReply(b"")
        d = self.connect(factory)
        d.cancel()
        self.network.flush()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(factory.servers[0].lost)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_refusals(self) -> None:
        """
        HTTP refusals map to typed errors with status, JSON message and
        Retry-After; a non-JSON body becomes the (truncated) message.
        """

        def response(status: bytes, body: bytes, extra: bytes = b"") -> bytes:
            return (
                b"HTTP/1.1 "
                + status
                + b"\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n"
                + extra
                + b"\r\n"
                + body
            )

        cases = [
            (
                response(b"401 Unauthorized", b'{"error": "unauthorized", "message": "bad token"}'),
                SpriteAuthError,
                "bad token",
            ),
            (response(b"403 Forbidden", b'{"message": "no access"}'), SpriteAuthError, "no access"),
            (
                response(b"404 Not Found", b'{"error": "not_found"}'),
                SpriteNotFoundError,
                "not_found",
            ),
            (
                response(
                    b"429 Too Many",
                    b'{"message": "slow", "retry_after_seconds": 7}',
                    b"Retry-After: 9\r\n",
                ),
                RateLimitedError,
                "retry after 9 s",
            ),
            (
                response(b"503 Unavailable", b"<html>down for maintenance</html>"),
                SpriteServerError,
                "down for maintenance",
            ),
            (
                response(b"302 Found", b"", b"Location: http://x/\r\n"),
                UpgradeRefusedError,
                "HTTP 302",
            ),
            (response(b"500 Oops", b"A" * 100000), SpriteServerError, "AAAA..."),
        ]
        for raw, errorType, text in cases:
            d = self.connect(wsfake.respondHTTP(raw))
            error = self.failureResultOf(d, errorType).value
            self.assertIn(text, str(error))
            self.assertLess(len(str(error)), 500)

    def test_upgradeAnswers(self) -> None:
        """
        A 101 is still validated by Autobahn (a wrong accept key fails the
        tunnel), a 101 head over the size limit fails, and a 101 that
        arrives in pieces upgrades.
        """
        wrong = wsfake.respondHTTP(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: d3Jvbmc=\r\n\r\n"
        )
        error = self.failureResultOf(self.connect(wrong), TunnelClosedError).value
        self.assertIn("Sec-WebSocket-Accept bogus value", str(error))

        huge = wsfake.respondHTTP(
            b"HTTP/1.1 101 Switching Protocols\r\nX-Pad: "
            + b"a" * MAX_RESPONSE_HEADER
            + b"\r\n\r\n"
        )
        error = self.failureResultOf(self.connect(huge), TunnelClosedError).value
        self.assertIn("HTTP response header too large", str(error))

        def inPieces(server: wsfake.ScriptedServer, request: bytes) -> None:
            real = server.transport
            chunks: list[bytes] = []
            server.transport = type("Chunks", (), {"write": chunks.append})()
            server.accept()
            server.transport = real
            head = b"".join(chunks)
            for i in range(0, len(head), 7):
                real.write(head[i : i + 7])
                self.network.flush()

        def onFrame(server: wsfake.ScriptedServer, opcode: int, payload: bytes) -> None:
            if opcode == 0x1:
                server.transport.write(wsfake.text(b'{"status": "connected"}'))

        pieces = wsfake.ScriptedServerFactory(inPieces, onFrame)
        self.successResultOf(self.connect(pieces))

    def test_refusalWithoutLength(self) -> None:
        """
        A refusal whose body ends with the connection still gives its body.
        """
        factory = wsfake.respondHTTP(b"HTTP/1.1 404 Not Found\r\n\r\nno such sprite")
        endpoint = SpriteProxyEndpoint(
            self.reactor,
            "demo",
            1,
            token=TEST_TOKEN,
            apiURL=TEST_API_URL,
            transportEndpoint=MemoryClientEndpoint(self.network, factory),
        )
        d = endpoint.connect(Factory.forProtocol(Recorder))
        self.network.flush()
        self.assertNoResult(d)
        factory.servers[0].transport.loseConnection()
        self.network.flush()
        error = self.failureResultOf(d, SpriteNotFoundError).value
        self.assertIn("no such sprite", str(error))

    def test_abnormalCloseAfterHandshake(self) -> None:
        """
        An unclean close after the handshake reaches the protocol as
        ConnectionLost; a normal close as ConnectionDone.
        """
        for closing, expected in [
            (wsfake.close(1000), ConnectionDone),
            (wsfake.close(1001), ConnectionDone),
            (wsfake.close(4001, b"odd"), ConnectionLost),
        ]:
            factory = wsfake.acceptThenReply(wsfake.text(b'{"status": "connected"}') + closing)
            proto = self.successResultOf(self.connect(factory))
            factory.servers[0].transport.loseConnection()
            self.network.flush()
            self.assertIsInstance(proto.lostReason.value, expected)

    def test_droppedMidStream(self) -> None:
        """
        A dropped TCP connection mid-stream is ConnectionLost.
        """
        factory = wsfake.acceptThenReply(wsfake.text(b'{"status": "connected"}'))
        proto = self.successResultOf(self.connect(factory))
        factory.servers[0].transport.loseConnection()
        self.network.flush()
        self.assertIsInstance(proto.lostReason.value, ConnectionLost)

    def test_closeTimerDropsUnresponsivePeer(self) -> None:
        """
        A server that never answers our close is dropped after the close
        timeout, on our reactor.
        """
        factory = wsfake.acceptThenReply(wsfake.text(b'{"status": "connected"}'))
        proto = self.successResultOf(self.connect(factory))
        proto.transport.loseConnection()
        self.network.flush()
        self.assertEqual(factory.servers[0].frames[-1][0], 0x8)
        self.assertIsNone(proto.lostReason)
        self.reactor.advance(1)
        self.network.flush()
        self.assertIsNotNone(proto.lostReason)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class TunnelStateTests(SynchronousTestCase):
    """
    L{Tunnel}, the client's state machine, on a fake channel and a clock:
    upgrading -> awaitingReply -> relaying -> closed.
    """

    def setUp(self) -> None:
        from twisted.internet.defer import Deferred
        from twisted.internet.task import Clock

        from sprites_twisted.tunnel import Tunnel
        from sprites_twisted.wire import encodeInit
        from sprites_twisted.wsstream import SpriteAddress
        from tests.channels import FakeChannel

        self.clock = Clock()
        self.result: Deferred[Any] = Deferred()
        self.channel = FakeChannel()
        self.tunnel = Tunnel(self.clock, "api.example", 1.0, Keepalive(self.clock, 15.0))
        self.tunnel.channel = self.channel  # type: ignore[assignment]
        self.tunnel.claim(
            self.result,
            Factory.forProtocol(Recorder),
            encodeInit("localhost", 5432),
            SpriteAddress("demo", "localhost", 5432),
        )

    def relaying(self) -> Any:
        self.tunnel.opened()
        self.tunnel.textReceived(b'{"status": "connected"}')
        return self.successResultOf(self.result)

    def test_initThenRelay(self) -> None:
        """
        Open: the init goes out as text and the reply is collected; on
        connected the protocol is built and binary data goes straight to it.
        """
        self.assertEqual(self.tunnel.state, "upgrading")
        self.tunnel.opened()
        self.assertEqual(self.tunnel.state, "awaitingReply")
        self.assertEqual(self.channel.texts, [b'{"host": "localhost", "port": 5432}'])
        self.assertGreater(self.channel.textLimit, 0)
        self.tunnel.textReceived(b'{"status": "connected", "target": "localhost:5432"}')
        app = self.successResultOf(self.result)
        self.assertEqual(self.tunnel.state, "relaying")
        self.assertEqual(self.channel.textLimit, 0)
        self.channel.binaryData(b"payload")  # type: ignore[attr-defined]
        self.assertEqual(app.received, b"payload")

    def test_errorReply(self) -> None:
        """
        Another status fails the connect with the server's message and drops
        the connection.
        """
        self.tunnel.opened()
        self.tunnel.textReceived(b'{"status": "error", "message": "port closed"}')
        self.assertTrue(self.channel.transport.disconnected)
        self.tunnel.closed(False, 1006, None)
        error = self.failureResultOf(self.result, HandshakeError).value
        self.assertIn("port closed", str(error))

    def test_binaryBeforeReply(self) -> None:
        self.tunnel.opened()
        self.tunnel.binaryData(b"sneaky")
        self.tunnel.closed(False, 1006, None)
        self.assertIn("before the handshake reply", str(self.failureResultOf(self.result).value))

    def test_closeBeforeReply(self) -> None:
        """
        A close frame while awaiting the reply fails at once, with its code.
        """
        self.tunnel.opened()
        self.tunnel.closeFrame(4000, "go away")
        self.tunnel.closed(True, 4000, "go away")
        error = self.failureResultOf(self.result, TunnelClosedError).value
        self.assertIn("4000", str(error))
        self.assertIn("go away", str(error))

    def test_cleanEnd(self) -> None:
        """
        A 1000 close after the handshake is a clean end for the protocol.
        """
        app = self.relaying()
        self.tunnel.closed(True, 1000, None)
        self.assertEqual(self.tunnel.state, "closed")
        self.assertTrue(app.lostReason.check(ConnectionDone))

    def test_keepaliveDeath(self) -> None:
        """
        Pings every 15 s on the clock; 45 s without a pong ends the stream
        as broken, naming why.
        """
        app = self.relaying()
        self.clock.advance(15)
        self.assertEqual(self.channel.pings, 1)
        self.tunnel.pong()
        self.clock.advance(15)
        self.clock.advance(15)
        self.clock.advance(14)
        self.assertFalse(self.channel.transport.disconnected)
        self.clock.advance(1)
        self.assertTrue(self.channel.transport.disconnected)
        self.tunnel.closed(False, 1006, None)
        self.assertTrue(app.lostReason.check(ConnectionLost))
        self.assertIn("no answer to pings for 45 s", app.lostReason.getErrorMessage())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_noPingsBeforeRelaying(self) -> None:
        """
        The handshake timeout covers the handshake; pings start once
        relaying.
        """
        self.tunnel.opened()
        self.clock.advance(60)
        self.assertEqual(self.channel.pings, 0)

    def test_cancelledBeforeReply(self) -> None:
        """
        A reply that arrives after connect was cancelled drops the tunnel
        instead of building a protocol.
        """
        self.tunnel.opened()
        self.tunnel.abort()
        self.tunnel.textReceived(b'{"status": "connected"}')
        self.assertNotEqual(self.tunnel.state, "relaying")
        self.assertTrue(self.channel.transport.disconnected)
