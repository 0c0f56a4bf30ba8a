"""
Tests for L{sprites_twisted.cli}: the ``sprites-proxy`` console script.

Option handling is tested in this process; what the command does as a
process (exit codes, what goes to stdout and stderr, signals, stdio mode,
Unix sockets) runs ``python -m sprites_twisted`` as a child, against the
local sprite server (or a C{twisted.web} stand-in for the API, for the
check) in this process, on 127.0.0.1 only.  Children are waited on through
their output lines and exit, never by polling.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import sys
from typing import Any

from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP4ServerEndpoint,
    UNIXClientEndpoint,
    connectProtocol,
)
from twisted.internet.error import ConnectError, ConnectionDone
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.server import Site

from sprites_twisted import cli
from sprites_twisted.demo import TwistdProcess, freePort
from sprites_twisted.server import LocalSpriteServer
from tests.helpers import Echo, LocalClient, listen
from tests.suites import e2e
from tests.test_check import FakeAPI

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "cli-test-token-6a1f0c"
reactor: Any = _globalReactor


def childEnvironment(**extra: str) -> dict[str, str]:
    """
    Our environment without any token, this checkout first on the path.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("SPRITE_TOKEN", "SPRITES_TOKEN")}
    env["PYTHONPATH"] = ROOT
    env.update(extra)
    return env


class CommandProcess(TwistdProcess):
    """
    ``python -m sprites_twisted ARGS`` as a child (stdout and stderr
    together in C{output}; see L{SplitProcess} to keep them apart).
    """

    @staticmethod
    def commandLine(args: Any) -> list[str]:
        return [sys.executable, "-m", "sprites_twisted", *args]


class SplitProcess(ProcessProtocol):
    """
    A child whose stdout and stderr are kept apart; C{stdin} is written
    to it at start and then closed.
    """

    def __init__(self, stdin: bytes = b"") -> None:
        self.stdin = stdin
        self.out = bytearray()
        self.err = bytearray()
        self.ended: Deferred[int] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        if self.stdin:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        value: Any = reason.value
        self.ended.callback(value.exitCode if value.exitCode is not None else -value.signal)


async def runCommand(
    args: list[str], env: dict[str, str], stdin: bytes = b""
) -> tuple[bytes, bytes, int]:
    """
    Run the command to its end: stdout, stderr, exit code.
    """
    child = SplitProcess(stdin)
    argv = CommandProcess.commandLine(args)
    reactor.spawnProcess(child, argv[0], argv, env=env, path=ROOT)
    code = await child.ended
    return bytes(child.out), bytes(child.err), code


class OptionsTests(SynchronousTestCase):
    """
    L{cli.Options}: twistd's options plus the command's own.
    """

    def parse(self, args: list[str]) -> cli.Options:
        options = cli.Options({"SPRITE_TOKEN": TOKEN, "SPRITES_API_URL": "http://127.0.0.1:1"})
        options.parseOptions(args)
        return options

    def test_stdioTarget(self) -> None:
        """
        -W takes [HOST]:PORT or PORT; an empty host is localhost.
        """
        self.assertEqual(self.parse(["-s", "a", "-W", ":22"]).stdioTarget, ("localhost", 22))
        self.assertEqual(self.parse(["-s", "a", "-W", "db:5432"]).stdioTarget, ("db", 5432))
        self.assertEqual(self.parse(["-W", "[::1]:22", "-s", "a"]).stdioTarget, ("::1", 22))
        self.assertEqual(self.parse(["-s", "a", "-W", "22"]).stdioTarget, ("localhost", 22))
        self.assertIsNone(self.parse(["-s", "a", "22"]).stdioTarget)

    def test_bad(self) -> None:
        """
        Bad -W values, -W with mappings and an unknown log format are usage
        errors naming the value.
        """
        for args, text in [
            (["-s", "a", "-W", ":0"], "-W ':0'"),
            (["-s", "a", "-W", "host"], "-W 'host'"),
            (["-s", "a", "-W", ":22", "8080"], "give no mappings"),
            (["-s", "a", "--log-format", "xml", "22"], "--log-format 'xml'"),
        ]:
            with self.subTest(args=args):
                error = self.assertRaises(cli.usage.UsageError, self.parse, args)
                self.assertIn(text, str(error))

    def test_usageErrorIsOneLine(self) -> None:
        """
        run() answers a usage error with one line on stderr naming the bad
        value and pointing at --help, and exit code 2, before any logging
        starts.
        """
        err = io.StringIO()
        d = Deferred.fromCoroutine(
            cli.run(
                reactor, ["-s", "db", "5432", "--bind", "nowhere"], {"SPRITE_TOKEN": TOKEN}, err
            )
        )
        self.assertEqual(self.successResultOf(d), 2)
        self.assertEqual(
            err.getvalue(),
            "sprites-proxy: --bind 'nowhere': expected an IP address (127.0.0.1, ::1) or "
            "localhost (try sprites-proxy --help)\n",
        )


@e2e
class CommandTests(TestCase):
    """
    ``python -m sprites_twisted`` as a process.
    """

    timeout = 30

    async def echoPort(self) -> int:
        port, _ = await listen(self, reactor, Factory.forProtocol(Echo))
        return int(port.getHost().port)

    async def localServer(self) -> str:
        port, _ = await listen(self, reactor, LocalSpriteServer(reactor, TOKEN).factory())
        return f"http://127.0.0.1:{port.getHost().port}"

    async def fakeAPI(self) -> str:
        site = Site(FakeAPI({"alpha"}, token=TOKEN))
        site.noisy = False
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    def start(self, args: list[str], env: dict[str, str]) -> CommandProcess:
        child = CommandProcess("sprites-proxy")
        child.start(reactor, args, env, ROOT)
        self.addCleanup(child.terminate)
        return child

    async def test_usageErrors(self) -> None:
        """
        A bad mapping, even after options, and an option after mappings
        that is bad: one line on stderr naming the value and ``try
        --help``, nothing on stdout, exit 2.
        """
        env = childEnvironment(SPRITE_TOKEN=TOKEN)
        for args, text in [
            (["8080:80", "-s", "db", "70000"], b"invalid port mapping '70000'"),
            (["-s", "db", "5432", "--linger", "soon"], b"--linger 'soon'"),
        ]:
            out, err, code = await runCommand(args, env)
            self.assertEqual(code, 2, err)
            self.assertEqual(out, b"")
            self.assertEqual(err.count(b"\n"), 1, err)
            self.assertIn(text, err)
            self.assertTrue(err.endswith(b"(try sprites-proxy --help)\n"), err)

    async def test_checkRefusals(self) -> None:
        """
        The check before listening: a rejected token stops start-up with
        exit 1 and one line naming where the token came from; an unknown
        sprite with one line naming it; nothing ever listens, and the
        token is never printed.
        """
        api = await self.fakeAPI()
        local = freePort()
        env = childEnvironment(SPRITE_TOKEN="wrong-token-77", SPRITES_API_URL=api)
        out, err, code = await runCommand(["-s", "alpha", str(local)], env)
        self.assertEqual((code, out), (1, b""), err)
        self.assertIn(
            b"sprites-proxy: the Sprites API rejected the token (from $SPRITE_TOKEN)", err
        )
        self.assertNotIn(b"wrong-token-77", err)
        self.assertNotIn(b"forwarding", err)

        tokenFile = os.path.abspath(self.mktemp())
        with open(tokenFile, "w") as f:
            f.write("wrong-token-77\n")
        os.chmod(tokenFile, 0o600)
        out, err, code = await runCommand(
            ["-s", "alpha", "--token-file", tokenFile, str(local)],
            childEnvironment(SPRITES_API_URL=api),
        )
        self.assertEqual(code, 1, err)
        self.assertIn(f"rejected the token (from --token-file {tokenFile})".encode(), err)

        env = childEnvironment(SPRITE_TOKEN=TOKEN, SPRITES_API_URL=api)
        out, err, code = await runCommand(["-s", "beta", str(local)], env)
        self.assertEqual(code, 1, err)
        self.assertIn(b"sprites-proxy: no sprite named beta\n", err)
        with self.assertRaises(ConnectError):
            await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", local), LocalClient())

    async def test_busyPort(self) -> None:
        """
        A local port already in use: one line naming the address, exit 1,
        no traceback; the other mapping's listener is closed again.
        """
        busy = await self.echoPort()
        api = await self.localServer()
        other = freePort()
        out, err, code = await runCommand(
            ["-s", "demo", f"{other}:80", str(busy)],
            childEnvironment(SPRITE_TOKEN=TOKEN, SPRITES_API_URL=api),
        )
        self.assertEqual((code, out), (1, b""), err)
        self.assertIn(f"sprites-proxy: Couldn't listen on 127.0.0.1:{busy}".encode(), err)
        self.assertNotIn(b"Traceback", err)
        self.assertIn(f"stopped forwarding 127.0.0.1:{other} ".encode(), err)

    async def test_checkAgainstLocalServer(self) -> None:
        """
        The local sprite server answers the check too: a name outside its
        --sprite list and a bad token each stop start-up with exit 1.
        """
        server = LocalSpriteServer(reactor, TOKEN, sprites=["demo"])
        port, _ = await listen(self, reactor, server.factory())
        api = f"http://127.0.0.1:{port.getHost().port}"
        local = str(freePort())
        out, err, code = await runCommand(
            ["-s", "other", local], childEnvironment(SPRITE_TOKEN=TOKEN, SPRITES_API_URL=api)
        )
        self.assertEqual(code, 1, err)
        self.assertIn(b"sprites-proxy: no sprite named other\n", err)
        out, err, code = await runCommand(
            ["-s", "demo", local], childEnvironment(SPRITE_TOKEN="bad-token-0", SPRITES_API_URL=api)
        )
        self.assertEqual(code, 1, err)
        self.assertIn(b"the Sprites API rejected the token (from $SPRITE_TOKEN)", err)

    async def test_checkPasses(self) -> None:
        """
        A good token and a known sprite: the command listens.  An
        unreachable API only warns (here as JSON log lines), and the
        command listens anyway.
        """
        api = await self.fakeAPI()
        local = freePort()
        child = self.start(
            ["-s", "alpha", str(local)], childEnvironment(SPRITE_TOKEN=TOKEN, SPRITES_API_URL=api)
        )
        await child.whenOutput(f"forwarding 127.0.0.1:{local} -> alpha localhost:{local}")
        self.assertEqual(await child.terminate(), 0, child.output)
        self.assertNotIn(b"could not check", child.output)

        dead = f"http://127.0.0.1:{freePort()}"
        child = self.start(
            ["-s", "alpha", "--log-format", "json", str(local)],
            childEnvironment(SPRITE_TOKEN=TOKEN, SPRITES_API_URL=dead),
        )
        # The "forwarding {local} ..." event, as JSON.
        await child.whenOutput(f'"local": "127.0.0.1:{local}"')
        self.assertEqual(await child.terminate(), 0, child.output)
        # One JSON object per line, the warning among them.
        events = [json.loads(line) for line in child.output.decode().splitlines()]
        warnings = [e for e in events if e["log_level"]["name"] == "warn"]
        self.assertIn("could not check the sprite before listening", warnings[0]["log_format"])

    async def test_forwardUnixAndBind(self) -> None:
        """
        One command forwards a Unix socket (mode 0600, removed on stop)
        and a 4-part BIND:LOCAL:HOST:REMOTE mapping on 127.0.0.2; bytes
        go both ways, after the check passed against the local sprite
        server; SIGINT stops listening, drains, exits 0.
        """
        echo = await self.echoPort()
        api = await self.localServer()
        sock = os.path.abspath(self.mktemp())
        bound = freePort()
        args = ["-s", "demo", f"127.0.0.2:{bound}:localhost:{echo}"]
        args += ["--listen", f"unix:{sock}", "--to", str(echo)]
        child = self.start(args, childEnvironment(SPRITE_TOKEN=TOKEN, SPRITES_API_URL=api))
        await child.whenOutput(f"forwarding unix:{sock} -> demo localhost:{echo}")
        await child.whenOutput(f"forwarding 127.0.0.2:{bound} -> demo localhost:{echo}")
        self.assertEqual(stat.S_IMODE(os.stat(sock).st_mode), 0o600)

        for endpoint in (
            UNIXClientEndpoint(reactor, sock),
            TCP4ClientEndpoint(reactor, "127.0.0.2", bound),
        ):
            client = await connectProtocol(endpoint, LocalClient())
            client.transport.write(b"through the sprite")
            self.assertEqual(await client.whenReceived(18), b"through the sprite")
            client.transport.loseConnection()
            await client.closed
            self.assertIsInstance(client.reason.value, ConnectionDone)

        child.transport.signalProcess("INT")  # type: ignore[union-attr]
        self.assertEqual(await child.ended, 0, child.output)
        self.assertFalse(os.path.exists(sock))
        self.assertIn(b"stopped forwarding unix:", child.output)
        self.assertNotIn(TOKEN.encode(), child.output)

    async def test_secondSignalExitsAtOnce(self) -> None:
        """
        With a connection still draining after the first SIGTERM, a second
        one ends the process at once (exit 128 + 15), not after the drain.
        """
        echo = await self.echoPort()
        api = await self.localServer()
        local = freePort()
        child = self.start(
            ["-s", "demo", "--no-check", "--drain-timeout", "60", f"{local}:{echo}"],
            childEnvironment(SPRITE_TOKEN=TOKEN, SPRITES_API_URL=api),
        )
        await child.whenOutput(f"forwarding 127.0.0.1:{local} ")
        client = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", local), LocalClient()
        )
        client.transport.write(b"ping")
        await client.whenReceived(4)
        child.transport.signalProcess("TERM")  # type: ignore[union-attr]
        await child.whenOutput(f"stopped forwarding 127.0.0.1:{local} ")
        child.transport.signalProcess("TERM")  # type: ignore[union-attr]
        self.assertEqual(await child.ended, 128 + 15)
        await client.closed
        self.assertEqual(client.received, b"ping")


@e2e
class StdioTests(TestCase):
    """
    ``sprites-proxy -W``: stdin and stdout through one tunnel.
    """

    timeout = 60

    async def setUpServers(self) -> tuple[int, str]:
        echo, _ = await listen(self, reactor, Factory.forProtocol(Echo))
        api, _ = await listen(self, reactor, LocalSpriteServer(reactor, TOKEN).factory())
        return int(echo.getHost().port), f"http://127.0.0.1:{api.getHost().port}"

    async def test_sha256(self) -> None:
        """
        4 MiB piped through an echo target come back byte for byte on
        stdout (same sha256) and nothing else does; stdin's end closes the
        tunnel once the reply went quiet; exit 0, stderr silent.
        """
        echo, api = await self.setUpServers()
        payload = os.urandom(4 * 1024 * 1024)
        out, err, code = await runCommand(
            ["-s", "demo", "--linger", "0.5", "-W", f":{echo}"],
            childEnvironment(SPRITE_TOKEN=TOKEN, SPRITES_API_URL=api),
            payload,
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(len(out), len(payload))
        self.assertEqual(hashlib.sha256(out).hexdigest(), hashlib.sha256(payload).hexdigest())
        self.assertEqual(err, b"")

    async def test_refused(self) -> None:
        """
        A tunnel the sprite refuses (nothing listens on the port) exits 1
        with one line on stderr naming the target and the cause; nothing
        on stdout.
        """
        _, api = await self.setUpServers()
        dead = freePort()
        out, err, code = await runCommand(
            ["-s", "demo", "-W", f":{dead}"],
            childEnvironment(SPRITE_TOKEN=TOKEN, SPRITES_API_URL=api),
            b"hello",
        )
        self.assertEqual((code, out), (1, b""), err)
        self.assertEqual(err.count(b"\n"), 1, err)
        self.assertIn(f"sprites-proxy: no tunnel to demo localhost:{dead}: ".encode(), err)
        self.assertIn(f"cannot connect to localhost:{dead}".encode(), err)

    async def test_badToken(self) -> None:
        """
        A bad token exits 1 with the one line saying so, naming where the
        token came from.
        """
        echo, api = await self.setUpServers()
        out, err, code = await runCommand(
            ["-s", "demo", "-W", f":{echo}"],
            childEnvironment(SPRITE_TOKEN="not-the-token-1", SPRITES_API_URL=api),
        )
        self.assertEqual((code, out), (1, b""), err)
        self.assertIn(b"the Sprites API rejected the token (from $SPRITE_TOKEN)\n", err)
        self.assertNotIn(b"not-the-token-1", err)


@e2e
class PackagingTests(TestCase):
    """
    The installed distribution (``make test`` installs it first): the
    console script, ``py.typed``, and license metadata matching LICENSE.
    """

    async def test_installed(self) -> None:
        """
        Outside the tree, ``sprites-proxy --version`` runs from the
        interpreter's scripts directory, the installed package ships
        ``py.typed``, and the metadata says MIT as LICENSE does.
        """
        from twisted.internet.utils import getProcessOutputAndValue

        script = os.path.join(os.path.dirname(sys.executable), "sprites-proxy")
        if not os.path.exists(script):
            raise SkipTest("sprites-twisted is not installed here (make test installs it)")
        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(elsewhere)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        out, err, code = await getProcessOutputAndValue(
            script, ["--version"], env=env, path=elsewhere, reactor=reactor
        )
        self.assertEqual((code, out), (0, b"sprites-proxy (sprites-twisted) 0.1.0\n"), err)
        probe = (
            "import importlib.metadata as m, os, sprites_twisted\n"
            "d = m.metadata('sprites-twisted')\n"
            "print(os.path.exists(os.path.join(os.path.dirname(sprites_twisted.__file__), "
            "'py.typed')))\n"
            "print(d['License'])\n"
            "print('License :: OSI Approved :: MIT License' in d.get_all('Classifier'))\n"
        )
        out, err, code = await getProcessOutputAndValue(
            sys.executable, ["-c", probe], env=env, path=elsewhere, reactor=reactor
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(out.decode().split(), ["True", "MIT", "True"])
        with open(os.path.join(ROOT, "LICENSE")) as f:
            self.assertEqual(f.readline().strip(), "MIT License")
