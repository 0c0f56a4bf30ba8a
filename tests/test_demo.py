"""
Tests for L{sprites_twisted.demo}, the newcomer's first run.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any

from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from sprites_twisted import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
reactor: Any = _globalReactor


class DemoRunTests(TestCase):
    """
    The demo as ``make demo`` runs it, with ``--once``.
    """

    timeout = 30

    async def test_once(self) -> None:
        """
        The demo fetches the page through a real tunnel, prints it and the
        command to try, then stops both: the sprites-proxy command exits 0
        after its drained stop, twistd sprites-local by SIGTERM (twistd's
        convention).
        """
        env = {k: v for k, v in os.environ.items() if k not in ("SPRITE_TOKEN", "SPRITES_TOKEN")}
        env["PYTHONPATH"] = ROOT
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
