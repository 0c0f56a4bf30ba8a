# -*- test-case-name: tests.test_faults -*-
"""
Faults, end to end over loopback: the sprite side restarting under open
tunnels, a target resetting mid-stream, thousands of connections opened
and closed (no file descriptor may leak), and many concurrent connections
of random sizes in both directions (every byte must arrive, in order).
"""

from __future__ import annotations

import hashlib
import random
import socket
import struct
from typing import Any

from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogLevel
from twisted.trial.unittest import TestCase

from sprites_twisted.client import SpritesClient
from sprites_twisted.server import LocalSpriteServer
from sprites_twisted.session import ProxySession
from tests.helpers import (
    LocalClient,
    LogCapture,
    connectLocal,
    echoFactory,
    gatherAll,
    listen,
    openFileDescriptors,
    reactorRunning,
    roundTrip,
)
from tests.suites import E2E

# Subprocess and load tests: make e2e.
SUITE = E2E

reactor: Any = _globalReactor

TOKEN = "faults-test-token"


class FaultsMixin:
    """
    A local sprite server, a target and a forwarded port, all on loopback.
    """

    async def forward(
        self: Any, targetFactory: Factory, spritePort: int = 0
    ) -> tuple[ProxySession, Any, Any]:
        """
        Start a target, a sprite server and a session forwarding to it.
        Returns the session, the sprite server's port and its tracker (the
        target's tracker is C{self.target}).
        """
        target, self.target = await listen(self, reactor, targetFactory)
        server = LocalSpriteServer(reactor, TOKEN)
        port, tracked = await listen(
            self, reactor, server.factory(), f"tcp:{spritePort}:interface=127.0.0.1"
        )
        client = SpritesClient(
            reactor,
            TOKEN,
            f"ws://127.0.0.1:{port.getHost().port}",
            handshakeTimeout=10,
            lingerTimeout=0.01,
            drainTimeout=0,
            prewarm=0,
        )
        session = await client.proxyPort("demo", 0, target.getHost().port, "127.0.0.1")
        self.addCleanup(session.close)
        return session, port, tracked

    async def idle(self: Any, session: ProxySession, tracked: Any) -> None:
        """
        Wait until the session, the sprite server and the target have no
        connection left.
        """
        await session.factory.whenIdle()
        await tracked.whenIdle()
        await self.target.whenIdle()

    async def roundTrip(self: Any, session: ProxySession, payload: bytes = b"ping") -> bytes:
        """
        One connection: send C{payload}, get it echoed, close.
        """
        return await roundTrip(reactor, session.localPort, payload)


class SpriteRestartTests(FaultsMixin, TestCase):
    """
    The sprite side going away and coming back.
    """

    async def test_restartUnderOpenTunnels(self) -> None:
        """
        Open tunnels end (their local connections close, with a warning),
        connections while it is down are refused, and new connections work
        once it is back on the same port.
        """
        session, port, tracked = await self.forward(echoFactory())
        address = port.getHost().port
        logs = LogCapture(self)
        open_ = []
        for _ in range(3):
            local = await connectLocal(reactor, session.localPort)
            local.transport.write(b"up")
            await local.whenReceived(2)
            open_.append(local)

        # Crash: every connection of the sprite server drops, then it
        # stops listening.
        tracked.abortAll()
        await tracked.whenIdle()
        await maybeDeferred(port.stopListening)
        for local in open_:
            await local.closed
            self.assertEqual(bytes(local.received), b"up")
            # A cut stream is a reset, never a clean end.
            assert local.reason is not None
            self.assertIsInstance(local.reason.value, ConnectionLost)
        await session.factory.whenIdle()
        broke = [w for w in logs.atLevel(LogLevel.warn) if "broke" in w]
        self.assertEqual(len(broke), 3)
        for line in broke:
            self.assertIn("tunnel closed (code 1006)", line)
            self.assertIn("peer dropped the TCP connection", line)

        down = await connectLocal(reactor, session.localPort)
        await down.closed
        assert down.reason is not None
        self.assertIsInstance(down.reason.value, ConnectionLost)
        self.assertIn("cannot reach the Sprites API", logs.atLevel(LogLevel.warn)[-1])

        # Back on the same port: the same session works again.
        server = LocalSpriteServer(reactor, TOKEN)
        await listen(self, reactor, server.factory(), f"tcp:{address}:interface=127.0.0.1")
        self.assertEqual(await self.roundTrip(session, b"back"), b"back")
        self.assertEqual(logs.problems(), [])


class _Resetter(Protocol):
    """
    A target that answers with some data, then resets the connection (RST).
    """

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        handle = self.transport.getHandle()
        # Straight into the kernel (Twisted's buffer would be dropped by
        # the abort), then an RST.
        handle.sendall(b"before reset")
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abortConnection()


class TargetResetTests(FaultsMixin, TestCase):
    """
    A target that resets mid-stream.
    """

    async def test_resetClosesLocalConnection(self) -> None:
        """
        The local client gets what arrived before the reset, then a reset
        of its own (it does not hang, and it is not a clean end); the
        server closed the tunnel with 1011, and the port keeps serving.
        """
        session, _, tracked = await self.forward(Factory.forProtocol(_Resetter))
        logs = LogCapture(self)
        local = await connectLocal(reactor, session.localPort)
        local.transport.write(b"hello")
        await local.closed
        self.assertEqual(bytes(local.received), b"before reset")
        assert local.reason is not None
        self.assertIsInstance(local.reason.value, ConnectionLost)
        await session.factory.whenIdle()
        await tracked.whenIdle()
        texts = logs.texts()
        self.assertTrue(any("ended (the target reset)" in t for t in texts), texts)
        broke = [t for t in texts if "broke" in t]
        self.assertEqual(len(broke), 1, texts)
        self.assertIn("tunnel closed (code 1011)", broke[0])
        self.assertEqual(logs.problems(), [])


class _Exchange(Protocol):
    """
    A target that, after a 12-byte header (bytes to expect, bytes to send,
    seed), streams its own pseudo-random bytes while hashing what it gets,
    and sends the SHA-256 of what it got once it has it all.
    """

    def __init__(self) -> None:
        self.header = b""
        self.expected = -1
        self.hash = hashlib.sha256()
        self.got = 0

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        if self.expected < 0:
            self.header += data
            if len(self.header) < 12:
                return
            self.expected, size, self.seed = struct.unpack("!III", self.header[:12])
            data = self.header[12:]
            self.transport.write(random.Random(self.seed).randbytes(size))
            if self.expected == 0:
                self.transport.write(self.hash.digest())
        self.hash.update(data)
        self.got += len(data)
        if self.got == self.expected:
            self.transport.write(self.hash.digest())


class LoadTests(FaultsMixin, TestCase):
    """
    Many connections.
    """

    #: Connections opened and closed by L{test_noDescriptorLeak}.
    CONNECTIONS = 5000
    #: Below the listen backlog (50): a full SYN queue costs a 1 s retry.
    BATCH = 40

    async def test_noDescriptorLeak(self) -> None:
        """
        Thousands of connections, opened and closed in concurrent batches,
        leave the number of open file descriptors where it was.
        """
        session, _, tracked = await self.forward(echoFactory())
        await reactorRunning(reactor)
        await self.roundTrip(session)
        await self.idle(session, tracked)
        before = openFileDescriptors()
        for start in range(0, self.CONNECTIONS, self.BATCH):
            batch = range(start, start + self.BATCH)
            echoed = await gatherAll(
                [Deferred.fromCoroutine(self.roundTrip(session, b"%d" % i)) for i in batch]
            )
            self.assertEqual(echoed[-1], b"%d" % (start + self.BATCH - 1))
        await self.idle(session, tracked)
        self.assertEqual(tracked.accepted, self.CONNECTIONS + 1)
        self.assertEqual(openFileDescriptors(), before)

    async def test_randomSizesBothWays(self) -> None:
        """
        Concurrent connections with random sizes each way deliver every byte
        exactly, in both directions.
        """
        session, _, tracked = await self.forward(Factory.forProtocol(_Exchange))
        rng = random.Random(4)
        cases = [(rng.randrange(0, 400_000), rng.randrange(0, 400_000), seed) for seed in range(40)]

        async def one(up: int, down: int, seed: int) -> None:
            payload = random.Random(seed + 1000).randbytes(up)
            local: LocalClient = await connectLocal(reactor, session.localPort)
            local.transport.write(struct.pack("!III", up, down, seed))
            for offset in range(0, up, 65536):
                local.transport.write(payload[offset : offset + 65536])
            received = await local.whenReceived(down + 32)
            self.assertEqual(len(received), down + 32)
            self.assertEqual(received[:down], random.Random(seed).randbytes(down))
            self.assertEqual(received[down:], hashlib.sha256(payload).digest())
            local.transport.loseConnection()
            await local.closed

        await gatherAll([Deferred.fromCoroutine(one(*case)) for case in cases])
        self.assertEqual(tracked.accepted, len(cases))
