# -*- test-case-name: tests.test_fastpath -*-
"""
Tests for L{sprites_twisted._fastpath}: its frames are standard RFC 6455,
received frames are delivered byte-exact however the stream is split (with
the fast path on, and through Autobahn's public path when it is off: the
suite runs both ways), and its one switch turns it off.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys

from autobahn.websocket.xormasker import create_xor_masker
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.test.iosim import FakeTransport
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from sprites_twisted import _fastpath
from sprites_twisted._fastpath import TEXT_FIN, dataFrame, frameHeader, unmask
from sprites_twisted.endpoint import SpriteProxyEndpoint
from sprites_twisted.testing import (
    TEST_API_URL,
    TEST_TOKEN,
    MemoryClientEndpoint,
    MemoryNetwork,
    MemorySprite,
)
from tests import wsfake
from tests.suites import e2e


def reference(payload: bytes, mask: bytes) -> bytes:
    """
    Masking as RFC 6455 section 5.3 defines it, byte by byte.
    """
    return bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class FrameTests(SynchronousTestCase):
    """
    Frames built by L{dataFrame}.
    """

    def test_headerLengths(self) -> None:
        """
        Lengths use the minimal encoding: 7 bits, then 16, then 64.
        """
        self.assertEqual(frameHeader(125, False), b"\x82\x7d")
        self.assertEqual(frameHeader(126, False), b"\x82\x7e\x00\x7e")
        self.assertEqual(frameHeader(0xFFFF, True), b"\x82\xfe\xff\xff")
        self.assertEqual(frameHeader(0x10000, False), b"\x82\x7f" + struct.pack("!Q", 0x10000))

    def test_unmasked(self) -> None:
        """
        A server frame is header then payload, unmasked.
        """
        self.assertEqual(dataFrame(b"abc", False), b"\x82\x03abc")
        self.assertEqual(dataFrame(memoryview(b"abc"), False), b"\x82\x03abc")
        self.assertEqual(dataFrame(b"{}", False, TEXT_FIN), b"\x81\x02{}")

    def test_masked(self) -> None:
        """
        A client frame carries a masking key and the payload masked with it,
        for every length encoding.
        """
        for size in (0, 1, 125, 126, 1000, 0xFFFF, 0x10000, 100_003):
            payload = random.Random(size).randbytes(size)
            frame = dataFrame(payload, True)
            frames, rest = wsfake.parseClientFrames(frame)
            self.assertEqual((frames, rest), ([(0x2, payload)], b""), size)
            self.assertTrue(frame[1] & 0x80)

    def test_freshMaskPerFrame(self) -> None:
        """
        Every masked frame gets its own key.
        """
        keys = {dataFrame(b"same", True)[2:6] for _ in range(8)}
        self.assertGreater(len(keys), 1)

    def test_nativeAndFallbackAgree(self) -> None:
        """
        The compiled masker (when Autobahn uses it) and the pure-Python
        fallback both mask as RFC 6455 says, at any start offset.
        """
        rng = random.Random(6455)
        maskers = [_fastpath._xorIntegers]
        if _fastpath.NATIVE_MASKING:
            maskers.append(_fastpath._xorNative)
        for size in (*range(0, 40), 127, 128, 129, 4096, 65_537):
            payload = rng.randbytes(size)
            mask = rng.randbytes(4)
            for start in (0, 1, 14):
                for xor in maskers:
                    buf = bytearray(b"h" * start + payload)
                    xor(buf, start, mask)
                    self.assertEqual(bytes(buf[start:]), reference(payload, mask))
                    self.assertEqual(bytes(buf[:start]), b"h" * start)

    def test_unmaskAtOffset(self) -> None:
        """
        A piece of a masked payload unmasks correctly wherever it starts.
        """
        payload = bytes(range(256)) * 3
        mask = b"\x01\x22\x93\xf4"
        masked = create_xor_masker(mask, len(payload)).process(payload)
        for start, end in ((0, 5), (1, 2), (3, 700), (2, 768), (767, 768)):
            self.assertEqual(unmask(memoryview(masked)[start:end], mask, start), payload[start:end])


class SharedOptionsTests(SynchronousTestCase):
    """
    L{_fastpath.fastFactory}: protocols share their factory's options
    through one class, rebuilt when the options change.
    """

    def setUp(self) -> None:
        if not _fastpath.ENABLED:
            raise SkipTest("the fast path is off")
        from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol

        self.factory = _fastpath.fastFactory(WebSocketServerFactory)()
        self.factory.protocol = WebSocketServerProtocol

    def test_sharedClass(self) -> None:
        """
        Protocols built with the same options share one class carrying
        them, and copy nothing per connection.
        """
        self.factory.setProtocolOptions(openHandshakeTimeout=7)
        one, two = self.factory.buildProtocol(None), self.factory.buildProtocol(None)
        self.assertIs(type(one), type(two))
        self.assertEqual(type(one).CONFIG_ATTRS, ())
        self.assertEqual(one.openHandshakeTimeout, 7)
        self.assertIs(one.factory, self.factory)

    def test_setProtocolOptions(self) -> None:
        """
        C{setProtocolOptions} and C{resetProtocolOptions} after a connection
        reach the next protocol built.
        """
        first = self.factory.buildProtocol(None)
        self.factory.setProtocolOptions(maxFramePayloadSize=1234)
        second = self.factory.buildProtocol(None)
        self.assertEqual(second.maxFramePayloadSize, 1234)
        self.assertNotEqual(first.maxFramePayloadSize, 1234)
        self.factory.resetProtocolOptions()
        self.assertEqual(self.factory.buildProtocol(None).maxFramePayloadSize, 0)

    def test_protocolClassChange(self) -> None:
        """
        A new C{protocol} class on the factory is used from the next
        connection.
        """
        from autobahn.twisted.websocket import WebSocketServerProtocol

        self.factory.buildProtocol(None)

        class Other(WebSocketServerProtocol):
            pass

        self.factory.protocol = Other
        self.assertIsInstance(self.factory.buildProtocol(None), Other)


class Recorder(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def pieces(data: bytes, rng: random.Random, largest: int) -> list[bytes]:
    """
    C{data} cut at random places.
    """
    out = []
    pos = 0
    while pos < len(data):
        n = 1 + int(rng.random() * largest)  # 1 to largest, as randint but cheaper
        out.append(data[pos : pos + n])
        pos += n
    return out


def feed(
    transport: FakeTransport, data: bytes, rng: random.Random, largest: int, clock: Clock
) -> None:
    """
    Deliver C{data} to C{transport}'s protocol cut at random places, one
    read per piece, running the calls due now between reads as a reactor
    would (what writing each piece from the peer and pumping does, without
    pumping every other connection for every piece).
    """
    for piece in pieces(data, rng, largest):
        transport.bufferReceived(piece)
        clock.advance(0)


class ClientReceiveTests(SynchronousTestCase):
    """
    The client's own frame parser, fed server frames in random splits.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.network = MemoryNetwork(self.reactor)

    def connect(self) -> tuple[Recorder, wsfake.ScriptedServer, FakeTransport]:
        factory = wsfake.acceptThenReply(wsfake.text(b'{"status": "connected"}'))
        transportEndpoint = MemoryClientEndpoint(self.network, factory)
        endpoint = SpriteProxyEndpoint(
            self.reactor,
            "demo",
            5432,
            token=TEST_TOKEN,
            apiURL=TEST_API_URL,
            transportEndpoint=transportEndpoint,
        )
        d = endpoint.connect(Factory.forProtocol(Recorder))
        self.network.flush()
        (pump,) = transportEndpoint.connections
        return self.successResultOf(d), factory.servers[0], pump.clientIO

    def test_anySplit(self) -> None:
        """
        Binary frames of every length encoding, empty frames, a fragmented
        binary message, interleaved text and ping frames: the payload
        arrives whole and in order, however the bytes are split.
        """
        rng = random.Random(1)
        big = rng.randbytes(70_000)
        stream = [
            wsfake.binary(b"a" * 300),
            wsfake.binary(b""),
            wsfake.text(b"noise"),
            wsfake.binary(big),
            wsfake.frame(0x9, b"ping"),
            wsfake.frame(0x2, b"frag", fin=False),
            wsfake.frame(0x9, b"mid"),
            wsfake.frame(0x0, b"ment", fin=True),
            wsfake.binary(b"z"),
        ]
        expected = b"a" * 300 + big + b"fragment" + b"z"
        for largest in (1, 7, 300, 100_000):
            proto, server, transport = self.connect()
            feed(transport, b"".join(stream), rng, largest, self.reactor)
            self.network.flush()
            self.assertEqual(proto.received, expected, largest)
            # Pings were answered: Autobahn still handles control frames.
            self.assertEqual([p for op, p in server.frames if op == 0xA], [b"ping", b"mid"])

    def test_maskedServerFrameFails(self) -> None:
        """
        A masked frame from the server is still a protocol violation
        (Autobahn's check), and closes the tunnel.
        """
        proto, server, _ = self.connect()
        frame = bytearray(wsfake.binary(b"xy"))
        frame[1] |= 0x80
        server.transport.write(bytes(frame[:2]) + b"\0\0\0\0" + bytes(frame[2:]))
        self.network.flush()
        self.assertEqual(proto.received, b"")
        self.assertProtocolError(server)
        self.assertIn("masked server-to-client", proto.transport.channel.wasNotCleanReason)

    def test_nonMinimalLengthFails(self) -> None:
        """
        A length in a longer encoding than needed is refused (Autobahn's
        check), and nothing of that frame is delivered.
        """
        proto, server, _ = self.connect()
        server.transport.write(b"\x82\x7e\x00\x03abc")
        self.network.flush()
        self.assertEqual(proto.received, b"")
        self.assertProtocolError(server)
        self.assertIn("minimal length", proto.transport.channel.wasNotCleanReason)

    def assertProtocolError(self, server: wsfake.ScriptedServer) -> None:
        # Autobahn fails a connection by dropping it (failByDrop).
        self.assertTrue(server.lost)


class ServerReceiveTests(SynchronousTestCase):
    """
    The local sprite server's own frame parser, fed masked client frames in
    random splits.
    """

    def test_anySplit(self) -> None:
        """
        Masked binary frames reach the target whole and in order, however
        the bytes are split.
        """
        rng = random.Random(2)

        class Sink(Protocol):
            received = b""

            def dataReceived(self, data: bytes) -> None:
                Sink.received += data

        for largest in (1, 5, 1000, 200_000):
            Sink.received = b""
            sprite = MemorySprite()
            sprite.addTarget(5432, Factory.forProtocol(Sink))
            client = Recorder()
            sprite.apiEndpoint.connect(Factory.forProtocol(lambda c=client: c))
            sprite.flush()
            client.transport.write(
                b"GET /v1/sprites/demo/proxy HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer "
                + TEST_TOKEN.encode()
                + b"\r\n\r\n"
            )
            sprite.flush()
            self.assertTrue(client.received.startswith(b"HTTP/1.1 101 "))
            init = json.dumps({"host": "localhost", "port": 5432}).encode()
            client.transport.write(bytes([0x81, 0x80 | len(init)]) + b"\0\0\0\0" + init)
            sprite.flush()
            payloads = [rng.randbytes(n) for n in (1, 200, 70_000, 0, 3000)]
            stream = b"".join(dataFrame(p, True) for p in payloads)
            (pump,) = sprite.apiEndpoint.connections
            feed(pump.serverIO, stream, rng, largest, sprite.reactor)
            sprite.flush()
            self.assertEqual(Sink.received, b"".join(payloads), largest)


@e2e
class SwitchTests(SynchronousTestCase):
    """
    The fast path has one switch, and is off (both ways) where Autobahn
    lacks what it uses.
    """

    def enabledWith(self, value: str | None) -> str:
        env = dict(os.environ)
        env.pop("SPRITES_TWISTED_FASTPATH", None)
        if value is not None:
            env["SPRITES_TWISTED_FASTPATH"] = value
        # The copy under test, not whatever is installed.
        env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(_fastpath.__file__)))
        code = (
            "from sprites_twisted import _fastpath; print(_fastpath.ENABLED, _fastpath.SUPPORTED)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()

    def test_environmentSwitch(self) -> None:
        """
        C{SPRITES_TWISTED_FASTPATH=0} (or off/no/false) turns it off; it is
        on by default with the Autobahn we test against.
        """
        self.assertEqual(self.enabledWith(None), "True True")
        for value in ("0", "off", "NO", "false"):
            self.assertEqual(self.enabledWith(value), "False True", value)

    def test_offMeansPlainClasses(self) -> None:
        """
        With the fast path off, the shims and factories are used unchanged
        and binary data goes through Autobahn's public C{sendMessage}.
        """
        self.patch(_fastpath, "ENABLED", False)

        class Shim:
            pass

        self.assertIs(_fastpath.fastProtocol(Shim), Shim)
        self.assertIs(_fastpath.fastFactory(Shim), Shim)
        sent: list[tuple[bytes, bool]] = []

        class FakeWS:
            def sendMessage(self, payload: bytes, isBinary: bool) -> None:
                sent.append((payload, isBinary))

        ws = FakeWS()
        masked = _fastpath.sendMasking(ws)
        self.assertIsNone(masked)
        _fastpath.sendBinary(ws, memoryview(b"data"), masked)
        self.assertEqual(sent, [(b"data", True)])

    def test_unsupportedAutobahn(self) -> None:
        """
        An Autobahn without one of the internals used makes SUPPORTED false.
        """
        from autobahn.websocket.protocol import WebSocketProtocol

        self.assertTrue(_fastpath._supported())
        self.patch(_fastpath, "_NEEDED", ((WebSocketProtocol, "_noSuchInternal"),))
        self.assertFalse(_fastpath._supported())
