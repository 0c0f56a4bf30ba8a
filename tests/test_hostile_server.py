"""
Hostile and broken servers, as a forwarded port sees them, over loopback.

Each scripted server (L{tests.wsfake}) misbehaves on its first connection
and behaves on the next.  For every misbehaviour: the affected local
connection closes, one warning says why, the listener serves the next
connection, no file descriptor is left open and nothing unexpected is
logged (no "Unhandled error in Deferred", no error-level event).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import LogLevel
from twisted.trial.unittest import TestCase

from sprites_twisted.client import SpritesClient
from sprites_twisted.wire import MAX_REPLY_SIZE
from tests import wsfake
from tests.helpers import (
    LocalClient,
    LogCapture,
    SplitReactor,
    connectLocal,
    listen,
    openFileDescriptors,
    reactorRunning,
)
from tests.wsfake import ScriptedServer

reactor: Any = _globalReactor

TOKEN = "hostile-server-test-token"
CONNECTED = wsfake.text(json.dumps({"status": "connected", "target": "localhost:5432"}).encode())

OnRequest = Callable[[ScriptedServer, bytes], None]
OnFrame = Callable[[ScriptedServer, int, bytes], None]


def accept(server: ScriptedServer, request: bytes) -> None:
    """
    Answer the upgrade with 101.
    """
    server.accept()


def goodFrame(server: ScriptedServer, opcode: int, payload: bytes) -> None:
    """
    A well-behaved sprite: answer the init, echo the first data, close.
    """
    if opcode == 0x1:
        server.transport.write(CONNECTED)
    elif opcode == 0x2:
        server.transport.write(wsfake.binary(payload) + wsfake.close(1000))
        server.transport.loseConnection()
    elif opcode == 0x8:
        server.transport.write(wsfake.close(1000))
        server.transport.loseConnection()


def onInit(action: Callable[[ScriptedServer], None]) -> OnFrame:
    """
    Run C{action} when the init arrives.
    """

    def onFrame(server: ScriptedServer, opcode: int, payload: bytes) -> None:
        if opcode == 0x1:
            action(server)

    return onFrame


def afterConnected(action: Callable[[ScriptedServer, bytes], None]) -> OnFrame:
    """
    Answer the init properly, then run C{action} on the first data.
    """

    def onFrame(server: ScriptedServer, opcode: int, payload: bytes) -> None:
        if opcode == 0x1:
            server.transport.write(CONNECTED)
        elif opcode == 0x2:
            action(server, payload)

    return onFrame


def writeAndClose(data: bytes, abort: bool = False) -> Callable[[ScriptedServer], None]:
    """
    Send raw C{data}, then close (or abort) the TCP connection.
    """

    def action(server: ScriptedServer, *ignored: Any) -> None:
        server.transport.write(data)
        if abort:
            server.transport.abortConnection()
        else:
            server.transport.loseConnection()

    return action


class FirstBadServerFactory(wsfake.ScriptedServerFactory):
    """
    The first connection follows the hostile script; later ones get a
    well-behaved sprite (L{goodFrame}).
    """

    def buildProtocol(self, addr: object) -> ScriptedServer:
        if self.servers:
            server = ScriptedServer(accept, goodFrame)
        else:
            server = ScriptedServer(self.onRequest, self.onFrame)
        self.servers.append(server)
        return server


class HostileServerMixin:
    """
    Runs one hostile server against a forwarded port and checks the
    aftermath.
    """

    async def survive(
        self: Any,
        onRequest: OnRequest,
        onFrame: OnFrame | None = None,
        *,
        warning: str | None,
        send: bytes = b"ping",
        expectReceived: bytes = b"",
        clientReactor: Any = None,
        afterConnect: Callable[[LocalClient], Any] | None = None,
    ) -> list[str]:
        """
        Open one connection against a server scripted with C{onRequest} and
        C{onFrame}, then a good one.  Returns the warnings logged for the
        bad one, after checking that exactly one contains C{warning} (none
        when C{warning} is C{None}).
        """
        factory = FirstBadServerFactory(onRequest, onFrame)
        port, tracked = await listen(self, reactor, factory)
        client = SpritesClient(
            clientReactor or reactor,
            TOKEN,
            f"ws://127.0.0.1:{port.getHost().port}",
            handshakeTimeout=5,
            lingerTimeout=0.01,
            prewarm=0,
        )
        session = await client.proxyPort("demo", 0, 5432)
        self.addCleanup(session.close)
        await reactorRunning(reactor)
        fds = openFileDescriptors()
        logs = LogCapture(self)

        bad = await connectLocal(reactor, session.localPort)
        bad.transport.write(send)
        if afterConnect is not None:
            await afterConnect(bad)
        await bad.closed
        self.assertEqual(bytes(bad.received), expectReceived)
        # A tunnel that failed or broke resets the local connection (the
        # program sees an error); only a clean end is a FIN.
        assert bad.reason is not None
        expected = ConnectionDone if warning is None else ConnectionLost
        self.assertIs(type(bad.reason.value), expected, bad.reason)
        await session.factory.whenIdle()
        warnings = logs.atLevel(LogLevel.warn)
        if warning is None:
            self.assertEqual(warnings, [])
        else:
            self.assertEqual(len(warnings), 1, warnings)
            self.assertIn(warning, warnings[0])
            self.assertIn("demo", warnings[0])

        good = await connectLocal(reactor, session.localPort)
        good.transport.write(b"still serving")
        self.assertEqual(await good.whenReceived(13), b"still serving")
        await good.closed
        await session.factory.whenIdle()
        await tracked.whenIdle()
        self.assertEqual(tracked.accepted, 2)
        self.assertEqual(openFileDescriptors(), fds)
        self.assertEqual(logs.problems(), [])
        return warnings


class HandshakeTests(HostileServerMixin, TestCase):
    """
    Servers that accept the upgrade but botch the handshake.
    """

    async def test_neverReplies(self) -> None:
        """
        No reply to the init: the handshake timeout (on the client's clock)
        closes the connection.
        """
        split = SplitReactor(reactor)
        initArrived: Deferred[None] = Deferred()

        async def timeOut(bad: LocalClient) -> None:
            await initArrived
            split.clock.advance(5)

        await self.survive(
            accept,
            onInit(lambda server: initArrived.callback(None)),
            warning="no answer from the sprite within 5 s",
            clientReactor=split,
            afterConnect=timeOut,
        )

    async def test_invalidJSON(self) -> None:
        """
        A reply that is not JSON is a handshake error quoting it.
        """
        await self.survive(
            accept,
            onInit(lambda s: s.transport.write(wsfake.text(b"{connected"))),
            warning="reply is not JSON: b'{connected'",
        )

    async def test_notAnObject(self) -> None:
        """
        A JSON reply that is not an object is a handshake error.
        """
        await self.survive(
            accept,
            onInit(lambda s: s.transport.write(wsfake.text(b'["connected"]'))),
            warning="reply is not a JSON object",
        )

    async def test_otherStatus(self) -> None:
        """
        A status other than connected is shown with the server's message.
        """
        reply = json.dumps({"status": "error", "message": "port 5432 is closed"}).encode()
        await self.survive(
            accept,
            onInit(lambda s: s.transport.write(wsfake.text(reply))),
            warning="unexpected status 'error': port 5432 is closed",
        )

    async def test_hugeReply(self) -> None:
        """
        A reply over the size limit is refused without being collected.
        """
        await self.survive(
            accept,
            onInit(lambda s: s.transport.write(wsfake.text(b" " * (MAX_REPLY_SIZE + 1)))),
            warning="tunnel handshake failed: reply larger than 65536 bytes",
        )

    async def test_binaryBeforeReply(self) -> None:
        """
        Binary data before the reply is a handshake error, and never reaches
        the local client.
        """
        await self.survive(
            accept,
            onInit(lambda s: s.transport.write(wsfake.binary(b"sneaky") + CONNECTED)),
            warning="binary data arrived before the handshake reply",
        )

    async def test_dropBeforeUpgrade(self) -> None:
        """
        A server that drops the connection instead of answering the upgrade.
        """
        await self.survive(
            lambda s, r: s.transport.loseConnection(),
            warning="during the WebSocket upgrade",
        )

    async def test_dropBeforeReply(self) -> None:
        """
        A server that drops the TCP connection after the init.
        """
        await self.survive(
            accept,
            onInit(writeAndClose(b"", abort=True)),
            warning="connection dropped before the handshake reply",
        )

    async def test_closeBeforeReply(self) -> None:
        """
        A close frame instead of a reply carries its code and reason.
        """
        await self.survive(
            accept,
            onInit(writeAndClose(wsfake.close(4000, b"sprite asleep"))),
            warning="(close code 4000): sprite asleep",
        )


class RefusedUpgradeTests(HostileServerMixin, TestCase):
    """
    HTTP answers other than 101: the status and body (truncated) make the
    error.
    """

    async def test_redirect(self) -> None:
        """
        A 3xx is a refusal, not followed, and shows its body.
        """
        response = (
            b"HTTP/1.1 302 Found\r\nLocation: https://elsewhere.example/\r\n"
            b"Content-Length: 9\r\n\r\nmoved on!"
        )
        await self.survive(
            lambda s, r: s.transport.write(response),
            warning="refused the tunnel (HTTP 302): moved on!",
        )

    async def test_forbidden(self) -> None:
        """
        A 403 with a JSON body is an authentication error with its message.
        """
        body = json.dumps({"error": "forbidden", "message": "token lacks access"}).encode()
        response = b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        await self.survive(
            writeAndClose(response),
            warning="rejected the token; check SPRITE_TOKEN (HTTP 403): forbidden - token lacks access",
        )

    async def test_serverErrorWithHugeBody(self) -> None:
        """
        A 5xx whose body is large and unterminated is cut short in the
        message.
        """
        body = b"<html>" + b"overloaded " * 5000
        response = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html\r\n\r\n" + body
        warnings = await self.survive(
            writeAndClose(response),
            warning="the Sprites API failed (HTTP 503): <html>overloaded overloaded",
        )
        self.assertIn("...", warnings[0])
        self.assertLess(len(warnings[0]), 600)

    async def test_garbageStatusLine(self) -> None:
        """
        Something that is not HTTP at all.
        """
        await self.survive(
            writeAndClose(b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
            warning="the connection closed before the tunnel was ready",
        )


class RelayTests(HostileServerMixin, TestCase):
    """
    Servers that misbehave once the tunnel is up.
    """

    async def test_textDuringRelayIgnored(self) -> None:
        """
        Text messages during the relay are not payload and do not break it.
        """
        await self.survive(
            accept,
            afterConnected(
                writeAndClose(
                    wsfake.text(b"noise")
                    + wsfake.binary(b"pi")
                    + wsfake.text(b'{"status": "connected"}')
                    + wsfake.binary(b"ng")
                    + wsfake.close(1000)
                )
            ),
            warning=None,
            expectReceived=b"ping",
        )

    async def test_hugeTextDuringRelayIgnored(self) -> None:
        """
        Text messages of any size during the relay (one 1 MiB frame, and a
        message fragmented into many frames) are ignored: the binary data
        around them arrives and the stream ends cleanly.
        """
        big = wsfake.text(b"x" * (1024 * 1024))
        fragmented = (
            wsfake.frame(0x1, b"y" * 70000, fin=False)
            + wsfake.frame(0x0, b"y" * 70000, fin=False)
            + wsfake.frame(0x0, b"y" * 70000, fin=True)
        )
        await self.survive(
            accept,
            afterConnected(
                writeAndClose(
                    wsfake.binary(b"be")
                    + big
                    + wsfake.binary(b"fo")
                    + fragmented
                    + wsfake.binary(b"re")
                    + wsfake.close(1000)
                )
            ),
            warning=None,
            expectReceived=b"before",
        )

    async def test_silentPathIsDead(self) -> None:
        """
        A sprite that stops answering (no pong to the pings sent every 15 s
        on the client's clock) is dead after 45 s: the local connection
        gets what arrived, then a reset, and one warning says why.
        """
        split = SplitReactor(reactor)
        relaying: Deferred[None] = Deferred()
        pings: list[bytes] = []
        pinged: list[Deferred[None]] = [Deferred(), Deferred()]

        def echoOnceThenSilence(server: ScriptedServer, opcode: int, payload: bytes) -> None:
            if opcode == 0x1:
                server.transport.write(CONNECTED)
            elif opcode == 0x2 and not relaying.called:
                server.transport.write(wsfake.binary(payload))
                relaying.callback(None)
            elif opcode == 0x9:
                pings.append(payload)
                pinged[len(pings) - 1].callback(None)

        async def silence(bad: LocalClient) -> None:
            await relaying
            await bad.whenReceived(4)
            for d in pinged:
                split.clock.advance(15)
                await d
            split.clock.advance(15)

        await self.survive(
            accept,
            echoOnceThenSilence,
            warning="is dead: no answer to pings for 45 s",
            expectReceived=b"ping",
            clientReactor=split,
            afterConnect=silence,
        )
        self.assertEqual(len(pings), 2)

    async def test_impossibleFrameLength(self) -> None:
        """
        A frame header claiming more than 2**63 bytes is a protocol error.
        """
        header = bytes([0x82, 127]) + struct.pack("!Q", 2**63 + 5)
        await self.survive(
            accept,
            afterConnected(writeAndClose(wsfake.binary(b"ok") + header + b"xxxx")),
            warning="connection: invalid data frame length (>2^63)",
            expectReceived=b"ok",
        )

    async def test_oddCloseCode(self) -> None:
        """
        An application close code is reported with its reason.
        """
        await self.survive(
            accept,
            afterConnected(writeAndClose(wsfake.binary(b"bye") + wsfake.close(4321, b"strange"))),
            warning="tunnel closed (code 4321): strange",
            expectReceived=b"bye",
        )

    async def test_invalidCloseCode(self) -> None:
        """
        A close code the protocol forbids is a protocol error.
        """
        await self.survive(
            accept,
            afterConnected(writeAndClose(wsfake.close(999))),
            warning="connection: invalid close code 999",
        )

    async def test_serverErrorClose(self) -> None:
        """
        1011 (server error) is reported.
        """
        await self.survive(
            accept,
            afterConnected(writeAndClose(wsfake.close(1011, b"internal"))),
            warning="tunnel closed (code 1011): internal",
        )

    async def test_dropMidStream(self) -> None:
        """
        A TCP connection dropped mid-stream delivers what arrived, then
        closes the local connection.
        """
        await self.survive(
            accept,
            afterConnected(writeAndClose(wsfake.binary(b"partial"))),
            warning="broke: Connection to the other side was lost in a non-clean fashion: "
            "tunnel closed (code 1006)",
            expectReceived=b"partial",
        )
