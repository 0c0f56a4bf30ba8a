"""
Tests for L{sprites_twisted.portscan}: parsing ``/proc/net/tcp*``, the
scanner's diffs and pids on a C{Clock}, the real ``/proc`` of this process,
and the watch resource's refusals over loopback.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import reactor as globalReactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sprites_twisted.portscan import (
    ListeningSocket,
    PortScanner,
    mountPortWatch,
    parseProcNetTCP,
)
from sprites_twisted.server import LocalSpriteServer
from tests.helpers import LocalClient

reactor: Any = globalReactor
TOKEN = "scan-token-31f0"

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0
   1: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 222 1 0 100 0 0 10 0
   2: 0100007F:0BB8 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 333 1 0 100 0 0 10 0
   3: 0501A8C0:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 444 1 0 100 0 0 10 0
   4: 0200007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 555 1 0 100 0 0 10 0
   5: garbage line
"""

TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1538 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 666 1 0 100 0 0 10 0
   1: 00000000000000000000000001000000:1539 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 777 1 0 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:153A 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 888 1 0 100 0 0 10 0
   3: B80D0120000000000000000001000000:153B 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 999 1 0 100 0 0 10 0
"""


class ParseTests(SynchronousTestCase):
    """
    L{parseProcNetTCP} keeps LISTEN sockets on loopback and wildcard
    addresses only.
    """

    def test_ipv4(self) -> None:
        """
        Wildcard and loopback listeners are kept; connected sockets,
        other addresses and garbage are not.
        """
        self.assertEqual(
            parseProcNetTCP(TCP),
            [("0.0.0.0", 22, 111), ("127.0.0.1", 3000, 222), ("127.0.0.2", 8081, 555)],
        )

    def test_ipv6(self) -> None:
        """
        ``::``, ``::1`` and v4-mapped loopback are kept; a global address is
        not.
        """
        self.assertEqual(
            parseProcNetTCP(TCP6),
            [("::", 5432, 666), ("::1", 5433, 777), ("127.0.0.1", 5434, 888)],
        )


class FakeProc:
    def __init__(self) -> None:
        self.tcp = TCP
        self.tcp6 = TCP6
        self.reads = 0
        self.fds = {"42": {"3": "socket:[222]", "4": "pipe:[1]"}, "43": {"5": "socket:[666]"}}

    def read(self, path: str) -> str:
        self.reads += 1
        if path == "/p/net/tcp":
            return self.tcp
        if path == "/p/net/tcp6":
            return self.tcp6
        raise FileNotFoundError(2, "No such file or directory")

    def listDirectory(self, path: str) -> list[str]:
        if path == "/p":
            return ["self", "1", *self.fds]
        pid = path.split("/")[2]
        if pid in self.fds:
            return list(self.fds[pid])
        raise PermissionError(13, "Permission denied")

    def readLink(self, path: str) -> str:
        parts = path.split("/")
        return self.fds[parts[2]][parts[4]]


class ScannerTests(SynchronousTestCase):
    """
    L{PortScanner} scans once a second while subscribed and reports diffs.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.proc = FakeProc()
        self.scanner = PortScanner(
            self.clock,
            procRoot="/p",
            read=self.proc.read,
            listDirectory=self.proc.listDirectory,
            readLink=self.proc.readLink,
        )
        self.events: list[tuple[str, ListeningSocket]] = []

    def record(self, kind: str, socket: ListeningSocket) -> None:
        self.events.append((kind, socket))

    def test_firstListWithPids(self) -> None:
        """
        The first subscriber gets the current ports, one per port number,
        with the pids found in ``/proc/*/fd``.
        """
        ports = self.scanner.subscribe(self.record)
        self.assertEqual(
            ports,
            [
                ListeningSocket(22, "0.0.0.0", None),
                ListeningSocket(3000, "127.0.0.1", 42),
                ListeningSocket(5432, "::", 43),
                ListeningSocket(5433, "::1", None),
                ListeningSocket(5434, "127.0.0.1", None),
                ListeningSocket(8081, "127.0.0.2", None),
            ],
        )

    def test_diffsEverySecond(self) -> None:
        """
        A scan a second reports closed then opened ports; nothing when
        nothing changed.
        """
        self.scanner.subscribe(self.record)
        reads = self.proc.reads
        self.clock.advance(1)
        self.assertEqual(self.proc.reads, reads + 2)
        self.assertEqual(self.events, [])
        self.proc.tcp = TCP.replace("0BB8", "0BB9")  # 3000 -> 3001
        self.proc.tcp6 = ""
        self.clock.advance(1)
        kinds = [(k, s.port) for k, s in self.events]
        self.assertEqual(
            kinds,
            [
                ("port_closed", 3000),
                ("port_closed", 5432),
                ("port_closed", 5433),
                ("port_closed", 5434),
                ("port_opened", 3001),
            ],
        )

    def test_scansOnlyWhileWatched(self) -> None:
        """
        The last unsubscribe stops the scans.
        """
        self.scanner.subscribe(self.record)
        self.scanner.subscribe(print)
        self.scanner.unsubscribe(print)
        self.assertTrue(self.clock.getDelayedCalls())
        self.scanner.unsubscribe(self.record)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unreadable(self) -> None:
        """
        An unreadable file is logged once and skipped.
        """
        logs = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.scanner.procRoot = "/nowhere"
        self.assertEqual(self.scanner.subscribe(self.record), [])
        self.clock.advance(5)
        self.scanner.unsubscribe(self.record)
        texts = [formatEvent(e) for e in logs]
        self.assertEqual(
            texts,
            [
                "cannot read /nowhere/net/tcp: No such file or directory",
                "cannot read /nowhere/net/tcp6: No such file or directory",
            ],
        )

    def test_realProc(self) -> None:
        """
        On this machine, a port this process listens on is found, with this
        process's pid.
        """
        if not os.path.exists("/proc/net/tcp"):
            self.skipTest("no /proc/net/tcp")
        from twisted.internet import reactor

        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        scanner = PortScanner(Clock())
        ports = {s.port: s for s in scanner.subscribe(self.record)}
        scanner.unsubscribe(self.record)
        number = port.getHost().port
        self.assertIn(number, ports)
        self.assertEqual(ports[number].pid, os.getpid())
        self.assertEqual(ports[number].address, "127.0.0.1")


class ResourceTests(TestCase):
    """
    The watch resource over loopback: refusals as JSON, ``--sprite``
    honoured, ``port_list`` first on success.
    """

    async def _serve(self, **kw: Any) -> int:
        proc = FakeProc()
        scanner = PortScanner(reactor, procRoot="/p", read=proc.read, listDirectory=lambda p: [])
        server = LocalSpriteServer(reactor, TOKEN, **kw)
        mountPortWatch(server, scanner)
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(server.factory())
        self.addCleanup(port.stopListening)
        return port.getHost().port  # type: ignore[no-any-return]

    async def _request(self, port: int, path: str, token: str | None = TOKEN) -> bytes:
        local = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), LocalClient())
        headers = [
            f"GET {path} HTTP/1.1",
            "Host: 127.0.0.1",
            "Connection: close",
        ]
        if token is not None:
            headers.append(f"Authorization: Bearer {token}")
        local.transport.write(("\r\n".join(headers) + "\r\n\r\n").encode())
        await local.closed
        return bytes(local.received)

    def test_refusals(self) -> None:
        """
        A wrong token is 401, an unserved sprite or another path 404, a
        plain GET 400; each a JSON body naming the problem.
        """

        async def run() -> None:
            port = await self._serve(sprites=["box"])
            for path, token, status, code in [
                ("/v1/sprites/box/ports/watch", "nope", 401, "unauthorized"),
                ("/v1/sprites/box/ports/watch", None, 401, "unauthorized"),
                ("/v1/sprites/other/ports/watch", TOKEN, 404, "sprite_not_found"),
                ("/v1/sprites/box/ports", TOKEN, 404, "not_found"),
                ("/elsewhere", TOKEN, 404, "not_found"),
                ("/v1/sprites/box/ports/watch", TOKEN, 400, "bad_request"),
            ]:
                response = await self._request(port, path, token)
                head, _, body = response.partition(b"\r\n\r\n")
                self.assertTrue(head.startswith(f"HTTP/1.1 {status}".encode()), (path, head))
                if b"chunked" in head.lower():
                    body = body.split(b"\r\n")[1]
                self.assertEqual(json.loads(body)["error"], code, path)

        return Deferred.fromCoroutine(run())

    def test_listFirst(self) -> None:
        """
        An authorised upgrade gets ``port_list`` as its first message.
        """
        from sprites_twisted.portwatch import PortWatcher

        async def run() -> None:
            port = await self._serve()
            lists: list[list[int]] = []
            done: Deferred[None] = Deferred()

            class Observer:
                def portOpened(self, p: Any) -> None:
                    lists.append([p.port])
                    if len(lists) == 6 and not done.called:
                        done.callback(None)

                def portClosed(self, p: Any) -> None:
                    pass

            watcher = PortWatcher(
                reactor,
                "box",
                Observer(),  # type: ignore[arg-type]
                token=TOKEN,
                apiURL=f"http://127.0.0.1:{port}",
                transportEndpoint=TCP4ClientEndpoint(reactor, "127.0.0.1", port),
            )
            watcher.start()
            self.addCleanup(watcher.stop)
            await done
            self.assertEqual(
                sorted(p for p, _ in watcher.ports), [22, 3000, 5432, 5433, 5434, 8081]
            )
            self.assertEqual(watcher.ports[(3000, "127.0.0.1")].pid, None)

        return Deferred.fromCoroutine(run())
