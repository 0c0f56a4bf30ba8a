"""
Shared helpers for the integration tests that run over real loopback
sockets (TLS, hostile peers, faults): tracked listeners that say when their
connections are all gone, a local client that records what it gets, a log
capture, a file descriptor count, and a reactor with real sockets but fake
time.

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from zope.interface import implementer

__all__ = [
    "Echo",
    "TrackingFactory",
    "LocalClient",
    "LogCapture",
    "SplitReactor",
    "listen",
    "countingFactory",
    "connectLocal",
    "roundTrip",
    "openFileDescriptors",
    "reactorRunning",
]


class Echo(Protocol):
    """
    Sends back what it receives.
    """

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class _RecordingWrapper(ProtocolWrapper):
    def dataReceived(self, data: bytes) -> None:
        self.factory.received += data
        super().dataReceived(data)


class TrackingFactory(WrappingFactory):
    """
    Wraps a server factory and knows its open connections, so that a test
    can wait until all of them are gone (trial wants a clean reactor).

    L{listen} puts it outermost, under TLS for an ``ssl:`` listener (Autobahn
    needs the TLS protocol itself as the transport of the HTTP channel).

    :ivar accepted: connections accepted so far.
    :ivar received: every byte received on them (TLS records for ``ssl:``).
    """

    protocol = _RecordingWrapper

    def __init__(self, wrappedFactory: IProtocolFactory) -> None:
        super().__init__(wrappedFactory)
        self.accepted = 0
        self.received = bytearray()
        self._idle: list[Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Any:
        self.accepted += 1
        return super().buildProtocol(addr)

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self._idle = self._idle, []
            for d in waiters:
                d.callback(None)

    def whenIdle(self) -> Deferred[None]:
        """
        Fires once no connection is open.
        """
        if not self.protocols:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d

    def abortAll(self) -> None:
        """
        Abort every open connection (a crash, as far as peers can tell).
        """
        for p in list(self.protocols):
            if p.transport is not None:
                p.transport.abortConnection()


class _TrackingReactor:
    """
    A reactor whose (only) C{listenTCP}/C{listenSSL} wraps the factory in a
    L{TrackingFactory}, outside TLS.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.tracked: TrackingFactory

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenTCP(self, port: int, factory: IProtocolFactory, *a: Any, **kw: Any) -> Any:
        self.tracked = TrackingFactory(factory)
        return self._reactor.listenTCP(port, self.tracked, *a, **kw)

    def listenSSL(
        self, port: int, factory: IProtocolFactory, contextFactory: Any, *a: Any, **kw: Any
    ) -> Any:
        return self.listenTCP(port, TLSMemoryBIOFactory(contextFactory, False, factory), *a, **kw)


async def listen(
    testCase: TestCase,
    reactor: Any,
    factory: IProtocolFactory,
    description: str = "tcp:0:interface=127.0.0.1",
) -> tuple[IListeningPort, TrackingFactory]:
    """
    Listen with C{factory} (tracked) on C{description}; on cleanup, wait
    for its connections to end, then stop listening.
    """
    tracking = _TrackingReactor(reactor)
    port = await serverFromString(tracking, description).listen(factory)
    tracked = tracking.tracked

    async def cleanup() -> None:
        await tracked.whenIdle()
        await maybeDeferred(port.stopListening)

    testCase.addCleanup(lambda: Deferred.fromCoroutine(cleanup()))
    return port, tracked


class LocalClient(Protocol):
    """
    A local application connecting to a forwarded port: records what
    arrives and how the connection ended.

    :ivar closed: fires (with C{None}) when the connection is gone.
    :ivar reason: why it ended (the C{connectionLost} reason).
    """

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self._wanted: list[tuple[int, Deferred[bytes]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        still = []
        for size, d in self._wanted:
            if len(self.received) >= size:
                d.callback(bytes(self.received))
            else:
                still.append((size, d))
        self._wanted = still

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        for _, d in self._wanted:
            d.errback(reason)
        self._wanted = []
        self.reason = reason
        self.closed.callback(None)

    def whenReceived(self, size: int) -> Deferred[bytes]:
        """
        Fires with everything received once at least C{size} bytes arrived
        (fails if the connection ends first).
        """
        if len(self.received) >= size:
            return succeed(bytes(self.received))
        d: Deferred[bytes] = Deferred()
        self._wanted.append((size, d))
        return d


def countingFactory(server: Any) -> Any:
    """
    The factory of a L{LocalSpriteServer}, made to record the headers of
    every HTTP request that reached it (lower-case names) in its
    C{requests} list.

    The recording is a subclass of the server's protocol rather than a
    wrapping protocol: under TLS, Autobahn needs the TLS transport itself.
    """
    factory = server.factory()
    factory.requests = requests = []

    class Recording(factory.protocol):  # type: ignore[misc,name-defined]
        _head = b""
        _recorded = False

        def dataReceived(self, data: bytes) -> None:
            if not self._recorded:
                self._head += data
                end = self._head.find(b"\r\n\r\n")
                if end >= 0:
                    self._recorded = True
                    headers = {}
                    for line in self._head[:end].split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        headers[name.strip().lower()] = value.strip()
                    requests.append(headers)
            super().dataReceived(data)

    factory.protocol = Recording
    return factory


def connectLocal(reactor: Any, port: int) -> Deferred[LocalClient]:
    """
    Connect a L{LocalClient} to 127.0.0.1:C{port}.
    """
    return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), LocalClient())


async def roundTrip(reactor: Any, port: int, payload: bytes) -> bytes:
    """
    One local connection to 127.0.0.1:C{port} through an echoing tunnel:
    send C{payload}, return what came back once all of it did, close.
    """
    local = await connectLocal(reactor, port)
    local.transport.write(payload)
    echoed = await local.whenReceived(len(payload))
    local.transport.loseConnection()
    await local.closed
    return echoed


_frozen = False


def _collectGarbage() -> None:
    """
    Collect all garbage now.  The first time, what survives (every module,
    the loaded test suite, and what is still in use) is then frozen
    (C{gc.freeze}): later collections only walk what was made since, so a
    collection costs a millisecond or so rather than tens of them, and
    still finds every unreachable object made after the freeze, such as a
    failed Deferred nobody handled.
    """
    global _frozen
    gc.collect()
    if not _frozen:
        gc.freeze()
        _frozen = True


@implementer(ILogObserver)
class LogCapture:
    """
    Every log event (all levels, Twisted and txaio/Autobahn alike, since
    both go through Twisted's global log publisher) while a test runs.
    """

    def __init__(self, testCase: TestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self)
        testCase.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def texts(self) -> list[str]:
        """
        Each event as every text it could be shown as: its formatted message,
        the repr of each field, and any failure's traceback.
        """
        out = []
        for event in self.events:
            parts = [formatEvent(event)]
            for key, value in event.items():
                parts.append(f"{key}={value!r}")
                if isinstance(value, Failure):
                    parts.append(value.getTraceback())
            out.append("\n".join(parts))
        return out

    def atLevel(self, level: LogLevel) -> list[str]:
        """
        The formatted messages logged at C{level}.
        """
        return [formatEvent(e) for e in self.events if e.get("log_level") == level]

    def problems(self) -> list[str]:
        """
        Formatted events that report an unexpected error: anything carrying a
        failure (C{log.failure}, "Unhandled error in Deferred") or logged at
        error/critical level.  Collects garbage first, so that a failed
        Deferred nobody handled gets reported now.
        """
        _collectGarbage()
        return [
            formatEvent(e)
            for e in self.events
            if "log_failure" in e or e.get("log_level") in (LogLevel.error, LogLevel.critical)
        ]


class SplitReactor:
    """
    The real reactor's sockets with a L{Clock}'s time: timeouts only fire
    when a test advances the clock, while bytes move over real loopback
    connections.

    Use IP literals with it (name resolution and C{HostnameEndpoint} schedule
    their work with C{callLater}).
    """

    def __init__(self, reactor: Any, clock: Clock | None = None) -> None:
        self._reactor = reactor
        self.clock = clock if clock is not None else Clock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def callLater(self, delay: float, f: Callable[..., Any], *a: Any, **kw: Any) -> Any:
        return self.clock.callLater(delay, f, *a, **kw)

    def seconds(self) -> float:
        return self.clock.seconds()

    def getDelayedCalls(self) -> Any:
        return self.clock.getDelayedCalls()


def openFileDescriptors() -> int:
    """
    How many file descriptors this process has open.

    Measure only once the reactor runs (see L{reactorRunning}): starting it
    opens a pipe for its SIGCHLD waker.
    """
    return len(os.listdir("/proc/self/fd"))


def reactorRunning(reactor: Any) -> Deferred[None]:
    """
    Fires once C{reactor} is running (a test method starts before trial
    starts the reactor).
    """
    return deferLater(reactor, 0, lambda: None)


def gatherAll(ds: list[Deferred[Any]]) -> Deferred[list[Any]]:
    """
    Fire with every result in order, or fail with the first failure.
    """
    d = DeferredList(ds, fireOnOneErrback=True, consumeErrors=True)
    return d.addCallback(lambda results: [value for _, value in results])


def echoFactory() -> Factory:
    """
    A factory of L{Echo} protocols.
    """
    return Factory.forProtocol(Echo)


class RecordingPort:
    """
    A listening port that remembers whether it was stopped.
    """

    def __init__(self, address: IPv4Address) -> None:
        self.address = address
        self.disconnected = False

    def stopListening(self) -> None:
        self.disconnected = True

    def getHost(self) -> IPv4Address:
        return self.address


class FailingListenReactor(MemoryReactorClock):
    """
    A memory reactor whose ports record C{stopListening}, and on which
    listening on the C{busy} ports fails.
    """

    def __init__(self, busy: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        super().__init__()
        self.busy = busy
        self.ports: list[RecordingPort] = []

    def listenTCP(self, port, factory, backlog=50, interface=""):  # type: ignore[no-untyped-def]
        if port in self.busy:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        super().listenTCP(port, factory, backlog, interface)
        recording = RecordingPort(IPv4Address("TCP", interface, port or 43210))
        self.ports.append(recording)
        return recording
