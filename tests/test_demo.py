"""
Tests for L{sprites_twisted.demo}, the newcomer's first run.
"""

from __future__ import annotations

import io
import os
import re
import signal
import sys
from typing import Any

from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sprites_twisted import demo
from tests.suites import E2E

# Subprocess and load tests: make e2e.
SUITE = E2E

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
reactor: Any = _globalReactor


def childEnvironment() -> dict[str, str]:
    """
    Our environment without any token, this checkout first on the path.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("SPRITE_TOKEN", "SPRITES_TOKEN")}
    env["PYTHONPATH"] = ROOT
    return env


class DemoProcess(demo.TwistdProcess):
    """
    ``python -m sprites_twisted.demo ARGS`` as a child: C{output} has both
    streams (and C{whenOutput} waits on them), C{err} stderr alone.
    """

    def __init__(self) -> None:
        super().__init__("demo")
        self.err = b""

    @staticmethod
    def commandLine(args: Any) -> list[str]:
        return [sys.executable, "-m", "sprites_twisted.demo", *args]

    def errReceived(self, data: bytes) -> None:
        self.err += data
        self.outReceived(data)


class SpawnRecordingReactor(MemoryReactorClock):
    """
    A memory reactor that records the argv of each process it is asked to
    spawn (and spawns nothing).
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[list[str]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], **kw: Any) -> None:
        self.spawned.append(list(args))


class KeptAlive(Protocol):
    """
    An HTTP/1.1 client that asks for one page and keeps the connection
    open afterwards (the demo service keeps it alive).

    :ivar page: fires once the page has arrived.
    :ivar closed: fires when the connection is gone.
    """

    def __init__(self) -> None:
        self.received = b""
        self.page: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"GET / HTTP/1.1\r\nHost: demo\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if demo.PAGE in self.received and not self.page.called:
            self.page.callback(None)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(None)


class DemoRunTests(TestCase):
    """
    The demo as ``make demo`` runs it: with ``--once``, and stopped by
    signals.
    """

    timeout = 30

    async def test_once(self) -> None:
        """
        The demo fetches the page through a real tunnel, prints it and the
        command to try, then stops both: the sprites-proxy command exits 0
        after its drained stop, twistd sprites-local by SIGTERM (twistd's
        convention).
        """
        env = childEnvironment()
        cwd = self.mktemp()
        os.makedirs(cwd)
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "sprites_twisted.demo", "--once"],
            env=env,
            path=cwd,
            reactor=reactor,
        )
        text = out.decode()
        self.assertEqual(code, 0, text + err.decode())
        self.assertIn("HTTP/1.0 200 OK", text)
        self.assertIn("| Hello from inside the sprite!", text)
        self.assertRegex(text, r"curl http://127\.0\.0\.1:\d+/")
        self.assertRegex(
            text, r"\[sprites-proxy\] forwarding 127\.0\.0\.1:\d+ -> demo localhost:\d+"
        )
        self.assertIn("Stopped: sprites-proxy exited 0, sprites-local exited -15.", text)
        # The proxy starts once the API answers: its check finds the server.
        self.assertNotIn("could not check the sprite", text)
        self.assertEqual(os.listdir(cwd), [], "the demo must leave no pid or log file behind")

    async def test_secondSignal(self) -> None:
        """
        A second SIGINT while the children stop is ignored, said once on
        stderr, with no traceback: the stop goes on in order and the demo
        exits 0 once both children stopped as they should.
        """
        env = childEnvironment()
        cwd = self.mktemp()
        os.makedirs(cwd)
        child = DemoProcess()
        child.start(reactor, [], env, cwd)
        self.addCleanup(child.terminate)
        await child.whenOutput("Forwarding until Ctrl-C.")
        port = re.search(rb"curl http://127\.0\.0\.1:(\d+)/", child.output)
        assert port is not None
        # A connection kept open through the tunnel keeps sprites-proxy
        # draining, so that the second signal comes while the demo waits.
        client = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", int(port[1])), KeptAlive()
        )
        self.addCleanup(lambda: client.transport.abortConnection())  # type: ignore[union-attr]
        await client.page
        child.transport.signalProcess("INT")  # type: ignore[union-attr]
        await child.whenOutput("[sprites-proxy] stopped forwarding")
        child.transport.signalProcess("INT")  # type: ignore[union-attr]
        # Its answer to the second signal: the note, or (the bug) a traceback.
        await DeferredList(
            [child.whenOutput("already stopping"), child.whenOutput("Traceback")],
            fireOnOneCallback=True,
            consumeErrors=True,
        )
        # Reset rather than close: a closed one would keep its tunnel open
        # a while for a reply (half-close).
        client.transport.abortConnection()  # type: ignore[union-attr]
        await client.closed
        code = await child.ended
        text = child.output.decode()
        self.assertNotIn("Traceback", text)
        self.assertEqual(code, 0, text)
        self.assertEqual(
            child.err.decode().splitlines(), ["SIGINT: already stopping; waiting for the children."]
        )
        self.assertIn("Stopped: sprites-proxy exited 0, sprites-local exited -15.", text)


class DemoPieceTests(SynchronousTestCase):
    """
    The demo's small parts.
    """

    def test_unknownArgument(self) -> None:
        """
        An unknown argument stops the demo with a usage message naming it.
        """
        failure = self.failureResultOf(
            Deferred.fromCoroutine(demo._main(None, "--forever")), SystemExit
        )
        self.assertIn("'--forever'", str(failure.value))

    def test_stopStatus(self) -> None:
        """
        The demo exits 0 when the command exited 0 and twistd by SIGTERM (or
        0), or when a child was never started; 1 otherwise, and its last
        line says which child was not started.
        """
        local, proxy = demo.TwistdProcess("sprites-local"), demo.CommandProcess("sprites-proxy")
        self.assertEqual(demo._stopStatus(local, proxy), 0)
        self.assertEqual(demo._describeExit(proxy), "sprites-proxy not started")
        local.makeConnection(StringTransport())
        for code, status in [(-15, 0), (0, 0), (1, 1), (-9, 1)]:
            local.exitCode = code
            self.assertEqual(demo._stopStatus(local, proxy), status, code)
        local.exitCode = -15
        proxy.makeConnection(StringTransport())
        for code, status in [(0, 0), (1, 1), (-15, 1)]:
            proxy.exitCode = code
            self.assertEqual(demo._stopStatus(local, proxy), status, code)
        self.assertEqual(demo._describeExit(proxy), "sprites-proxy exited -15")

    def test_interruptBeforeReactor(self) -> None:
        """
        A Ctrl-C before the reactor runs is one line on stderr and exit
        130, not a traceback.
        """
        err = io.StringIO()
        self.patch(sys, "stderr", err)

        def interrupted(main: Any, argv: Any) -> None:
            raise KeyboardInterrupt()

        self.patch(demo, "react", interrupted)
        exited = self.assertRaises(SystemExit, demo.main, [])
        self.assertEqual(exited.code, 130)
        self.assertEqual(err.getvalue(), "Interrupted before the demo started; nothing to stop.\n")

    def test_interruptInMain(self) -> None:
        """
        A Ctrl-C while the demo's main sets up (before the reactor runs,
        say in a lazy import) is the same one line and exit 130, through
        C{react}'s C{SystemExit}, not a logged failure.
        """
        err = io.StringIO()
        self.patch(sys, "stderr", err)

        async def interrupted(reactor: Any, once: bool) -> int:
            raise KeyboardInterrupt()

        self.patch(demo, "run", interrupted)
        failure = self.failureResultOf(Deferred.fromCoroutine(demo._main(None)), SystemExit)
        self.assertEqual(failure.value.code, 130)
        self.assertEqual(err.getvalue(), "Interrupted before the demo started; nothing to stop.\n")

    def test_nothingStartsBeforeReactor(self) -> None:
        """
        The demo spawns sprites-local only once the reactor runs, after its
        signal handlers are in place; so before that a Ctrl-C leaves
        nothing behind.
        """
        for number in (signal.SIGINT, signal.SIGTERM):
            self.addCleanup(signal.signal, number, signal.getsignal(number))
        self.patch(sys, "stdout", io.StringIO())
        reactor = SpawnRecordingReactor()
        # Whatever handles SIGINT in this test process (Python's default,
        # or the reactor's in a suite that runs it).
        before = signal.getsignal(signal.SIGINT)
        running = Deferred.fromCoroutine(demo.run(reactor, once=True))
        self.assertNoResult(running)
        self.assertEqual(reactor.spawned, [])
        self.assertIs(signal.getsignal(signal.SIGINT), before)
        reactor.run()
        self.assertEqual([argv[-3] for argv in reactor.spawned], ["sprites-local"])
        self.assertIsNot(signal.getsignal(signal.SIGINT), before)
        running.cancel()
        self.assertTrue(running.called)
        running.addBoth(lambda _: None)

    def test_ignoreSignals(self) -> None:
        """
        After the stop, SIGINT and SIGTERM are ignored, so that a late one
        cannot end a cleanly stopped demo by that signal.
        """
        for number in (signal.SIGINT, signal.SIGTERM):
            self.addCleanup(signal.signal, number, signal.getsignal(number))
        demo._ignoreSignals()
        self.assertIs(signal.getsignal(signal.SIGINT), signal.SIG_IGN)
        self.assertIs(signal.getsignal(signal.SIGTERM), signal.SIG_IGN)

    def test_childLines(self) -> None:
        """
        Children's log lines are shown without timestamps, and twistd's own
        chatter is left out unless it is a warning or an error.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        show = demo._childLine("sprites-proxy")
        show("2026-01-01T00:00:00+0000 [sprites_twisted.session.ProxySession#info] forwarding x")
        show("2026-01-01T00:00:00+0000 [twisted.scripts._twistd_unix.UnixAppLogger#info] starting")
        show("2026-01-01T00:00:00+0000 [-] Site starting on 1")
        show("2026-01-01T00:00:00+0000 [stderr#error] oops")
        show("2026-01-01T00:00:00+0000 stopped forwarding x")
        self.assertEqual(
            out.getvalue(),
            "    [sprites-proxy] forwarding x\n    [sprites-proxy] oops\n"
            "    [sprites-proxy] stopped forwarding x\n",
        )
