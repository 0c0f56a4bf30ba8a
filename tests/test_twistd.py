"""
Tests for L{sprites_twisted._twistd}: what both twistd commands share.
"""

from __future__ import annotations

import errno
import io
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from sprites_twisted import localtap, tap
from sprites_twisted._twistd import CommandService, TokenOptions, positiveNumber

TOKEN = "twistd-test-token-42"


class BusyReactor(MemoryReactorClock):
    """
    A MemoryReactorClock on which some ports are already in use.
    """

    def __init__(self, busy: set[int]) -> None:
        super().__init__()
        self.busy = busy

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if port in self.busy:
            raise CannotListenError(
                interface, port, OSError(errno.EADDRINUSE, "Address already in use")
            )
        return super().listenTCP(port, factory, backlog, interface)


class FakeTwistdReactor:
    """
    Just the attribute twistd reads after the reactor stopped.
    """

    _exitSignal: int | None = 15


class PositiveNumberTests(SynchronousTestCase):
    """
    Tests for L{positiveNumber}.
    """

    def test_numbers(self) -> None:
        """
        Numbers above zero parse; zero only when allowed.
        """
        self.assertEqual(positiveNumber("t", "1.5"), 1.5)
        self.assertEqual(positiveNumber("t", "0", allowZero=True), 0.0)

    def test_bad(self) -> None:
        """
        Zero, negatives, infinity, NaN and words are usage errors naming the
        option and the value.
        """
        for value in ["0", "-2", "inf", "nan", "ten", ""]:
            with self.subTest(value=value):
                error = self.assertRaises(usage.UsageError, positiveNumber, "wait", value)
                self.assertIn(f"--wait {value!r}", str(error))


class TokenOptionsTests(SynchronousTestCase):
    """
    Tests for L{TokenOptions}.
    """

    def test_environmentOrder(self) -> None:
        """
        SPRITE_TOKEN wins over SPRITES_TOKEN.
        """
        options = TokenOptions({"SPRITE_TOKEN": "first", "SPRITES_TOKEN": "second"})
        options.parseOptions([])
        self.assertEqual(options.readToken(), "first")

    def test_none(self) -> None:
        """
        With no file and no variable there is no token.
        """
        options = TokenOptions({})
        options.parseOptions([])
        self.assertIsNone(options.readToken())

    def test_emptyFile(self) -> None:
        """
        An empty token file is a usage error naming the file.
        """
        path = self.mktemp()
        open(path, "w").close()
        options = TokenOptions({"SPRITE_TOKEN": TOKEN})
        options.parseOptions(["--token-file", path])
        error = self.assertRaises(usage.UsageError, options.readToken)
        self.assertIn(f"token file {path!r} is empty", str(error))


class CommandServiceTests(SynchronousTestCase):
    """
    Tests for L{CommandService}.
    """

    def setUp(self) -> None:
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.stderr = io.StringIO()
        self.patch(sys, "__stderr__", self.stderr)
        self.hooked: list[BaseException] = []
        self.patch(sys, "excepthook", lambda kind, value, tb: self.hooked.append(value))

    def proxyService(self, reactor: Any, *mappings: str) -> CommandService:
        options = tap.Options({"SPRITE_TOKEN": TOKEN, "SPRITES_API_URL": "http://127.0.0.1:1"})
        options.parseOptions(["-s", "db", *mappings])
        return CommandService("sprites-proxy", reactor, tap._makeService(options, reactor))

    def test_busyPortIsOneLine(self) -> None:
        """
        A busy local port makes start-up raise CannotListenError (so twistd
        exits non-zero and cleans up) which the interpreter then prints as
        one line naming the command and the address; it is also logged.
        """
        service = self.proxyService(BusyReactor({5433}), "8080:80", "5433:5432")
        error = self.assertRaises(CannotListenError, service.startService)
        sys.excepthook(CannotListenError, error, None)
        self.assertEqual(
            self.stderr.getvalue(),
            "sprites-proxy: Couldn't listen on 127.0.0.1:5433: "
            "[Errno 98] Address already in use.\n",
        )
        errors = [formatEvent(e) for e in self.events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1)
        self.assertIn("127.0.0.1:5433", errors[0])
        self.assertEqual(self.hooked, [])

    def test_otherErrorsKeepTraceback(self) -> None:
        """
        Exceptions other than the listen failure still reach the previous
        hook (a traceback).
        """
        service = self.proxyService(BusyReactor({8080}), "8080:80")
        self.assertRaises(CannotListenError, service.startService)
        other = RuntimeError("boom")
        sys.excepthook(RuntimeError, other, None)
        self.assertEqual(self.hooked, [other])
        self.assertEqual(self.stderr.getvalue(), "")

    def test_busyLocalServerPort(self) -> None:
        """
        sprites-local's listener (strports, listening in
        privilegedStartService) fails the same way.
        """
        options = localtap.Options({"SPRITE_TOKEN": TOKEN})
        options.parseOptions(["--listen", "tcp:8900:interface=127.0.0.1"])
        reactor = BusyReactor({8900})
        service = CommandService("sprites-local", reactor, localtap._makeService(options, reactor))
        error = self.assertRaises(CannotListenError, service.privilegedStartService)
        sys.excepthook(CannotListenError, error, None)
        self.assertTrue(
            self.stderr.getvalue().startswith("sprites-local: Couldn't listen on 127.0.0.1:8900")
        )

    def test_startsChild(self) -> None:
        """
        Starting the command service starts the service it wraps.
        """
        reactor = MemoryReactorClock()
        service = self.proxyService(reactor, "8080:80")
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual([port for port, _, _, _ in reactor.tcpServers], [8080])

    def test_stopExitsCleanly(self) -> None:
        """
        Stopping forgets the signal that stopped the reactor, so that twistd
        exits 0 instead of killing itself with that signal.
        """
        reactor = FakeTwistdReactor()
        child = Service()
        service = CommandService("sprites-proxy", reactor, child)
        service.startService()
        self.successResultOf(service.stopService())
        self.assertIsNone(reactor._exitSignal)
        self.assertFalse(child.running)

    def test_stopWithoutExitSignal(self) -> None:
        """
        A reactor that does not record exit signals is left alone.
        """
        reactor = MemoryReactorClock()
        service = CommandService("sprites-proxy", reactor, Service())
        service.startService()
        self.successResultOf(service.stopService())
        self.assertFalse(hasattr(reactor, "_exitSignal"))
