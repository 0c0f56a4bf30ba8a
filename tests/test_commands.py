"""
End-to-end tests: ``twistd sprites-local`` and ``twistd sprites-proxy``
run as real processes on 127.0.0.1, with this checkout's code and plugins.

They use the demo's process helpers and wait for readiness by polling a
connection (a bounded number of times), never by sleeping.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from sprites_twisted.demo import TwistdProcess, freePort
from tests.helpers import Echo
from tests.suites import E2E

# Subprocess and load tests: make e2e.
SUITE = E2E

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "e2e-test-token-5ce7b1f0"
reactor: Any = _globalReactor


def childEnvironment(**extra: str) -> dict[str, str]:
    """
    Our environment, with this checkout first on the path and no token
    unless given.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("SPRITE_TOKEN", "SPRITES_TOKEN")}
    env["PYTHONPATH"] = ROOT
    env.update(extra)
    return env


def startTwistd(
    testCase: TestCase, name: str, args: list[str], env: dict[str, str]
) -> TwistdProcess:
    """
    Start ``twistd -n ARGS`` in a fresh directory; it is stopped (SIGTERM)
    at the end of the test.
    """
    child = TwistdProcess(name)
    cwd = testCase.mktemp()
    os.makedirs(cwd)
    child.start(reactor, args, env, cwd)
    testCase.addCleanup(child.terminate)
    return child


async def run(args: list[str], env: dict[str, str]) -> tuple[bytes, bytes, int]:
    """
    Run ``twistd -n ARGS`` to completion: stdout, stderr, exit code.
    """
    argv = TwistdProcess.commandLine(args)
    return await getProcessOutputAndValue(argv[0], argv[1:], env=env, path=ROOT, reactor=reactor)


class Collector(Protocol):
    """
    A client that keeps what it receives and says when it has enough or
    when the connection closes.
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed: Deferred[None] = Deferred()
        self._waiting: tuple[int, Deferred[bytes]] | None = None

    def receive(self, count: int) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self._waiting = (count, d)
        self._check()
        return d

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._check()

    def _check(self) -> None:
        if self._waiting and len(self.received) >= self._waiting[0]:
            (_, d), self._waiting = self._waiting, None
            d.callback(self.received)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(None)


class CommandsTests(TestCase):
    """
    Both twistd commands, as a user runs them.
    """

    # A hang fails in seconds, not trial's default two minutes.
    timeout = 30

    async def echoServer(self) -> int:
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Echo)
        )
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    def startLocal(self, apiPort: int) -> tuple[dict[str, str], TwistdProcess]:
        """
        Start ``twistd sprites-local`` on C{apiPort}: the environment for
        commands using it, and its process.
        """
        env = childEnvironment(SPRITE_TOKEN=TOKEN, SPRITES_API_URL=f"http://127.0.0.1:{apiPort}")
        local = startTwistd(
            self,
            "sprites-local",
            ["sprites-local", "--listen", f"tcp:{apiPort}:interface=127.0.0.1"],
            env,
        )
        return env, local

    async def test_forwardAndStop(self) -> None:
        """
        Bytes go through sprites-proxy and sprites-local to a local service;
        a tunnel the server refuses is logged with its reason; on SIGTERM the proxy stops listening at once, lets an open
        connection go on until the drain timeout, then closes it, and both
        commands exit as twistd does after SIGTERM (by that signal); neither
        ever prints the token.
        """
        echoPort = await self.echoServer()
        apiPort, localPort, deadLocal, deadPort = freePort(), freePort(), freePort(), freePort()
        env, local = self.startLocal(apiPort)
        proxy = startTwistd(
            self,
            "sprites-proxy",
            [
                "sprites-proxy",
                "-s",
                "demo",
                "--drain-timeout",
                "1",
                f"{localPort}:{echoPort}",
                f"{deadLocal}:{deadPort}",  # nothing listens on deadPort
            ],
            env,
        )
        await local.whenOutput(f"APISite starting on {apiPort}")
        await proxy.whenOutput(f"forwarding 127.0.0.1:{localPort} ")
        await proxy.whenOutput(f"forwarding 127.0.0.1:{deadLocal} ")

        # A tunnel the server refuses closes that connection only.
        dead = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", deadLocal), Collector()
        )
        await dead.closed.addTimeout(5, reactor)
        self.assertEqual(dead.received, b"")

        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", localPort)
        client = await connectProtocol(endpoint, Collector())
        assert client.transport is not None
        client.transport.write(b"hello sprite")
        self.assertEqual(await client.receive(12).addTimeout(5, reactor), b"hello sprite")

        proxy.transport.signalProcess("TERM")  # type: ignore[union-attr]
        # The listener goes at once...
        await proxy.whenOutput(f"stopped forwarding 127.0.0.1:{localPort} ")
        with self.assertRaises(ConnectError):
            await connectProtocol(endpoint, Protocol())
        # ...the open connection still works while it drains...
        client.transport.write(b"+more")
        self.assertEqual(await client.receive(17).addTimeout(5, reactor), b"hello sprite+more")
        # ...and is closed when the drain time is over.
        await client.closed.addTimeout(10, reactor)
        self.assertEqual(await proxy.ended, -15, proxy.output.decode())
        self.assertEqual(await local.terminate(), -15, local.output.decode())

        proxyLog = proxy.output.decode()
        self.assertIn(f"forwarding 127.0.0.1:{localPort} -> demo localhost:{echoPort}", proxyLog)
        self.assertIn(f"to demo localhost:{echoPort} ended", proxyLog)
        self.assertRegex(
            proxyLog,
            rf"tunnel from 127\.0\.0\.1:\d+ to demo localhost:{deadPort} failed: .*"
            rf"cannot connect to localhost:{deadPort}",
        )
        self.assertIn(f"tunnel demo -> localhost:{echoPort} ended", local.output.decode())
        self.assertNotIn(TOKEN.encode(), proxy.output + local.output)

    async def test_busyPort(self) -> None:
        """
        A local port already in use stops twistd sprites-proxy at start-up
        (twistd's exit code), with the error naming the address logged; the
        unreachable API only gets a warning from the check.
        """
        busyPort = await self.echoServer()
        env = childEnvironment(SPRITE_TOKEN=TOKEN, SPRITES_API_URL="http://127.0.0.1:1")
        out, err, code = await run(["sprites-proxy", "-s", "demo", str(busyPort)], env)
        self.assertIn(
            f"not forwarding: Couldn't listen on 127.0.0.1:{busyPort}".encode(), out + err
        )
        self.assertIn(b"could not check the sprite before listening", out + err)
        self.assertNotIn(b"Traceback", out + err)

    async def test_usageError(self) -> None:
        """
        Bad input stops twistd before anything runs, with a non-zero exit
        and a message naming the bad value.
        """
        env = childEnvironment(SPRITE_TOKEN=TOKEN)
        out, err, code = await run(["sprites-proxy", "-s", "demo", "70000"], env)
        self.assertEqual(code, 1)
        self.assertIn(b"invalid port mapping '70000'", out + err)

    async def test_listenPortOutOfRange(self) -> None:
        """
        ``twistd sprites-local --listen tcp:99999`` is a usage error naming
        the port, not a traceback.
        """
        out, err, code = await run(["sprites-local", "--listen", "tcp:99999"], childEnvironment())
        self.assertEqual(code, 1)
        self.assertIn(b"--listen 'tcp:99999': port 99999 is outside 0..65535", out + err)
        self.assertNotIn(b"Traceback", out + err)
        self.assertNotIn(b"OverflowError", out + err)

    def activatedSocket(self) -> socket.socket:
        """
        What systemd hands over: a bound, listening socket on 127.0.0.1.
        """
        activated = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(activated.close)
        activated.bind(("127.0.0.1", 0))
        activated.listen(8)
        return activated

    def startActivated(
        self, args: list[str], env: dict[str, str], activated: socket.socket
    ) -> TwistdProcess:
        """
        Start ``twistd -n ARGS`` as systemd's socket activation does: the
        socket as fd 3, C{LISTEN_FDS}, C{LISTEN_FDNAMES}, and C{LISTEN_PID}
        set to the process that reads it (just before the exec).  It is
        stopped at the end of the test.
        """
        child = TwistdProcess(args[0])
        argv = TwistdProcess.commandLine(args)
        launcher = (
            "import os, sys; os.environ['LISTEN_PID'] = str(os.getpid()); "
            "os.execv(sys.executable, sys.argv[1:])"
        )
        cwd = self.mktemp()
        os.makedirs(cwd)
        reactor.spawnProcess(
            child,
            argv[0],
            [argv[0], "-c", launcher, *argv],
            env=dict(env, LISTEN_FDS="1", LISTEN_FDNAMES="sprites-proxy.socket"),
            path=cwd,
            childFDs={0: "w", 1: "r", 2: "r", 3: activated.fileno()},
        )
        self.addCleanup(child.terminate)
        return child

    async def test_systemdSocketActivation(self) -> None:
        """
        ``--listen systemd:domain=INET:index=0`` forwards connections on a
        listening socket the service manager passed in (fd 3, with
        C{LISTEN_FDS} and C{LISTEN_PID}), as systemd's socket activation
        does; SIGTERM stops it as usual.
        """
        echoPort = await self.echoServer()
        apiPort = freePort()
        env, local = self.startLocal(apiPort)
        await local.whenOutput(f"APISite starting on {apiPort}")
        activated = self.activatedSocket()
        args = ["sprites-proxy", "-s", "demo", "--listen", "systemd:domain=INET:index=0"]
        proxy = self.startActivated([*args, "--to", str(echoPort)], env, activated)
        await proxy.whenOutput(f"-> demo localhost:{echoPort}")

        client = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", activated.getsockname()[1]), Collector()
        )
        assert client.transport is not None
        client.transport.write(b"activated")
        self.assertEqual(await client.receive(9).addTimeout(5, reactor), b"activated")
        client.transport.loseConnection()
        await client.closed.addTimeout(5, reactor)
        self.assertEqual(await proxy.terminate(), -15, proxy.output.decode())
        self.assertIn(f"to demo localhost:{echoPort} ended", proxy.output.decode())
        self.assertNotIn(b"Traceback", proxy.output)

    async def test_systemdWrongIndex(self) -> None:
        """
        An index past the sockets systemd passed is a usage error at
        start-up that says how many there are.
        """
        env = childEnvironment(SPRITE_TOKEN=TOKEN)
        args = ["sprites-proxy", "-s", "demo", "--listen", "systemd:domain=INET:index=1"]
        proxy = self.startActivated([*args, "--to", "80"], env, self.activatedSocket())
        self.assertEqual(await proxy.ended, 1, proxy.output.decode())
        self.assertIn(
            "--listen 'systemd:domain=INET:index=1': no such socket was passed to this "
            "process; systemd's socket activation passed 1 socket(s) here",
            " ".join(proxy.output.decode().split()),
        )
        self.assertNotIn(b"Traceback", proxy.output)
