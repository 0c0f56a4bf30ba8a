"""
Tests for L{sprites_twisted.socks}: the SOCKS4/4a/5 server whose CONNECTs
are tunnels.  Unit tests drive the protocol over C{StringTransport} with a
hand-fired endpoint; integration tests fetch through a real SOCKS port with
curl and a raw SOCKS4a client, through the local sprite server.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor as globalReactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data
from zope.interface import implementer

from sprites_twisted.client import SpritesClient
from sprites_twisted.errors import (
    APIUnreachableError,
    ConfigurationError,
    HandshakeError,
    SpriteAuthError,
    SpriteNotFoundError,
    TunnelTimeoutError,
)
from sprites_twisted.server import LocalSpriteServer
from sprites_twisted.socks import (
    MAX_BUFFER,
    SOCKS4_GRANTED,
    SOCKS4_REJECTED,
    Reply,
    SOCKSServerFactory,
    parseCredentials,
    replyCodeFor,
)
from tests.helpers import LocalClient

reactor: Any = globalReactor
TOKEN = "socks-test-token-91c2"


@implementer(IStreamClientEndpoint)
class HandFiredEndpoint:
    """
    An endpoint whose connects the test completes or fails.
    """

    def __init__(self, host: str, port: int, log: list[HandFiredEndpoint]) -> None:
        self.host = host
        self.port = port
        self.pending: list[tuple[Any, Deferred[Any]]] = []
        self.cancelled = 0
        log.append(self)

    def connect(self, factory: Any) -> Deferred[Any]:
        def cancel(d: Deferred[Any]) -> None:
            self.cancelled += 1

        d: Deferred[Any] = Deferred(cancel)
        self.pending.append((factory, d))
        return d

    def succeed(self, early: bytes = b"") -> tuple[Any, StringTransport]:
        factory, d = self.pending.pop(0)
        proto = factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        if early:
            proto.dataReceived(early)
        d.callback(proto)
        return proto, transport

    def fail(self, error: Exception) -> None:
        _, d = self.pending.pop(0)
        d.errback(error)


def socks5Connect(host: bytes, port: int) -> bytes:
    """
    A SOCKS5 CONNECT request to a domain name.
    """
    return b"\x05\x01\x00\x03" + bytes([len(host)]) + host + struct.pack("!H", port)


SUCCESS5 = b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"


def reply5(code: int) -> bytes:
    return bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0])


class Harness:
    """
    A factory with a hand-fired endpoint per CONNECT and one connection.
    """

    def __init__(self, credentials: dict[str, str] | None = None) -> None:
        self.clock = Clock()
        self.endpoints: list[HandFiredEndpoint] = []
        self.factory = SOCKSServerFactory(
            lambda host, port: HandFiredEndpoint(host, port, self.endpoints),
            self.clock,
            "box",
            credentials=credentials,
        )

    def connect(self) -> tuple[Any, StringTransport]:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport


class SOCKS5Tests(SynchronousTestCase):
    """
    SOCKS5 without authentication: greeting, CONNECT, relay, close.
    """

    def setUp(self) -> None:
        self.h = Harness()
        self.proto, self.transport = self.h.connect()
        self.logs = EventLoggingObserver.createWithCleanup(self, _observer())

    def greet(self) -> None:
        self.proto.dataReceived(b"\x05\x01\x00")
        self.assertEqual(self.transport.value(), b"\x05\x00")
        self.transport.clear()

    def test_connectRepliesOnlyAfterTunnel(self) -> None:
        """
        The CONNECT reply is sent once the tunnel is up, not before; the
        domain name reaches the endpoint unresolved.
        """
        self.greet()
        self.proto.dataReceived(socks5Connect(b"web.internal", 8080))
        [endpoint] = self.h.endpoints
        self.assertEqual((endpoint.host, endpoint.port), ("web.internal", 8080))
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.transport.producerState, "paused")
        tunnel, tunnelTransport = endpoint.succeed()
        self.assertEqual(self.transport.value(), SUCCESS5)
        self.assertEqual(self.transport.producerState, "producing")
        # Two-way flow control: each side a streaming producer of the other.
        self.assertIs(self.transport.producer.transport, tunnelTransport)
        self.assertTrue(self.transport.streaming)
        self.assertIs(tunnelTransport.producer.transport, self.transport)
        self.assertTrue(tunnelTransport.streaming)
        self.transport.producer.pauseProducing()
        self.assertEqual(tunnelTransport.producerState, "paused")
        tunnelTransport.producer.pauseProducing()
        self.assertEqual(self.transport.producerState, "paused")

    def test_relayBothWaysInOrder(self) -> None:
        """
        Bytes pipelined after the request, bytes during connecting, and
        bytes after, reach the tunnel in order; tunnel bytes follow the reply.
        """
        self.greet()
        self.proto.dataReceived(socks5Connect(b"localhost", 80) + b"GET ")
        self.proto.dataReceived(b"/ HTTP/1.0")
        tunnel, tunnelTransport = self.h.endpoints[0].succeed(early=b"early-from-sprite")
        self.proto.dataReceived(b"\r\n\r\n")
        self.assertEqual(tunnelTransport.value(), b"GET / HTTP/1.0\r\n\r\n")
        tunnel.dataReceived(b"HTTP/1.0 200 OK")
        self.assertEqual(
            self.transport.value(), SUCCESS5 + b"early-from-sprite" + b"HTTP/1.0 200 OK"
        )

    def test_ipv4AndIPv6Targets(self) -> None:
        """
        IPv4 and IPv6 destinations are passed on as literals.
        """
        self.greet()
        self.proto.dataReceived(
            b"\x05\x01\x00\x04" + socket.inet_pton(socket.AF_INET6, "fd00::1") + b"\x00\x16"
        )
        other, transport = self.h.connect()
        other.dataReceived(b"\x05\x01\x00\x05\x01\x00\x01\x7f\x00\x00\x02\x01\xbb")
        self.assertEqual(
            [(e.host, e.port) for e in self.h.endpoints], [("fd00::1", 22), ("127.0.0.2", 443)]
        )

    def test_cleanCloseIsFIN(self) -> None:
        """
        A tunnel that closes cleanly ends the local connection with a FIN,
        and a local FIN closes the tunnel cleanly.
        """
        self.greet()
        self.proto.dataReceived(socks5Connect(b"localhost", 80))
        tunnel, tunnelTransport = self.h.endpoints[0].succeed()
        tunnel.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.transport.disconnected)

        h = Harness()
        proto, transport = h.connect()
        proto.dataReceived(b"\x05\x01\x00" + socks5Connect(b"localhost", 80))
        tunnel, tunnelTransport = h.endpoints[0].succeed()
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(tunnelTransport.disconnecting)
        self.assertFalse(tunnelTransport.disconnected)

    def test_brokenTunnelIsReset(self) -> None:
        """
        A tunnel that breaks resets the local connection (and is logged);
        a reset local connection aborts its tunnel.
        """
        self.greet()
        self.proto.dataReceived(socks5Connect(b"localhost", 80))
        tunnel, _ = self.h.endpoints[0].succeed()
        tunnel.dataReceived(b"last words")
        tunnel.connectionLost(Failure(ConnectionLost("tunnel closed (code 1011)")))
        # What arrived is delivered first, then the connection is reset.
        self.assertEqual(self.transport.value(), SUCCESS5 + b"last words")
        self.assertFalse(self.transport.disconnected)
        self.transport.producer.resumeProducing()  # Twisted's buffer is empty
        self.assertTrue(self.transport.disconnected)
        self.assertTrue(any("broke" in _text(e) for e in self.logs))

        h = Harness()
        proto, transport = h.connect()
        proto.dataReceived(b"\x05\x01\x00" + socks5Connect(b"localhost", 80))
        tunnel, tunnelTransport = h.endpoints[0].succeed()
        proto.connectionLost(Failure(ConnectionLost("reset")))
        tunnelTransport.producer.resumeProducing()
        self.assertTrue(tunnelTransport.disconnected)

    def test_closeWhileConnectingCancels(self) -> None:
        """
        A client that goes away while its tunnel is being opened cancels
        the attempt, and the factory forgets the connection.
        """
        self.greet()
        self.proto.dataReceived(socks5Connect(b"localhost", 80))
        endpoint = self.h.endpoints[0]
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(endpoint.cancelled, 1)
        self.successResultOf(self.h.factory.whenIdle())
        self.assertEqual(self.transport.value(), b"")

    def test_unsupportedCommands(self) -> None:
        """
        BIND and UDP ASSOCIATE are answered "command not supported" (7).
        """
        for command in (2, 3):
            proto, transport = self.h.connect()
            proto.dataReceived(b"\x05\x01\x00")
            proto.dataReceived(bytes([5, command, 0, 1, 127, 0, 0, 1, 0, 80]))
            self.assertEqual(transport.value(), b"\x05\x00" + reply5(7))
            self.assertTrue(transport.disconnecting)
        self.assertEqual(self.h.endpoints, [])

    def test_unknownAddressType(self) -> None:
        """
        An unknown address type is answered "address type not supported" (8).
        """
        self.greet()
        self.proto.dataReceived(b"\x05\x01\x00\x09\x00\x00")
        self.assertEqual(self.transport.value(), reply5(8))
        self.assertTrue(self.transport.disconnecting)

    def test_noAcceptableMethod(self) -> None:
        """
        A greeting that does not offer "no authentication" gets 0xFF and a
        close.
        """
        self.proto.dataReceived(b"\x05\x01\x02")
        self.assertEqual(self.transport.value(), b"\x05\xff")
        self.assertTrue(self.transport.disconnecting)
        self.assertTrue(any("no acceptable authentication" in _text(e) for e in self.logs))

    def test_unknownVersion(self) -> None:
        """
        An unknown first byte closes the connection with one log line
        naming the version.
        """
        self.proto.dataReceived(b"GET / HTTP/1.1\r\n")
        self.assertEqual(self.transport.value(), b"")
        self.assertTrue(self.transport.disconnecting)
        lines = [_text(e) for e in self.logs]
        self.assertEqual(len(lines), 1)
        self.assertIn("unknown SOCKS version 71", lines[0])

    def test_badTargets(self) -> None:
        """
        Port 0, an empty name and a name with control characters are
        refused (general failure), naming the problem.
        """
        for request in (
            socks5Connect(b"localhost", 0),
            socks5Connect(b"", 80),
            socks5Connect(b"bad\nname", 80),
        ):
            proto, transport = self.h.connect()
            proto.dataReceived(b"\x05\x01\x00" + request)
            self.assertEqual(transport.value(), b"\x05\x00" + reply5(1))
            self.assertTrue(transport.disconnecting)
        self.assertEqual(self.h.endpoints, [])
        texts = " ".join(_text(e) for e in self.logs)
        self.assertIn("port 0", texts)
        self.assertIn("empty destination host name", texts)

    def test_earlyClose(self) -> None:
        """
        A client that closes mid-greeting is logged in one line; nothing is
        connected and the factory forgets it.
        """
        self.proto.dataReceived(b"\x05\x02")
        self.proto.connectionLost(Failure(ConnectionDone()))
        lines = [_text(e) for e in self.logs]
        self.assertEqual(len(lines), 1)
        self.assertIn("closed before its request was complete (greeting, 2 bytes", lines[0])
        self.assertEqual(self.h.endpoints, [])
        self.successResultOf(self.h.factory.whenIdle())

    def test_requestTimeout(self) -> None:
        """
        A client that never completes its request is closed after the
        request timeout.
        """
        self.proto.dataReceived(b"\x05")
        self.h.clock.advance(29)
        self.assertFalse(self.transport.disconnecting)
        self.h.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.h.clock.getDelayedCalls())

    def test_tooMuchEarlyDataFromTunnelIsReset(self) -> None:
        """
        The tunnel's data held before the reply is capped.
        """
        self.greet()
        self.proto.dataReceived(socks5Connect(b"localhost", 80))
        factory, d = self.h.endpoints[0].pending[0]
        tunnel = factory.buildProtocol(None)
        tunnelTransport = StringTransport()
        tunnel.makeConnection(tunnelTransport)
        tunnel.dataReceived(b"x" * (300 * 1024))
        self.assertTrue(tunnelTransport.disconnected)


class RefusalTests(SynchronousTestCase):
    """
    A failed tunnel gets the matching reply code, one warning with the
    server's reason, and a close; the factory keeps serving.
    """

    cases = [
        (HandshakeError("error", "cannot connect to localhost:9: Connection refused"), 5),
        (HandshakeError("error", "target 10.1.1.1:80 is not allowed by this server"), 2),
        (HandshakeError("error", "connect: network is unreachable"), 3),
        (HandshakeError("error", "DNS lookup failed for nosuch.example"), 4),
        (HandshakeError("error", "no route to host"), 4),
        (HandshakeError("error", "something odd"), 1),
        (SpriteAuthError(401, "bad token", None), 2),
        (SpriteNotFoundError(404, "no sprite", None), 1),
        (APIUnreachableError("api:443", "refused"), 3),
        (TunnelTimeoutError(30), 4),
    ]

    def test_replyCodes(self) -> None:
        """
        L{replyCodeFor} maps each failure to its SOCKS5 reply.
        """
        for error, code in self.cases:
            self.assertEqual(replyCodeFor(Failure(error)), code, error)

    def test_socks5Refusals(self) -> None:
        """
        Each refusal reaches the SOCKS5 client as its code, logged with the
        reason; the connection closes with a FIN.
        """
        h = Harness()
        logs = EventLoggingObserver.createWithCleanup(self, _observer())
        for error, code in self.cases:
            proto, transport = h.connect()
            proto.dataReceived(b"\x05\x01\x00" + socks5Connect(b"localhost", 9))
            h.endpoints[-1].fail(error)
            self.assertEqual(transport.value(), b"\x05\x00" + reply5(code))
            self.assertTrue(transport.disconnecting)
            self.assertFalse(transport.disconnected)
            self.assertIn(str(error), _text(logs[-1]))
            self.assertNoResult(h.factory.whenIdle())
            proto.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(h.factory.whenIdle())

    def test_socks4Refusal(self) -> None:
        """
        A SOCKS4 client gets "rejected" (0x5B) for any failed tunnel.
        """
        h = Harness()
        proto, transport = h.connect()
        proto.dataReceived(b"\x04\x01\x00\x09\x7f\x00\x00\x01\x00")
        h.endpoints[0].fail(HandshakeError("error", "Connection refused"))
        self.assertEqual(transport.value(), bytes([0, SOCKS4_REJECTED, 0, 0, 0, 0, 0, 0]))
        self.assertTrue(transport.disconnecting)
        self.flushLoggedErrors()


class SOCKS4Tests(SynchronousTestCase):
    """
    SOCKS4 and SOCKS4a requests.
    """

    def test_socks4a(self) -> None:
        """
        A SOCKS4a name is passed on unresolved; the grant follows the
        tunnel.
        """
        h = Harness()
        proto, transport = h.connect()
        proto.dataReceived(b"\x04\x01\x1f\x90\x00\x00\x00\x01me\x00db.internal\x00")
        [endpoint] = h.endpoints
        self.assertEqual((endpoint.host, endpoint.port), ("db.internal", 8080))
        self.assertEqual(transport.value(), b"")
        endpoint.succeed()
        self.assertEqual(transport.value(), bytes([0, SOCKS4_GRANTED, 0, 0, 0, 0, 0, 0]))

    def test_socks4Address(self) -> None:
        """
        A plain SOCKS4 request connects to its IPv4 address.
        """
        h = Harness()
        proto, transport = h.connect()
        proto.dataReceived(b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00")
        self.assertEqual([(e.host, e.port) for e in h.endpoints], [("127.0.0.1", 80)])

    def test_longNames(self) -> None:
        """
        A SOCKS4a name or user id over 255 bytes is rejected, even before
        its terminating NUL arrives.
        """
        logs = EventLoggingObserver.createWithCleanup(self, _observer())
        h = Harness()
        for data in (
            b"\x04\x01\x00\x50\x00\x00\x00\x01\x00" + b"a" * 256 + b"\x00",
            b"\x04\x01\x00\x50\x00\x00\x00\x01\x00" + b"a" * 300,
            b"\x04\x01\x00\x50\x7f\x00\x00\x01" + b"u" * 256,
        ):
            proto, transport = h.connect()
            proto.dataReceived(data)
            self.assertEqual(transport.value(), bytes([0, SOCKS4_REJECTED, 0, 0, 0, 0, 0, 0]))
            self.assertTrue(transport.disconnecting)
        self.assertEqual(h.endpoints, [])
        self.assertIn("over 255 bytes", _text(logs[0]))

    def test_bindRefused(self) -> None:
        """
        SOCKS4 BIND is rejected.
        """
        h = Harness()
        proto, transport = h.connect()
        proto.dataReceived(b"\x04\x02\x00\x50\x7f\x00\x00\x01\x00")
        self.assertEqual(transport.value(), bytes([0, SOCKS4_REJECTED, 0, 0, 0, 0, 0, 0]))
        self.assertEqual(h.endpoints, [])
        self.flushLoggedErrors()


class AuthenticationTests(SynchronousTestCase):
    """
    RFC 1929 username/password, when credentials are configured.
    """

    def setUp(self) -> None:
        self.h = Harness({"alice": "s3cret"})

    def test_goodPassword(self) -> None:
        """
        The right user and password are accepted, then the request served.
        """
        proto, transport = self.h.connect()
        proto.dataReceived(b"\x05\x02\x00\x02")
        self.assertEqual(transport.value(), b"\x05\x02")
        proto.dataReceived(b"\x01\x05alice\x06s3cret")
        self.assertEqual(transport.value(), b"\x05\x02\x01\x00")
        proto.dataReceived(socks5Connect(b"localhost", 80))
        self.assertEqual(len(self.h.endpoints), 1)

    def test_wrongPassword(self) -> None:
        """
        A wrong password gets status 1 and a close; the log names the user
        but never the password.
        """
        logs = EventLoggingObserver.createWithCleanup(self, _observer())
        proto, transport = self.h.connect()
        proto.dataReceived(b"\x05\x01\x02\x01\x05alice\x05guess")
        self.assertEqual(transport.value(), b"\x05\x02\x01\x01")
        self.assertTrue(transport.disconnecting)
        self.assertIn("'alice'", _text(logs[0]))
        self.assertNotIn("guess", _text(logs[0]))

    def test_noAuthOfferedIsRefused(self) -> None:
        """
        A client offering only "no authentication" is refused (0xFF), and
        SOCKS4 (which cannot authenticate) is rejected.
        """
        proto, transport = self.h.connect()
        proto.dataReceived(b"\x05\x01\x00")
        self.assertEqual(transport.value(), b"\x05\xff")
        proto, transport = self.h.connect()
        proto.dataReceived(b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00")
        self.assertEqual(transport.value(), bytes([0, SOCKS4_REJECTED, 0, 0, 0, 0, 0, 0]))
        self.assertEqual(self.h.endpoints, [])
        self.flushLoggedErrors()

    def test_parseCredentials(self) -> None:
        """
        C{user:password} lines are parsed; bad lines name their number.
        """
        self.assertEqual(
            parseCredentials("# users\nalice:a:b\n\nbob:pw\n"), {"alice": "a:b", "bob": "pw"}
        )
        e = self.assertRaises(ConfigurationError, parseCredentials, "ok:1\nnocolon\n", "f.txt")
        self.assertIn("f.txt line 2", str(e))
        self.assertRaises(ConfigurationError, parseCredentials, "# nothing\n")


class ServiceTests(SynchronousTestCase):
    """
    L{SOCKSService} listens while running and fails start-up on a busy port.
    """

    def test_listenAndStop(self) -> None:
        """
        The service listens on the interface and port given, and stops.
        """
        from twisted.internet.testing import MemoryReactorClock

        from sprites_twisted.socks import SOCKSService

        memory = MemoryReactorClock()
        service = SOCKSService(memory, Harness().factory, "::1", 1080)
        service.startService()
        self.assertEqual((memory.tcpServers[0][0], memory.tcpServers[0][3]), (1080, "::1"))
        self.assertIs(self.successResultOf(service.listen()), service)
        self.assertEqual(len(memory.tcpServers), 1)
        self.successResultOf(service.stopService())

    def test_busyPortRaises(self) -> None:
        """
        A port already in use raises C{CannotListenError} from
        C{startService}, naming the address, so that twistd stops.
        """
        from twisted.internet.error import CannotListenError

        from sprites_twisted.socks import SOCKSService

        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        port = busy.getsockname()[1]
        service = SOCKSService(reactor, Harness().factory, "127.0.0.1", port)
        e = self.assertRaises(CannotListenError, service.startService)
        self.assertIn(f"127.0.0.1:{port}", str(e))
        self.assertFalse(service.running)
        self.failureResultOf(service.listen(), CannotListenError)

    def test_parseListenAddress(self) -> None:
        """
        C{[BIND:]PORT} forms.
        """
        from sprites_twisted.socks import parseListenAddress

        self.assertEqual(parseListenAddress("1080"), ("127.0.0.1", 1080))
        self.assertEqual(parseListenAddress("0.0.0.0:1"), ("0.0.0.0", 1))
        self.assertEqual(parseListenAddress("[::1]:1080"), ("::1", 1080))
        for bad in ("", "x:1", "1:2:3", "[::1]", "70000", "127.0.0.1:-1"):
            self.assertRaises(ConfigurationError, parseListenAddress, bad)


class HostileInputTests(SynchronousTestCase):
    """
    Whatever bytes a client sends, the server refuses or waits within its
    buffer cap, never raises, and never connects to an invalid target.
    """

    # make test runs this twice, with new random examples each time.
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        st.lists(
            st.one_of(
                st.binary(max_size=600),
                st.sampled_from([b"\x05", b"\x04", b"\x05\x01\x00", b"\x01", b"\x00", b"\x03"]),
            ),
            max_size=8,
        ),
        st.booleans(),
    )
    def test_arbitraryBytes(self, chunks: list[bytes], withAuth: bool) -> None:
        """
        Random (and SOCKS-shaped) chunks never crash the protocol.
        """
        h = Harness({"u": "p"} if withAuth else None)
        proto, transport = h.connect()
        for chunk in chunks:
            proto.dataReceived(chunk)
        if not transport.disconnecting and not h.endpoints:
            self.assertLessEqual(len(proto._buffer), MAX_BUFFER)
        for endpoint in h.endpoints:
            self.assertTrue(1 <= endpoint.port <= 65535)
            self.assertTrue(endpoint.host)
        proto.connectionLost(Failure(ConnectionDone()))
        for endpoint in h.endpoints:
            for _, d in list(endpoint.pending):
                # connectionLost cancelled it: it has failed already.
                self.assertTrue(d.called)
                self.assertEqual(endpoint.cancelled, 1)
        self.successResultOf(h.factory.whenIdle())
        self.assertFalse([c for c in h.clock.getDelayedCalls() if c.active()])
        self.flushLoggedErrors()

    @settings(max_examples=100, deadline=None)
    @given(st.integers(min_value=MAX_BUFFER + 1, max_value=4 * MAX_BUFFER))
    def test_overlongGreeting(self, size: int) -> None:
        """
        A greeting that never ends is refused once it passes the cap.
        """
        h = Harness()
        proto, transport = h.connect()
        proto.dataReceived(b"\x05\x01\x00\x05\x01\x00\x03")
        for _ in range(size // 100 + 1):
            if transport.disconnecting:
                break
            proto.dataReceived(b"\xff" * 100)
        self.assertTrue(transport.disconnecting)


def _cancelled() -> Exception:
    from twisted.internet.defer import CancelledError

    return CancelledError()


def _observer() -> Any:
    from twisted.logger import globalLogPublisher

    return globalLogPublisher


def _text(event: dict[str, Any]) -> str:
    from twisted.logger import formatEvent

    return formatEvent(event)


# Integration: real sockets on 127.0.0.1, the local sprite server.


class IntegrationTests(TestCase):
    """
    curl and a raw SOCKS4a client fetch a page through the SOCKS port and
    the local sprite server; refusals reach the client.
    """

    async def _start(self) -> None:
        self.payload = os.urandom(512 * 1024)
        root = Resource()
        root.putChild(b"blob", Data(self.payload, "application/octet-stream"))
        site = Site(root)
        site.noisy = False
        self.web = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(self.web.stopListening)
        self.server = LocalSpriteServer(reactor, TOKEN)
        self.api = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            self.server.factory()
        )
        self.addCleanup(self.api.stopListening)
        self.addCleanup(self.server.whenIdle)
        client = SpritesClient(
            reactor, TOKEN, f"http://127.0.0.1:{self.api.getHost().port}", prewarm=0
        )
        self.factory = client.socksFactory("box")
        self.socks = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            self.factory
        )
        self.addCleanup(self.socks.stopListening)
        self.addCleanup(self.factory.whenIdle)

    def test_curlSOCKS5Hostname(self) -> Deferred[None]:
        """
        ``curl --socks5-hostname`` fetches the page intact (sha256), the
        name ``localhost`` resolved inside the sprite.
        """
        if shutil.which("curl") is None:
            self.skipTest("curl is not installed")

        async def run() -> None:
            await self._start()
            out, err, code = await getProcessOutputAndValue(
                "curl",
                [
                    "-sS",
                    "--max-time",
                    "20",
                    "--socks5-hostname",
                    f"127.0.0.1:{self.socks.getHost().port}",
                    f"http://localhost:{self.web.getHost().port}/blob",
                ],
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                reactor=reactor,
            )
            self.assertEqual(code, 0, err)
            self.assertEqual(
                hashlib.sha256(out).hexdigest(), hashlib.sha256(self.payload).hexdigest()
            )

        return Deferred.fromCoroutine(run())

    def test_curlRefused(self) -> Deferred[None]:
        """
        A CONNECT to a closed port inside the sprite makes curl report that
        the SOCKS server refused the connection (reply 5).
        """
        if shutil.which("curl") is None:
            self.skipTest("curl is not installed")

        async def run() -> None:
            await self._start()
            closed = socket.socket()
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
            closed.close()
            out, err, code = await getProcessOutputAndValue(
                "curl",
                [
                    "-sS",
                    "--max-time",
                    "20",
                    "--socks5-hostname",
                    f"127.0.0.1:{self.socks.getHost().port}",
                    f"http://localhost:{port}/",
                ],
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                reactor=reactor,
            )
            self.assertEqual(code, 97, err)  # CURLE_PROXY
            self.assertIn(b"(5)", err)  # SOCKS5 reply: connection refused

        return Deferred.fromCoroutine(run())

    def test_socks4aRawClient(self) -> Deferred[None]:
        """
        A raw SOCKS4a client gets the grant, then the page (sha256), then a
        clean close.
        """

        async def run() -> None:
            await self._start()
            local = await connectProtocol(
                TCP4ClientEndpoint(reactor, "127.0.0.1", self.socks.getHost().port),
                LocalClient(),
            )
            port = self.web.getHost().port
            local.transport.write(
                b"\x04\x01" + struct.pack("!H", port) + b"\x00\x00\x00\x01me\x00localhost\x00"
            )
            local.transport.write(b"GET /blob HTTP/1.0\r\nHost: localhost\r\n\r\n")
            await local.closed
            received = bytes(local.received)
            self.assertEqual(received[:2], bytes([0, SOCKS4_GRANTED]))
            head, _, body = received[8:].partition(b"\r\n\r\n")
            self.assertTrue(head.startswith(b"HTTP/1.0 200"), head[:100])
            self.assertEqual(
                hashlib.sha256(body).hexdigest(), hashlib.sha256(self.payload).hexdigest()
            )
            assert local.reason is not None
            self.assertTrue(local.reason.check(ConnectionDone))

        return Deferred.fromCoroutine(run())

    def test_notAllowedAndServesOn(self) -> Deferred[None]:
        """
        A target the sprite refuses ("not allowed") gets reply 2 and a
        close, and the next CONNECT on the same port is served.
        """

        async def run() -> None:
            await self._start()
            sport = self.socks.getHost().port
            local = await connectProtocol(
                TCP4ClientEndpoint(reactor, "127.0.0.1", sport), LocalClient()
            )
            local.transport.write(b"\x05\x01\x00" + b"\x05\x01\x00\x01\x0a\x00\x00\x01\x00\x50")
            await local.closed
            self.assertEqual(bytes(local.received), b"\x05\x00" + reply5(Reply.NOT_ALLOWED))
            assert local.reason is not None
            self.assertTrue(local.reason.check(ConnectionDone))  # a FIN, not a reset
            local = await connectProtocol(
                TCP4ClientEndpoint(reactor, "127.0.0.1", sport), LocalClient()
            )
            local.transport.write(
                b"\x05\x01\x00" + socks5Connect(b"127.0.0.1", self.web.getHost().port)
            )
            local.transport.write(b"GET /blob HTTP/1.0\r\n\r\n")
            await local.closed
            self.assertEqual(bytes(local.received[:12]), b"\x05\x00" + SUCCESS5)
            self.assertTrue(bytes(local.received).endswith(self.payload))
            assert local.reason is not None
            self.assertTrue(local.reason.check(ConnectionDone))

        return Deferred.fromCoroutine(run())


class FlowControlTests(TestCase):
    """
    A SOCKS client that does not read pauses the tunnel and the target;
    once it reads, every byte arrives (memory stays flat).
    """

    timeout = 60
    size = 32 * 1024 * 1024

    def test_slowSOCKSClient(self) -> Deferred[None]:
        """
        The flooding target is paused long before it has sent half, then
        everything arrives intact.
        """
        from tests.test_integration import FloodTarget, TrackingFactory

        async def run() -> None:
            flood = TrackingFactory(FloodTarget, self.size)
            target = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(flood)
            self.addCleanup(target.stopListening)
            server = LocalSpriteServer(reactor, TOKEN)
            api = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
                server.factory()
            )
            self.addCleanup(api.stopListening)
            self.addCleanup(server.whenIdle)
            client = SpritesClient(
                reactor, TOKEN, f"http://127.0.0.1:{api.getHost().port}", prewarm=0
            )
            factory = client.socksFactory("box")
            socks = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
            self.addCleanup(socks.stopListening)
            self.addCleanup(factory.whenIdle)
            local = LocalClient()
            await connectProtocol(
                TCP4ClientEndpoint(reactor, "127.0.0.1", socks.getHost().port), local
            )
            local.transport.write(
                b"\x05\x01\x00" + socks5Connect(b"127.0.0.1", target.getHost().port)
            )
            await local.whenReceived(12)
            local.transport.pauseProducing()
            flooder = flood.instances[0]
            await flooder.paused
            self.assertLess(flooder.sent, self.size // 2)
            local.transport.resumeProducing()
            received = await local.whenReceived(12 + self.size)
            self.assertEqual(received[:12], b"\x05\x00" + SUCCESS5)
            self.assertEqual(hashlib.sha256(received[12:]).digest(), flooder.hash.digest())
            await local.closed
            assert local.reason is not None
            self.assertTrue(local.reason.check(ConnectionDone))

        return Deferred.fromCoroutine(run())
