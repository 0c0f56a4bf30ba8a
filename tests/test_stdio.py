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
import os
import shutil
import sys
from typing import Any

from twisted.internet import reactor as _globalReactor
from twisted.internet.defer import fail
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from sprites_twisted.demo import TwistdProcess, freePort
from sprites_twisted.errors import SpriteAuthError
from sprites_twisted.server import LocalSpriteServer
from sprites_twisted.stdio import connectStdio
from tests.helpers import Echo, listen

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
