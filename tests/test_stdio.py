"""
Tests for L{sprites_twisted.stdio}: a real ``ssh`` client using
``sprites-proxy -s %h -W :PORT`` as its ProxyCommand, to a real ``sshd``
(on 127.0.0.1, with a throw-away host key and configuration) reached
through the local sprite server; and L{connectStdio} on pipes in this
process.

The ssh test is skipped, with the reason, when ``ssh``, ``sshd`` or
sshd's privilege separation directory is missing (Debian:
``apt-get install openssh-client openssh-server``).
"""

from __future__ import annotations

import getpass
import hashlib
import os
import shutil
import sys
from typing import Any

from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from sprites_twisted.demo import TwistdProcess, freePort
from sprites_twisted.errors import SpriteAuthError
from sprites_twisted.server import LocalSpriteServer
from sprites_twisted.stdio import connectStdio
from tests.helpers import Echo, listen
from tests.suites import e2e

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "stdio-test-token-93be21"
SSHD = "/usr/sbin/sshd"
reactor: Any = _globalReactor


class SSHDaemon(TwistdProcess):
    """
    ``sshd -D -e -f CONFIG``: in the foreground, logging to stderr.
    """

    @staticmethod
    def commandLine(args: Any) -> list[str]:
        return [SSHD, "-D", "-e", "-f", *args]


async def run(argv: list[str], env: dict[str, str] | None = None) -> tuple[bytes, bytes, int]:
    """
    Run C{argv} to its end: stdout, stderr, exit code.
    """
    return await getProcessOutputAndValue(
        argv[0], argv[1:], env=os.environ if env is None else env, path=ROOT, reactor=reactor
    )


@e2e
class SSHTests(TestCase):
    """
    ssh through ``sprites-proxy -W`` to an SSH server "inside the sprite".
    """

    timeout = 60

    def setUp(self) -> None:
        for tool in ("ssh", "ssh-keygen"):
            if shutil.which(tool) is None:
                raise SkipTest(f"no {tool} on this machine (Debian: openssh-client)")
        if not os.path.exists(SSHD):
            raise SkipTest(f"no {SSHD} on this machine (Debian: openssh-server)")
        if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
            raise SkipTest("sshd run as root needs its privilege separation directory /run/sshd")

    async def keygen(self, path: str) -> None:
        out, err, code = await run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path])
        self.assertEqual(code, 0, err)

    async def test_sshProxyCommand(self) -> None:
        """
        ``ssh -o ProxyCommand='sprites-proxy -s %h -W :PORT' user@demo``
        logs in with a key and runs a command: the SSH session's bytes go
        both ways through stdio, the tunnel and the local sprite server.
        """
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        hostKey, userKey = os.path.join(work, "host"), os.path.join(work, "user")
        await self.keygen(hostKey)
        await self.keygen(userKey)
        shutil.copy(userKey + ".pub", os.path.join(work, "authorized_keys"))
        port = freePort()
        config = os.path.join(work, "sshd_config")
        with open(config, "w") as f:
            f.write(
                f"Port {port}\nListenAddress 127.0.0.1\nHostKey {hostKey}\n"
                f"AuthorizedKeysFile {work}/authorized_keys\nPidFile none\n"
                "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
                f"AllowUsers {getpass.getuser()}\n"
            )
        sshd = SSHDaemon("sshd")
        sshd.start(reactor, [config], dict(os.environ), work)
        self.addCleanup(sshd.terminate)
        await sshd.whenOutput(f"Server listening on 127.0.0.1 port {port}")

        api, _ = await listen(self, reactor, LocalSpriteServer(reactor, TOKEN).factory())
        env = {k: v for k, v in os.environ.items() if k not in ("SPRITE_TOKEN", "SPRITES_TOKEN")}
        env.update(
            SPRITE_TOKEN=TOKEN,
            SPRITES_API_URL=f"http://127.0.0.1:{api.getHost().port}",
            PYTHONPATH=ROOT,
        )
        proxy = f"{sys.executable} -m sprites_twisted -s %h --linger 0.2 -W :{port}"
        out, err, code = await run(
            [
                shutil.which("ssh") or "ssh",
                "-F",
                "/dev/null",
                "-o",
                f"ProxyCommand={proxy}",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "IdentitiesOnly=yes",
                "-i",
                userKey,
                f"{getpass.getuser()}@demo",
                "echo hello from $((6 * 7))",
            ],
            env,
        )
        self.assertEqual(code, 0, err)
        self.assertEqual(out, b"hello from 42\n")
        self.assertNotIn(TOKEN.encode(), err)


class FailingEndpoint:
    """
    A client endpoint whose every connection fails with C{error}.
    """

    def __init__(self, error: Exception) -> None:
        self.error = error

    def connect(self, factory: Any) -> Any:
        return fail(self.error)


def readAvailable(fd: int) -> bytes:
    """
    What can be read from non-blocking C{fd} now (C{b""} for nothing).
    """
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return b""


class ConnectStdioTests(TestCase):
    """
    L{connectStdio} with pipes for stdin and stdout.
    """

    timeout = 15

    def pipes(self) -> tuple[int, int, int, int]:
        """
        (stdin read end, stdin write end, stdout read end, stdout write end);
        the ends given to connectStdio are closed by it.
        """
        inRead, inWrite = os.pipe()
        outRead, outWrite = os.pipe()
        # Never block the test on a read: what is not there is a failure.
        os.set_blocking(outRead, False)
        self.addCleanup(os.close, outRead)
        return inRead, inWrite, outRead, outWrite

    async def test_relay(self) -> None:
        """
        What is written to stdin comes back on stdout through the tunnel
        (an echo service here); stdin's end closes the tunnel after the
        reply, then stdout is closed, and the result has no failure.
        """
        echo, _ = await listen(self, reactor, Factory.forProtocol(Echo))
        inRead, inWrite, outRead, outWrite = self.pipes()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", echo.getHost().port)
        finished = connectStdio(
            reactor,
            endpoint,
            "demo",
            "localhost:7",
            lingerTimeout=0.1,
            stdin=inRead,
            stdout=outWrite,
        )
        os.write(inWrite, b"over stdio")
        os.close(inWrite)
        result = await finished
        self.assertIsNone(result.failure)
        self.assertEqual(readAvailable(outRead), b"over stdio")

    async def test_failure(self) -> None:
        """
        A tunnel that cannot be opened: stdout is closed with nothing
        written, and the result carries the error.
        """
        inRead, inWrite, outRead, outWrite = self.pipes()
        self.addCleanup(os.close, inWrite)
        finished = connectStdio(
            reactor,
            FailingEndpoint(SpriteAuthError(401)),  # type: ignore[arg-type]
            "demo",
            "localhost:22",
            stdin=inRead,
            stdout=outWrite,
        )
        result = await finished
        self.assertIsInstance(result.failure.value, SpriteAuthError)  # type: ignore[union-attr]
        self.assertEqual(readAvailable(outRead), b"")


class Flood(Protocol):
    """
    Sends C{total} bytes as fast as the connection takes them (a push
    producer of its own transport), then closes.
    """

    chunk = os.urandom(64 * 1024)

    def __init__(self, total: int) -> None:
        self.total = total
        self.sent = 0
        self.digest = hashlib.sha256()
        self._paused = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        assert self.transport is not None
        self._paused = False
        while not self._paused and self.sent < self.total:
            self.transport.write(self.chunk)
            self.digest.update(self.chunk)
            self.sent += len(self.chunk)
        if self.sent >= self.total and not self._paused:
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def pauseProducing(self) -> None:
        self._paused = True

    def stopProducing(self) -> None:
        self._paused = True


class PauseRecorder(ProtocolWrapper):
    """
    Stands between the relay and the TCP connection to the target: fires
    the factory's C{paused} the first time the relay stops reading it.
    """

    def pauseProducing(self) -> None:
        if not self.factory.paused.called:
            self.factory.paused.callback(self.factory.received)
        self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        self.factory.received += len(data)
        super().dataReceived(data)


class PauseRecordingFactory(WrappingFactory):
    protocol = PauseRecorder

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self.paused: Deferred[int] = Deferred()
        self.received = 0


class RecordingEndpoint:
    """
    Connects to 127.0.0.1:C{port} through a L{PauseRecordingFactory}.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.factory: PauseRecordingFactory | None = None

    def connect(self, factory: Any) -> Deferred[Any]:
        self.factory = PauseRecordingFactory(factory)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        return endpoint.connect(self.factory).addCallback(lambda wrapper: wrapper.wrappedProtocol)


@implementer(IReadDescriptor)
class PipeReader:
    """
    Reads non-blocking pipe C{fd} through the reactor, keeping the sha256
    and the size of what came, until L{stop}.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.digest = hashlib.sha256()
        self.size = 0

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "PipeReader"

    def doRead(self) -> Any:
        while True:
            try:
                data = os.read(self.fd, 1024 * 1024)
            except BlockingIOError:
                return None
            if not data:
                return ConnectionDone()
            self.digest.update(data)
            self.size += len(data)

    def connectionLost(self, reason: Any) -> None:
        reactor.removeReader(self)

    def stop(self) -> tuple[str, int]:
        """
        Read what is left, stop reading: the sha256 and the size.
        """
        self.doRead()
        reactor.removeReader(self)
        return self.digest.hexdigest(), self.size


class FlowControlTests(TestCase):
    """
    A stalled stdout stops the tunnel from being read, instead of the
    process buffering the stream.
    """

    timeout = 30

    async def test_stalledStdout(self) -> None:
        """
        While nothing reads stdout, the relay stops reading the tunnel
        (pauses it) long before the target has sent its 32 MiB; once
        stdout is read again, all of it arrives, intact.
        """
        total = 32 * 1024 * 1024
        floods: list[Flood] = []

        def flood() -> Flood:
            floods.append(Flood(total))
            return floods[-1]

        target, _ = await listen(self, reactor, Factory.forProtocol(flood))
        inRead, inWrite = os.pipe()
        self.addCleanup(os.close, inWrite)
        outRead, outWrite = os.pipe()
        os.set_blocking(outRead, False)
        endpoint = RecordingEndpoint(target.getHost().port)
        finished = connectStdio(
            reactor,
            endpoint,
            "demo",
            "localhost:1",
            stdin=inRead,
            stdout=outWrite,  # type: ignore[arg-type]
        )
        # The relay dials at once, before reading anything from stdin.
        assert endpoint.factory is not None
        received = await endpoint.factory.paused
        # Paused with stdout full: what this process holds is a few
        # buffers, not the stream.
        self.assertLess(received, 4 * 1024 * 1024)
        self.assertLess(floods[0].sent, total)
        reader = PipeReader(outRead)
        reactor.addReader(reader)
        self.addCleanup(os.close, outRead)
        result = await finished
        digest, size = reader.stop()
        self.assertIsNone(result.failure)
        self.assertEqual((size, digest), (total, floods[0].digest.hexdigest()))
