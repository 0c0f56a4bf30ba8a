"""
End-to-end tests of issue 12's options: ``twistd sprites-proxy --socks``
and ``--auto`` run as real processes against ``twistd sprites-local`` on
127.0.0.1, with curl and a dev server process (``make e2e``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from typing import Any

from twisted.internet import reactor as globalReactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from tests.suites import E2E
from tests.test_autoforward import fetch, freePort, startDevServer

# Subprocess and load tests: make e2e.
SUITE = E2E

reactor: Any = globalReactor
TOKEN = "e2e-follow-token-4f21"


class SOCKSCommandTests(TestCase):
    """
    ``twistd sprites-proxy --socks`` as a user runs it, against
    ``twistd sprites-local``, with curl as the SOCKS client.
    """

    # A hang fails in seconds, not minutes.
    timeout = 30

    def test_socksCommand(self) -> Deferred[None]:
        """
        curl fetches a page (sha256-checked) through the command's SOCKS
        port; the SOCKS line is logged; SIGTERM ends both (twistd exits by
        the signal); the token is never printed.
        """
        if shutil.which("curl") is None:
            self.skipTest("curl is not installed")
        from sprites_twisted.demo import TwistdProcess, freePort
        from tests.test_commands import childEnvironment

        async def run() -> None:
            payload = os.urandom(300 * 1024)
            root = Resource()
            root.putChild(b"blob", Data(payload, "application/octet-stream"))
            site = Site(root)
            site.noisy = False
            web = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
            self.addCleanup(web.stopListening)
            apiPort, socksPort = freePort(), freePort()
            env = childEnvironment(
                SPRITE_TOKEN=TOKEN, SPRITES_API_URL=f"http://127.0.0.1:{apiPort}"
            )
            children = []
            for name, args in [
                (
                    "sprites-local",
                    ["sprites-local", "--listen", f"tcp:{apiPort}:interface=127.0.0.1"],
                ),
                ("sprites-proxy", ["sprites-proxy", "-s", "demo", "--socks", str(socksPort)]),
            ]:
                child = TwistdProcess(name)
                cwd = self.mktemp()
                os.makedirs(cwd)
                child.start(reactor, args, env, cwd)
                self.addCleanup(child.terminate)
                children.append(child)
            local, proxy = children
            await local.whenOutput(f"APISite starting on {apiPort}")
            await proxy.whenOutput(f"SOCKS5/SOCKS4a on 127.0.0.1:{socksPort} -> demo")
            out, err, code = await getProcessOutputAndValue(
                "curl",
                [
                    "-sS",
                    "--max-time",
                    "20",
                    "--socks5-hostname",
                    f"127.0.0.1:{socksPort}",
                    f"http://localhost:{web.getHost().port}/blob",
                ],
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                reactor=reactor,
            )
            self.assertEqual(code, 0, err)
            self.assertEqual(hashlib.sha256(out).digest(), hashlib.sha256(payload).digest())
            # twistd exits by the signal it got (as tests/test_commands.py expects).
            self.assertEqual(await proxy.terminate(), -15, proxy.output.decode())
            self.assertEqual(await local.terminate(), -15, local.output.decode())
            self.assertIn("SOCKS connection from 127.0.0.1:", proxy.output.decode())
            self.assertNotIn(TOKEN.encode(), proxy.output + local.output)

        return Deferred.fromCoroutine(run())


class AutoCommandTests(TestCase):
    """
    ``twistd sprites-proxy --auto`` as a user runs it, against ``twistd
    sprites-local``, following a dev server in a third process.
    """

    # A hang fails in seconds, not minutes.
    timeout = 30

    def test_autoCommand(self) -> Deferred[None]:
        """
        A dev server started after the command is forwarded on the same port
        (on 127.0.0.2), serves intact, is unforwarded when it stops (one log
        line each way); SIGTERM ends both; the token is never printed.
        """
        from sprites_twisted.demo import TwistdProcess
        from sprites_twisted.demo import freePort as demoFreePort
        from tests.test_commands import childEnvironment

        async def run() -> None:
            self.payload = os.urandom(200 * 1024)
            apiPort, devPort = demoFreePort(), freePort()
            env = childEnvironment(
                SPRITE_TOKEN=TOKEN, SPRITES_API_URL=f"http://127.0.0.1:{apiPort}"
            )
            children = []
            for name, args in [
                (
                    "sprites-local",
                    ["sprites-local", "--listen", f"tcp:{apiPort}:interface=127.0.0.1"],
                ),
                (
                    "sprites-proxy",
                    [
                        "sprites-proxy",
                        "-s",
                        "demo",
                        "--auto",
                        "--auto-ports",
                        str(devPort),
                        "--bind",
                        "127.0.0.2",
                    ],
                ),
            ]:
                child = TwistdProcess(name)
                cwd = self.mktemp()
                os.makedirs(cwd)
                child.start(reactor, args, env, cwd)
                self.addCleanup(child.terminate)
                children.append(child)
            local, proxy = children
            await local.whenOutput(f"APISite starting on {apiPort}")
            await proxy.whenOutput("watching the ports of demo")
            forwarded = proxy.whenOutput(f"port {devPort} in the sprite -> 127.0.0.2:{devPort}")
            dev = await startDevServer(self, devPort, self.payload)
            await forwarded
            body = await fetch("127.0.0.2", devPort)
            self.assertEqual(hashlib.sha256(body).digest(), hashlib.sha256(self.payload).digest())
            closed = proxy.whenOutput(f"port {devPort} in the sprite closed")
            await dev.stop()
            await closed
            # twistd exits by the signal it got (as tests/test_commands.py expects).
            self.assertEqual(await proxy.terminate(), -15, proxy.output.decode())
            self.assertEqual(await local.terminate(), -15, local.output.decode())
            self.assertNotIn(TOKEN.encode(), proxy.output + local.output)

        return Deferred.fromCoroutine(run())


class ConsoleScriptTests(TestCase):
    """
    The ``sprites-proxy`` console script (``python -m sprites_twisted``)
    with ``--auto`` and ``--socks`` together, against an in-process local
    sprite server (which serves the proxy, the check and the watch).
    """

    timeout = 30

    def test_autoAndSocks(self) -> Deferred[None]:
        """
        A dev server started after the command is forwarded on the same port
        (127.0.0.2) and reachable through the SOCKS port too; it is
        unforwarded when it stops; SIGINT exits 0; a busy SOCKS port is a
        one-line refusal and exit 1.
        """
        from sprites_twisted.server import LocalSpriteServer
        from tests.helpers import listen
        from tests.test_cli import CommandProcess, childEnvironment, runCommand

        async def run() -> None:
            payload = os.urandom(100 * 1024)
            port, _ = await listen(self, reactor, LocalSpriteServer(reactor, TOKEN).factory())
            env = childEnvironment(
                SPRITE_TOKEN=TOKEN, SPRITES_API_URL=f"http://127.0.0.1:{port.getHost().port}"
            )
            devPort, socksPort = freePort(), freePort()
            child = CommandProcess("sprites-proxy")
            child.start(
                reactor,
                ["-s", "demo", "--auto", "--auto-ports", str(devPort), "--bind", "127.0.0.2"]
                + ["--socks", str(socksPort)],
                env,
                os.getcwd(),
            )
            self.addCleanup(child.terminate)
            await child.whenOutput(f"SOCKS5/SOCKS4a on 127.0.0.1:{socksPort} -> demo")
            await child.whenOutput("watching the ports of demo")
            forwarded = child.whenOutput(f"port {devPort} in the sprite -> 127.0.0.2:{devPort}")
            dev = await startDevServer(self, devPort, payload)
            await forwarded
            body = await fetch("127.0.0.2", devPort)
            self.assertEqual(hashlib.sha256(body).digest(), hashlib.sha256(payload).digest())
            if shutil.which("curl") is not None:
                out, err, code = await getProcessOutputAndValue(
                    "curl",
                    ["-sS", "--max-time", "20", "--socks5-hostname", f"127.0.0.1:{socksPort}"]
                    + [f"http://localhost:{devPort}/blob"],
                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                    reactor=reactor,
                )
                self.assertEqual(code, 0, err)
                self.assertEqual(hashlib.sha256(out).digest(), hashlib.sha256(payload).digest())
            closed = child.whenOutput(f"port {devPort} in the sprite closed")
            await dev.stop()
            await closed
            assert child.transport is not None
            child.transport.signalProcess("INT")
            self.assertEqual(await child.ended, 0, child.output.decode())
            self.assertNotIn(TOKEN.encode(), child.output)

            # A busy SOCKS port stops start-up with one line.
            busy = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
                Site(Resource())
            )
            self.addCleanup(busy.stopListening)
            out, err, code = await runCommand(
                ["-s", "demo", "--socks", str(busy.getHost().port)], env
            )
            self.assertEqual(code, 1, err)
            self.assertIn(f"Couldn't listen on 127.0.0.1:{busy.getHost().port}".encode(), err)
            self.assertNotIn(b"Traceback", out + err)

        return Deferred.fromCoroutine(run())
