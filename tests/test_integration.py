# -*- test-case-name: tests.test_integration -*-
"""
Integration tests over real loopback sockets (127.0.0.1 only): a target
service, the local sprite server, and sessions forwarding local ports to the
target through real tunnels.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
from typing import Any

from twisted.internet import reactor as globalReactor
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import (
    CannotListenError,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from sprites_twisted import PortMapping, ProxyManager, SpritesClient
from sprites_twisted.errors import (
    HandshakeError,
    SpriteAuthError,
    SpriteNotFoundError,
    TunnelTimeoutError,
)
from sprites_twisted.pipe import resetAfterFlush
from sprites_twisted.server import LocalSpriteServer
from tests import wsfake
from tests.helpers import LogCapture, SplitReactor, roundTrip
from tests.suites import e2eRelay

TOKEN = "integration-token-5f2e"
reactor: Any = globalReactor


class Tracked(Protocol):
    """
    A protocol whose progress is observable: C{lost} fires (with the
    reason's exception) on connectionLost; L{receivedAtLeast} fires once
    that many bytes arrived.
    """

    def __init__(self) -> None:
        self.lost: Deferred[BaseException] = Deferred()
        self.received: list[bytes] = []
        self.count = 0
        self._waiting: list[tuple[int, Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)
        self.count += len(data)
        self._check()

    def _check(self) -> None:
        still = []
        for n, d in self._waiting:
            if self.count >= n:
                d.callback(None)
            else:
                still.append((n, d))
        self._waiting = still

    def receivedAtLeast(self, n: int) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting.append((n, d))
        self._check()
        return d

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost.callback(reason.value if reason is not None else None)


class TrackingFactory(Factory):
    """
    Builds C{protocol}s and can wait for all of them to be gone.
    """

    def __init__(self, protocol: type[Protocol], *args: Any) -> None:
        self.protocolClass = protocol
        self.args = args
        self.instances: list[Any] = []
        self._next: list[Deferred[Any]] = []

    def buildProtocol(self, addr: Any) -> Protocol:
        p = self.protocolClass(*self.args)
        p.factory = self
        self.instances.append(p)
        waiters, self._next = self._next, []
        for d in waiters:
            d.callback(p)
        return p

    def nextProtocol(self) -> Deferred[Any]:
        """
        Fires with the next protocol built (or the last one, if one was).
        """
        d: Deferred[Any] = Deferred()
        self._next.append(d)
        return d

    def allLost(self) -> Deferred[Any]:
        return DeferredList([p.lost for p in self.instances])


class EchoTarget(Tracked):
    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        self.transport.write(data)


class HashingTarget(Tracked):
    """
    Hashes what it receives and sends C{size} bytes of its own, reporting
    its digest when the client has sent C{expect} bytes.
    """

    def __init__(self, payload: bytes, expect: int) -> None:
        super().__init__()
        self.payload = payload
        self.expect = expect
        self.hash = hashlib.sha256()
        self.done: Deferred[str] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.hash.update(data)
        self.count += len(data)
        if self.count >= self.expect and not self.done.called:
            self.done.callback(self.hash.hexdigest())


@implementer(IPushProducer)
class FloodTarget(Tracked):
    """
    Sends C{size} bytes as fast as its transport lets it, as a push
    producer; C{paused} fires the first time the transport pauses it.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.sent = 0
        self.isPaused = False
        self.paused: Deferred[int] = Deferred()
        self.chunk = os.urandom(65536)
        self.hash = hashlib.sha256()

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.isPaused = False
        while not self.isPaused and self.sent < self.size:
            chunk = self.chunk[: self.size - self.sent]
            self.hash.update(chunk)
            self.sent += len(chunk)
            self.transport.write(chunk)
        if self.sent >= self.size:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def pauseProducing(self) -> None:
        self.isPaused = True
        if not self.paused.called:
            self.paused.callback(self.sent)

    def stopProducing(self) -> None:
        self.isPaused = True


class Harness:
    """
    A target, a local sprite server and a client, all on 127.0.0.1, torn
    down completely (every connection waited for) by the test's cleanups.
    """

    def __init__(self, test: TestCase) -> None:
        self.test = test
        self.cleanups: list[Any] = []

    async def start(self, targetFactory: Factory | None = None, **serverOptions: Any) -> None:
        self.targetFactory = targetFactory or TrackingFactory(EchoTarget)
        self.targetPort = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            self.targetFactory
        )
        self.server = LocalSpriteServer(reactor, TOKEN, **serverOptions)
        self.apiPort = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            self.server.factory()
        )
        self.test.addCleanup(self._stop)

    @property
    def apiURL(self) -> str:
        return f"http://127.0.0.1:{self.apiPort.getHost().port}"

    def client(
        self, token: str = TOKEN, clientReactor: Any = None, **options: Any
    ) -> SpritesClient:
        """
        A client of the local sprite server; C{clientReactor} (a
        L{SplitReactor}) puts its timeouts on a clock the test advances.
        """
        options.setdefault("drainTimeout", 0)
        options.setdefault("lingerTimeout", 0.5)
        options.setdefault("prewarm", 0)
        return SpritesClient(clientReactor or reactor, token, self.apiURL, **options)

    async def forward(self, remotePort: int | None = None, **options: Any) -> Any:
        port = remotePort or self.targetPort.getHost().port
        session = await self.client(**options).proxyPort("demo", 0, port)
        self.cleanups.append(session.close)
        return session

    async def dial(self, session: Any, protocol: Protocol) -> Any:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", session.localPort)
        return await connectProtocol(endpoint, protocol)

    async def _stop(self) -> None:
        for close in self.cleanups:
            await close()
        await self.server.whenIdle()
        await self.apiPort.stopListening()
        await self.targetPort.stopListening()
        if isinstance(self.targetFactory, TrackingFactory):
            await self.targetFactory.allLost()


@e2eRelay
class RelayTests(TestCase):
    """
    Data through real tunnels.
    """

    timeout = 60

    async def test_bytesExactBothWays(self) -> None:
        """
        Several MB each way, at the same time, arrive byte-exact (sha256).
        """
        down = os.urandom(6 * 1024 * 1024)
        up = os.urandom(5 * 1024 * 1024)
        targets = TrackingFactory(HashingTarget, down, len(up))
        h = Harness(self)
        await h.start(targets)
        session = await h.forward()
        local = Tracked()
        targetMade = targets.nextProtocol()
        await h.dial(session, local)
        local.transport.write(up)
        target = await targetMade
        self.assertEqual(await target.done, hashlib.sha256(up).hexdigest())
        await local.receivedAtLeast(len(down))
        self.assertEqual(local.count, len(down))
        self.assertEqual(
            hashlib.sha256(b"".join(local.received)).digest(), hashlib.sha256(down).digest()
        )
        local.transport.loseConnection()
        await local.lost

    async def test_hundredConcurrentConnections(self) -> None:
        """
        100 concurrent connections through one session each get their own
        bytes back.
        """
        h = Harness(self)
        await h.start()
        session = await h.forward()
        payloads = [os.urandom(20000) + b"%d" % i for i in range(100)]
        clients = [Tracked() for _ in payloads]
        await gatherResults([Deferred.fromCoroutine(h.dial(session, c)) for c in clients])
        for c, p in zip(clients, payloads, strict=True):
            c.transport.write(p)

        await gatherResults(
            [c.receivedAtLeast(len(p)) for c, p in zip(clients, payloads, strict=True)]
        )
        for c, p in zip(clients, payloads, strict=True):
            self.assertEqual(b"".join(c.received), p)
            c.transport.loseConnection()
        await gatherResults([c.lost for c in clients])
        self.assertEqual(len(h.targetFactory.instances), 100)


@e2eRelay
class FlowControlTests(TestCase):
    """
    A slow reader on either end pauses the other end, through the whole
    chain, instead of buffering everything in memory.
    """

    timeout = 60
    size = 64 * 1024 * 1024

    def watchPauses(self) -> dict[str, Deferred[None]]:
        """
        Fire C{client}/C{server} when a WebSocket stream transport on that
        side is paused (its consumer's buffer is full).
        """
        from sprites_twisted.tunnel import TunnelClientProtocol
        from sprites_twisted.wsstream import WebSocketStreamTransport

        fired = {"client": Deferred(), "server": Deferred()}
        original = WebSocketStreamTransport.pauseProducing

        def pauseProducing(stream: WebSocketStreamTransport) -> None:
            side = "client" if isinstance(stream.channel, TunnelClientProtocol) else "server"
            if not fired[side].called:
                fired[side].callback(None)
            original(stream)

        self.patch(WebSocketStreamTransport, "pauseProducing", pauseProducing)
        return fired

    def watchTCPPause(self, port: int) -> Deferred[None]:
        """
        Fire when the relay pauses a TCP connection with local or remote
        port C{port} (through the L{Pipe} that L{splice} registers as its producer).
        """
        from sprites_twisted import pipe

        fired: Deferred[None] = Deferred()
        original = pipe.Pipe.pauseProducing

        def pauseProducing(flow: Any) -> None:
            transport = flow.transport
            ports = (
                getattr(transport.getHost(), "port", None),
                getattr(transport.getPeer(), "port", None),
            )
            if port in ports and not fired.called:
                fired.callback(None)
            original(flow)

        self.patch(pipe.Pipe, "pauseProducing", pauseProducing)
        return fired

    async def test_slowLocalReader(self) -> None:
        """
        A local client that does not read pauses the tunnel, which pauses
        the target; once it reads, every byte arrives.
        """
        flood = TrackingFactory(FloodTarget, self.size)
        h = Harness(self)
        await h.start(flood)
        pauses = self.watchPauses()
        targetPaused = self.watchTCPPause(h.targetPort.getHost().port)
        session = await h.forward()
        local = Tracked()
        await h.dial(session, local)
        local.transport.pauseProducing()
        await pauses["client"]
        await targetPaused
        target = flood.instances[0]
        await target.paused
        self.assertLess(target.sent, self.size // 2)
        local.transport.resumeProducing()
        await local.receivedAtLeast(self.size)
        self.assertEqual(hashlib.sha256(b"".join(local.received)).digest(), target.hash.digest())
        await local.lost

    async def test_slowTarget(self) -> None:
        """
        A target that does not read pauses the tunnel, which pauses the
        local client; once it reads, every byte arrives.
        """

        class Lazy(Tracked):
            def connectionMade(self) -> None:
                self.transport.pauseProducing()

        lazy = TrackingFactory(Lazy)
        h = Harness(self)
        await h.start(lazy)
        pauses = self.watchPauses()
        session = await h.forward()
        localPaused = self.watchTCPPause(session.localPort)
        targetMade = lazy.nextProtocol()
        local = FloodTarget(self.size)
        await h.dial(session, local)
        target = await targetMade
        await pauses["server"]
        await localPaused
        await local.paused
        self.assertLess(local.sent, self.size // 2)
        target.transport.resumeProducing()
        await target.receivedAtLeast(self.size)
        self.assertEqual(hashlib.sha256(b"".join(target.received)).digest(), local.hash.digest())
        await local.lost


class RefusalTests(TestCase):
    """
    Refused tunnels give typed errors, close only their own connection, are
    logged, and the listener keeps serving.
    """

    timeout = 30

    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def warnings(self) -> list[str]:
        return [e["error"] for e in self.events if e["log_level"].name == "warn" and "error" in e]

    async def refusedConnection(self, h: Harness, session: Any) -> BaseException:
        """
        Dial C{session}: the refused tunnel resets the local connection.
        """
        local = Tracked()
        await h.dial(session, local)
        local.transport.write(b"hello?")
        reason = await local.lost
        self.assertIsInstance(reason, ConnectionLost)
        return reason

    async def test_badTokenThenGood(self) -> None:
        """
        A bad token closes the connection with a logged 401; after the
        token is fixed on the server side, the same listener works.
        """
        h = Harness(self)
        await h.start()
        session = await h.forward(token="not-the-token")
        await self.refusedConnection(h, session)
        self.assertEqual(len(self.warnings()), 1)
        self.assertIn("HTTP 401", self.warnings()[0])
        h.server._token = b"not-the-token"
        self.assertEqual(await roundTrip(reactor, session.localPort, b"ping"), b"ping")

    async def test_unknownSpriteThenKnown(self) -> None:
        """
        An unknown sprite gives a logged 404; the listener keeps serving.
        """
        h = Harness(self)
        await h.start(sprites=["other"])
        session = await h.forward()
        await self.refusedConnection(h, session)
        self.assertIn("HTTP 404", self.warnings()[0])
        self.assertIn("no sprite named 'demo'", self.warnings()[0])
        h.server.sprites = frozenset({"demo"})
        self.assertEqual(await roundTrip(reactor, session.localPort, b"ping"), b"ping")

    async def test_targetRefusedThenUp(self) -> None:
        """
        A refused target gives the server's reason; once the target
        listens, the listener works.
        """
        h = Harness(self)
        await h.start()
        probe = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory())
        freePort = probe.getHost().port
        await probe.stopListening()
        session = await h.forward(remotePort=freePort)
        await self.refusedConnection(h, session)
        self.assertIn(f"cannot connect to localhost:{freePort}", self.warnings()[0])
        late = await TCP4ServerEndpoint(reactor, freePort, interface="127.0.0.1").listen(
            TrackingFactory(EchoTarget)
        )
        self.addCleanup(late.stopListening)
        self.assertEqual(await roundTrip(reactor, session.localPort, b"ping"), b"ping")

    async def test_proxySocketErrors(self) -> None:
        """
        proxySocket fails with the typed errors.
        """
        h = Harness(self)
        await h.start(sprites=["demo"])
        port = h.targetPort.getHost().port
        with self.assertRaises(SpriteAuthError):
            await h.client(token="bad").proxySocket(
                "tcp", "demo", f":{port}", Factory.forProtocol(Protocol)
            )
        with self.assertRaises(SpriteNotFoundError):
            await h.client().proxySocket("tcp", "nope", f":{port}", Factory.forProtocol(Protocol))
        with self.assertRaises(HandshakeError):
            await h.client().proxySocket(
                "tcp", "demo", "10.255.255.1:1", Factory.forProtocol(Protocol)
            )

    async def test_scriptedServerFailures(self) -> None:
        """
        A non-JSON reply and no reply at all (timeout) each close the local
        connection with a logged reason, and the listener then serves a
        good tunnel.
        """
        h = Harness(self)
        await h.start()
        switch = SwitchFactory(wsfake.acceptThenReply(wsfake.text(b"<html>oops</html>")))
        api = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(switch)
        self.addCleanup(api.stopListening)
        # The handshake timeout runs on a clock of the test's.
        split = SplitReactor(reactor)
        client = SpritesClient(
            split,
            TOKEN,
            f"http://127.0.0.1:{api.getHost().port}",
            handshakeTimeout=0.5,
            drainTimeout=0,
            lingerTimeout=0.5,
            prewarm=0,
        )
        session = await client.proxyPort("demo", 0, h.targetPort.getHost().port)
        h.cleanups.append(session.close)
        await self.refusedConnection(h, session)
        self.assertIn("not JSON", self.warnings()[-1])
        initArrived: Deferred[None] = Deferred()

        def silent(server: wsfake.ScriptedServer, opcode: int, payload: bytes) -> None:
            if opcode == 0x1 and not initArrived.called:
                initArrived.callback(None)

        switch.current = wsfake.ScriptedServerFactory(
            lambda server, request: server.accept(), silent
        )
        local = Tracked()
        await h.dial(session, local)
        local.transport.write(b"hello?")
        await initArrived
        self.assertFalse([w for w in self.warnings() if "no answer" in w])
        split.clock.advance(0.5)
        self.assertIsInstance(await local.lost, ConnectionLost)
        self.assertIn("no answer from the sprite within 0.5 s", self.warnings()[-1])
        switch.current = h.server.factory()
        self.assertEqual(await roundTrip(reactor, session.localPort, b"ping"), b"ping")
        self.flushLoggedErrors(TunnelTimeoutError)


class SwitchFactory(Factory):
    """
    Delegates buildProtocol to whichever factory is C{current}.
    """

    def __init__(self, current: Factory) -> None:
        self.current = current

    def buildProtocol(self, addr: Any) -> Protocol | None:
        return self.current.buildProtocol(addr)


class SessionLifecycleTests(TestCase):
    """
    Sessions over real sockets: all-or-nothing start, close, wait.
    """

    timeout = 30

    async def test_proxyPortsRollback(self) -> None:
        """
        With one local port taken, proxyPorts fails naming it and the other
        listeners are closed.
        """
        h = Harness(self)
        await h.start()
        taken = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory())
        self.addCleanup(taken.stopListening)
        takenPort = taken.getHost().port
        probe = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory())
        freePort = probe.getHost().port
        await probe.stopListening()
        remote = h.targetPort.getHost().port
        with self.assertRaises(CannotListenError) as ctx:
            await h.client().proxyPorts(
                "demo",
                [
                    PortMapping(freePort, remote),
                    PortMapping(takenPort, remote),
                    PortMapping(0, remote),
                ],
            )
        self.assertIn(str(takenPort), str(ctx.exception))
        with self.assertRaises(ConnectionRefusedError):
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", freePort), Protocol())

    async def test_closeAllLeavesNothingOpen(self) -> None:
        """
        closeAll stops listening and closes open connections and their
        tunnels; wait() fires before and after; close() twice is fine.
        """
        h = Harness(self)
        await h.start()
        client = h.client(drainTimeout=0.01)
        manager = ProxyManager()
        remote = h.targetPort.getHost().port
        for mapping in [PortMapping(0, remote), PortMapping(0, remote)]:
            manager.addSession(client.session("demo", mapping))
        manager.startService()
        await manager.whenReady()  # the sprite was checked, then both listen
        session = manager.sessions[0]
        waited = session.wait()
        local = Tracked()
        await h.dial(session, local)
        local.transport.write(b"x")
        await local.receivedAtLeast(1)
        tunnel = next(iter(session.factory.connections)).peer.transport
        await manager.closeAll()
        self.assertTrue(waited.called)
        await session.wait()
        await session.close()
        await session.close()
        self.assertEqual(session.factory.connections, set())
        self.assertIsNone(tunnel.protocol)  # the stream transport let go
        self.assertFalse(tunnel.channel.getTCPTransport().connected)
        await local.lost
        self.assertTrue(all(s.localAddr() is None for s in manager.sessions))
        await manager.waitAll()


class HalfCloseTests(TestCase):
    """
    A local client that shuts down its sending side still gets the reply.
    """

    timeout = 30

    async def test_replyAfterHalfClose(self) -> None:
        """
        The request is sent, the client half-closes, and the whole reply
        (sent by the target afterwards) still arrives before the close.
        """

        requested: Deferred[Tracked] = Deferred()

        class Answer(Tracked):
            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                if b"\n" in b"".join(self.received) and not requested.called:
                    requested.callback(self)

        h = Harness(self)
        await h.start(TrackingFactory(Answer))
        # The linger runs on a clock of the test's, advanced once the reply
        # is in: the target never closes, the linger's end closes.
        split = SplitReactor(reactor)
        session = await h.forward(clientReactor=split)
        local = Tracked()
        await h.dial(session, local)
        local.transport.write(b"request\n")
        local.transport.loseWriteConnection()
        target = await requested
        # The reply is sent only once the client has half-closed.
        target.transport.write(b"R" * 300000)
        target.transport.write(b"end")
        await local.receivedAtLeast(300003)
        self.assertFalse(local.lost.called)
        split.clock.advance(0.5)
        reason = await local.lost
        self.assertEqual(b"".join(local.received), b"R" * 300000 + b"end")
        self.assertIsInstance(reason, ConnectionDone)
        self.assertIsInstance(await target.lost, ConnectionDone)


def resetSocket(transport: Any) -> None:
    """
    Reset a TCP connection now (an RST, nothing more delivered).
    """
    transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abortConnection()


class SendThenEnd(Tracked):
    """
    A target that sends C{payload} as soon as the client's first bytes
    arrive, then ends: a FIN, or (C{reset}) an RST once all of it was sent.
    """

    def __init__(self, payload: bytes, reset: bool) -> None:
        super().__init__()
        self.payload = payload
        self.reset = reset

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.count > len(data):
            return
        self.transport.write(self.payload)
        if self.reset:
            resetAfterFlush(self.transport, reactor)
        else:
            self.transport.loseConnection()


class StreamEndTests(TestCase):
    """
    How one side ended is how the other side ends: a clean end is a FIN
    (WebSocket close 1000), a broken one is a reset (close 1011) after
    every byte that arrived, and the server's log says which.
    """

    timeout = 60

    async def endToEnd(self, payload: bytes, reset: bool) -> tuple[Tracked, list[str]]:
        targets = TrackingFactory(SendThenEnd, payload, reset)
        h = Harness(self)
        await h.start(targets)
        session = await h.forward()
        logs = LogCapture(self)
        local = Tracked()
        targetMade = targets.nextProtocol()
        await h.dial(session, local)
        local.transport.write(b"go")
        await (await targetMade).lost
        await local.lost
        await session.factory.whenIdle()
        return local, logs.texts()

    async def test_targetFINIsFIN(self) -> None:
        """
        A target that closes cleanly: the local client gets every byte, then
        a clean end of stream; the server logged a close by the target.
        """
        payload = os.urandom(256 * 1024)
        local, logs = await self.endToEnd(payload, reset=False)
        self.assertIsInstance(await local.lost, ConnectionDone)
        self.assertEqual(b"".join(local.received), payload)
        self.assertTrue(any("ended (the target closed)" in line for line in logs), logs)

    async def test_targetResetIsReset(self) -> None:
        """
        A target that resets: the local client gets every byte it sent
        (none lost), then a reset (ECONNRESET), never a clean end; the
        server closed with 1011, which the client logged as a broken tunnel.
        """
        payload = os.urandom(256 * 1024)
        local, logs = await self.endToEnd(payload, reset=True)
        self.assertIsInstance(await local.lost, ConnectionLost)
        self.assertEqual(len(b"".join(local.received)), len(payload))
        self.assertEqual(b"".join(local.received), payload)
        self.assertTrue(any("ended (the target reset)" in line for line in logs), logs)
        broke = [line for line in logs if "broke" in line]
        self.assertEqual(len(broke), 1, logs)
        self.assertIn("code 1011", broke[0])

    async def test_localResetResetsTarget(self) -> None:
        """
        A local client that resets its connection: what it sent reaches the
        target, then the target's connection is reset; the server saw close
        code 1011.
        """
        targets = TrackingFactory(EchoTarget)
        h = Harness(self)
        await h.start(targets)
        session = await h.forward()
        logs = LogCapture(self)
        local = Tracked()
        targetMade = targets.nextProtocol()
        await h.dial(session, local)
        local.transport.write(b"last words")
        target = await targetMade
        await target.receivedAtLeast(10)
        await local.receivedAtLeast(10)
        resetSocket(local.transport)
        self.assertIsInstance(await target.lost, ConnectionLost)
        self.assertEqual(b"".join(target.received), b"last words")
        await session.factory.whenIdle()
        await h.server.whenIdle()
        ended = [line for line in logs.texts() if "ended (" in line]
        self.assertEqual(len(ended), 1, logs.texts())
        self.assertIn("the client closed with 1011: the target was reset", ended[0])

    async def test_localFINIsFINAtTarget(self) -> None:
        """
        A local client that closes cleanly: after the linger, the tunnel
        closes with 1000 and the target sees a clean end.
        """
        targets = TrackingFactory(EchoTarget)
        h = Harness(self)
        await h.start(targets)
        session = await h.forward(lingerTimeout=0.01)
        logs = LogCapture(self)
        local = Tracked()
        targetMade = targets.nextProtocol()
        await h.dial(session, local)
        local.transport.write(b"bye")
        target = await targetMade
        await local.receivedAtLeast(3)
        local.transport.loseConnection()
        self.assertIsInstance(await target.lost, ConnectionDone)
        await h.server.whenIdle()
        ended = [line for line in logs.texts() if "ended (" in line]
        self.assertIn("the client closed with 1000", ended[0])


class SocketOptionTests(TestCase):
    """
    Sockets of a forwarded connection notice a dead peer by themselves.
    """

    async def test_tcpKeepalive(self) -> None:
        """
        TCP keepalive is on for the accepted local connection and for the
        tunnel's connection to the API.
        """
        h = Harness(self)
        await h.start()
        session = await h.forward()
        local = Tracked()
        await h.dial(session, local)
        local.transport.write(b"x")
        await local.receivedAtLeast(1)
        (proto,) = session.factory.connections
        tunnelTCP = proto.peer.transport.channel.getTCPTransport()
        for transport in (proto.transport, tunnelTCP):
            handle = transport.getHandle()
            self.assertEqual(handle.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        local.transport.loseConnection()
        await local.lost


class EarlyDataTests(TestCase):
    """
    Early data against the local sprite server over loopback.
    """

    async def test_earlyDataRoundTrip(self) -> None:
        """
        With earlyData, a request sent at once is answered, through a cold
        tunnel and then through the warm one it left behind.
        """
        h = Harness(self)
        await h.start()
        # Each local client ends with a FIN: the tunnel lingers, briefly.
        session = await h.forward(earlyData=True, prewarm=1, lingerTimeout=0.01)
        for attempt in (b"cold request", b"warm request"):
            local = Tracked()
            await h.dial(session, local)
            local.transport.write(attempt)
            await local.receivedAtLeast(len(attempt))
            self.assertEqual(b"".join(local.received), attempt)
            local.transport.loseConnection()
            self.assertIsInstance(await local.lost, ConnectionDone)
            await session.factory.whenIdle()
