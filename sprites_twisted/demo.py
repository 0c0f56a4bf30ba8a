# -*- test-case-name: tests.test_demo -*-
"""
See a tunnel work, on this machine, with no Sprites account::

    python -m sprites_twisted.demo          # or: make demo

It starts three things on 127.0.0.1, on free ports:

1. ``twistd sprites-local``: the Sprites proxy API, served locally;
2. a small HTTP service, standing in for a web server inside a sprite;
3. the ``sprites-proxy`` command: a local port forwarded through a tunnel
   (a WebSocket to sprites-local) to that service, exactly as it would be
   forwarded into a real sprite.

It fetches one page through the forwarded port, prints it and the command
to try by hand, and keeps forwarding until Ctrl-C (or SIGTERM); then it
stops the commands (SIGTERM), the proxy first, and waits for them.  A
further signal while they stop is ignored, with one line on stderr: the
stop is bounded (the proxy's drain timeout), and ``timeout 20 make demo``
sends two SIGTERMs (one from ``timeout``, one from ``make``) where nobody
asked for anything but a stop.  It exits 0 when both commands stopped as
they should, 1 otherwise; nothing starts before the reactor runs, and a
Ctrl-C before then (while Twisted is still starting) exits 130 with one
line.  ``--once`` stops right after the fetch (the tests
use it).

The token is generated here and reaches the two commands in their
environment, never on their command line.  The process helpers below are
also used by the end-to-end tests.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectError, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater, react
from twisted.python.failure import Failure

__all__ = ["TwistdProcess", "CommandProcess", "freePort", "waitForPort", "main"]

#: Runs twistd with the interpreter running us, so that the same virtualenv
#: (and the same sprites_twisted) is used whatever is on PATH.  SIGINT is
#: ignored: Ctrl-C in a terminal reaches the whole process group, and we
#: stop the commands ourselves, in order, with SIGTERM (a second signal
#: would make twistd exit by that signal, mid-drain).
TWISTD = (
    "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "from twisted.scripts.twistd import run; run()"
)
#: Runs the sprites-proxy command in a process group of its own, so that
#: Ctrl-C in a terminal reaches only the demo, which then stops it with one
#: SIGTERM (a second signal would make it exit at once, mid-drain).
COMMAND = "import os; os.setpgrp(); from sprites_twisted.cli import main; main()"
PAGE = b"Hello from inside the sprite!\n"
SPRITE = "demo"
_LOG_LINE = re.compile(r"^\S+ \[(?P<source>[^\]#]*)(#(?P<level>\w+))?\] (?P<message>.*)$")
#: A line of the sprites-proxy command's log: a timestamp and the message
#: (it shows only its own lines and problems already).
_COMMAND_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\S+ (?P<message>.*)$")


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that was free a moment ago (for a child
    process to listen on).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TwistdProcess(ProcessProtocol):
    """
    ``twistd -n`` running one of our commands in a child process.

    :ivar output: everything it wrote (stdout and stderr).
    :ivar ended: fires with its exit code (``-N`` when killed by signal N).
    :param onLine: called with each line it writes, as it writes it.
    """

    def __init__(self, name: str, onLine: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.output = b""
        self.ended: Deferred[int] = Deferred()
        self.exitCode: int | None = None
        self._onLine = onLine
        self._partial = b""
        self._lineWaiters: list[tuple[bytes, Deferred[None]]] = []

    @staticmethod
    def commandLine(args: Sequence[str]) -> list[str]:
        """
        The argv that runs ``twistd -n ARGS`` without a pid file (so that
        several can run from one directory).
        """
        return [sys.executable, "-c", TWISTD, "-n", "--pidfile=", *args]

    def start(self, reactor: Any, args: Sequence[str], env: dict[str, str], path: str) -> None:
        """
        Spawn ``twistd -n ARGS`` with exactly ``env``, in directory ``path``.
        """
        argv = self.commandLine(args)
        reactor.spawnProcess(self, argv[0], argv, env=env, path=path)

    def whenOutput(self, text: str) -> Deferred[None]:
        """
        A Deferred that fires once the child has written C{text} (at once if
        it already has); it fails with C{RuntimeError} if the child exits
        first.  Readiness and shutdown are then events, not polls.
        """
        d: Deferred[None] = Deferred()
        wanted = text.encode("utf-8")
        if wanted in self.output:
            d.callback(None)
        elif self.exitCode is not None:
            d.errback(RuntimeError(f"{self.name} exited before writing {text!r}"))
        else:
            self._lineWaiters.append((wanted, d))
        return d

    def outReceived(self, data: bytes) -> None:
        self.output += data
        waiting, self._lineWaiters = self._lineWaiters, []
        for wanted, d in waiting:
            if wanted in self.output:
                d.callback(None)
            else:
                self._lineWaiters.append((wanted, d))
        if self._onLine is None:
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._onLine(line.decode("utf-8", "replace"))

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        value: Any = reason.value  # ProcessDone or ProcessTerminated
        self.exitCode = value.exitCode if value.exitCode is not None else -value.signal
        waiting, self._lineWaiters = self._lineWaiters, []
        for wanted, d in waiting:
            d.errback(RuntimeError(f"{self.name} exited before writing {wanted!r}"))
        self.ended.callback(self.exitCode)

    def terminate(self) -> Deferred[int]:
        """
        Send SIGTERM unless it already exited; fires with the exit code.
        """
        if self.exitCode is None and self.transport is not None:
            try:
                self.transport.signalProcess("TERM")
            except ProcessExitedAlready:
                pass
        return self.ended


class CommandProcess(TwistdProcess):
    """
    The ``sprites-proxy`` console script (:mod:`sprites_twisted.cli`) in a
    child process, run with the interpreter running us.
    """

    @staticmethod
    def commandLine(args: Sequence[str]) -> list[str]:
        return [sys.executable, "-c", COMMAND, *args]


async def waitForPort(
    reactor: Any,
    port: int,
    children: Sequence[TwistdProcess] = (),
    tries: int = 200,
    interval: float = 0.025,
) -> None:
    """
    Poll until 127.0.0.1:``port`` accepts a connection, at most ``tries``
    times, ``interval`` seconds apart.

    :raises RuntimeError: when it never does, or when one of ``children``
        exits meanwhile (with what it wrote).
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=2)
    for _ in range(tries):
        for child in children:
            if child.exitCode is not None:
                raise RuntimeError(
                    f"{child.name} exited with status {child.exitCode}:\n"
                    + child.output.decode("utf-8", "replace")
                )
        try:
            probe = await connectProtocol(endpoint, Protocol())
        except ConnectError:
            await deferLater(reactor, interval, lambda: None)
            continue
        # Abort (RST) rather than close: a forwarded port would otherwise
        # keep the probe's tunnel open a while for a reply (half-close).
        assert probe.transport is not None
        probe.transport.abortConnection()
        return
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {tries} tries")


class _Fetch(Protocol):
    """
    Sends one HTTP/1.0 request and collects the response until the server
    closes.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.response = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.response += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.done.callback(self.response)


async def fetch(reactor: Any, port: int) -> bytes:
    """
    ``GET /`` from 127.0.0.1:``port``; the raw response.
    """
    request = f"GET / HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    proto = await connectProtocol(endpoint, _Fetch(request))
    response: bytes = await proto.done.addTimeout(10, reactor)
    return response


async def startDemoService(reactor: Any) -> int:
    """
    Serve :data:`PAGE` over HTTP on a free loopback port (in this process): the
    service "inside the sprite".  Returns the port.
    """
    from twisted.web.server import Site
    from twisted.web.static import Data

    page = Data(PAGE, "text/plain; charset=utf-8")
    page.isLeaf = True  # every path gets the page
    site = Site(page)
    site.noisy = False
    listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    return int(listening.getHost().port)


def _say(text: str = "") -> None:
    print(text, flush=True)


def _relaySignals(reactor: Any, handler: Callable[[int], None]) -> None:
    """
    Call C{handler(number)} in the reactor for every SIGINT and SIGTERM,
    instead of letting the reactor stop itself on each: it stops once, when
    the demo's main returns, and a second C{reactor.stop()} (a second signal
    during the shutdown) would raise C{ReactorNotRunning}.

    Call it once the reactor runs: the reactor installs its own handlers as
    it starts.  An ignored SIGINT (a background job) stays ignored.
    """

    def relay(number: int, frame: Any) -> None:
        # Only hand it over: the handler prints, which is not safe to do
        # from a signal handler (it may interrupt another print).
        reactor.callFromThread(handler, number)

    for number in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(number) is not signal.SIG_IGN:
            signal.signal(number, relay)


def _ignoreSignals() -> None:
    """
    Ignore SIGINT and SIGTERM from now on: for after the stop, when there
    is nothing left to stop.  Exiting still takes a moment (the
    interpreter's teardown, a good 0.1 s), and a signal then is no longer
    handled by Python: it ends the process by that signal, as if the clean
    stop had been cut short (a late second Ctrl-C).  An ignored signal
    stays ignored through the teardown.
    """
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)


def _childLine(name: str) -> Callable[[str], None]:
    """
    Print a child's log line, labelled, without its timestamp: only our
    own lines and problems, not twistd's start-up chatter.
    """

    def show(line: str) -> None:
        match = _LOG_LINE.match(line)
        command = _COMMAND_LINE.match(line)
        if match is None and command is not None:
            _say(f"    [{name}] {command['message']}")
            return
        if match is None:
            if line.strip():
                _say(f"    [{name}] {line}")
            return
        ours = match["source"].startswith("sprites_twisted")
        problem = match["level"] in ("warn", "error", "critical")
        if ours or problem:
            _say(f"    [{name}] {match['message']}")

    return show


def _describeExit(child: TwistdProcess) -> str:
    """
    How C{child} ended, for the demo's last line.
    """
    if child.transport is None:
        return f"{child.name} not started"
    return f"{child.name} exited {child.exitCode}"


def _stopStatus(local: TwistdProcess, proxy: TwistdProcess) -> int:
    """
    The demo's exit status once it stopped its children: 0 if each stopped
    as it should, 1 otherwise.  The command exits 0 after a drained stop;
    twistd exits by the signal it was stopped with, as is its convention;
    a child never started (a stop during start-up) had nothing to stop.
    """
    proxyClean = proxy.transport is None or proxy.exitCode == 0
    localClean = local.transport is None or local.exitCode in (0, -signal.SIGTERM)
    return 0 if proxyClean and localClean else 1


async def run(reactor: Any, once: bool) -> int:
    """
    The demo; returns the exit status.
    """
    token = secrets.token_urlsafe(24)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env.pop("SPRITES_TOKEN", None)
    env.update(
        PYTHONPATH=os.pathsep.join([here, *filter(None, [env.get("PYTHONPATH")])]),
        SPRITE_TOKEN=token,
        PYTHONUNBUFFERED="1",  # their log lines as they happen
    )

    servicePort = await startDemoService(reactor)
    apiPort, localPort = freePort(), freePort()
    env["SPRITES_API_URL"] = f"http://127.0.0.1:{apiPort}"
    localArgs = ["sprites-local", "--listen", f"tcp:{apiPort}:interface=127.0.0.1"]
    proxyArgs = ["--sprite", SPRITE, f"{localPort}:{servicePort}"]

    _say("sprites-twisted demo: a tunnel into a sprite, all on this machine.")
    _say()
    _say(f"  demo service   HTTP on 127.0.0.1:{servicePort}, standing in for a web server")
    _say(f'                 listening on port {servicePort} inside the sprite "{SPRITE}"')
    _say(f"  sprites-local  the Sprites API, served on 127.0.0.1:{apiPort}:")
    _say(f"                 SPRITE_TOKEN=... twistd -n --pidfile= {' '.join(localArgs)}")
    _say(f"  sprites-proxy  127.0.0.1:{localPort} -> tunnel -> port {servicePort} in the sprite:")
    _say(
        f"                 SPRITE_TOKEN=... SPRITES_API_URL=http://127.0.0.1:{apiPort} "
        f"sprites-proxy {' '.join(proxyArgs)}"
    )
    _say()
    _say("Their logs, as they come ([name] message):")

    children = [
        TwistdProcess("sprites-local", _childLine("sprites-local")),
        CommandProcess("sprites-proxy", _childLine("sprites-proxy")),
    ]
    stopping: list[Deferred[Any]] = []

    async def stopInOrder() -> None:
        # The proxy first, so that its tunnels end before the server does.
        for child in reversed(children):
            if child.transport is not None:  # started
                await child.terminate()
        _say(f"Stopped: {_describeExit(children[1])}, {_describeExit(children[0])}.")

    def stopChildren() -> Deferred[Any]:
        if not stopping:
            stopping.append(Deferred.fromCoroutine(stopInOrder()))
        return stopping[0]

    # The signal that asked for the stop, once one did.
    stopSignal: int | None = None
    warned = False

    async def demonstrate() -> int:
        # Start, fetch, show, then forward until a signal cancels this; the
        # children are stopped by the caller.  Returns the exit status.
        # Nothing starts before the reactor runs and our signal handlers
        # are in place: a Ctrl-C before then has nothing to stop (main).
        running: Deferred[None] = Deferred()
        reactor.callWhenRunning(running.callback, None)
        await running
        workdir = os.getcwd()
        children[0].start(reactor, localArgs, env, workdir)
        _say(
            f"Waiting until 127.0.0.1:{localPort} answers "
            "(the demo checks with an empty connection)."
        )
        try:
            # The proxy starts once the API answers, so that its check of the
            # sprite before listening finds the server.
            await waitForPort(reactor, apiPort, children[:1])
            children[1].start(reactor, proxyArgs, env, workdir)
            await waitForPort(reactor, localPort, children)
            response = await fetch(reactor, localPort)
        except Exception as e:  # noqa: BLE001 - reported, then a non-zero exit
            if stopSignal is not None:
                # Cancelled by the signal (a cancelled connection attempt
                # fails with its own error, not CancelledError).
                raise CancelledError() from e
            _say(f"\nThe demo failed: {e}")
            return 1

        _say()
        _say(f"Fetched http://127.0.0.1:{localPort}/ through the tunnel; the response:")
        _say()
        for line in response.decode("utf-8", "replace").splitlines():
            _say(f"  | {line}")
        _say()
        if PAGE not in response:
            _say("That is not the demo page: something is wrong.")
            return 1
        _say("Try it yourself, from another terminal:")
        _say()
        _say(f"    curl http://127.0.0.1:{localPort}/")
        _say()
        if once:
            _say("Stopping (--once).")
        else:
            _say("Forwarding until Ctrl-C.")
            await Deferred()  # until a signal cancels it
        return 0

    def onSignal(number: int) -> None:
        nonlocal stopSignal, warned
        name = signal.Signals(number).name
        if stopSignal is None and not stopping:
            stopSignal = number
            _say(f"\n{name}: stopping sprites-proxy, then sprites-local.")
            demonstrating.cancel()
        elif not warned:
            # The stop is under way and bounded (the proxy's drain
            # timeout); cutting it short would leave the proxy running
            # after we exit.  Said once, however many signals come.
            warned = True
            print(
                f"{name}: already stopping; waiting for the children.", file=sys.stderr, flush=True
            )

    # A safety net: were run to fail unexpectedly, react would stop the
    # reactor, and this stops the children first.
    reactor.addSystemEventTrigger("before", "shutdown", stopChildren)
    # Our handlers first, then the children (callWhenRunning keeps order).
    reactor.callWhenRunning(_relaySignals, reactor, onSignal)
    demonstrating = Deferred.fromCoroutine(demonstrate())
    try:
        status = await demonstrating
    except CancelledError:
        if stopSignal is None:
            raise
        status = 0  # stopped as asked; the children's exits decide
    await stopChildren()
    _ignoreSignals()
    return status or _stopStatus(*children)


async def _main(reactor: Any, *argv: str) -> None:
    unknown = [a for a in argv if a != "--once"]
    if unknown:
        raise SystemExit(f"usage: python -m sprites_twisted.demo [--once]; unknown {unknown[0]!r}")
    try:
        status = await run(reactor, once="--once" in argv)
    except KeyboardInterrupt:
        # Only possible before the reactor runs (then the handlers are
        # Twisted's and ours), when nothing is started yet.
        raise _interrupted() from None
    if status:
        raise SystemExit(status)


def main(argv: Sequence[str] | None = None) -> None:
    """
    Run the demo (``python -m sprites_twisted.demo [--once]``).
    """
    try:
        react(_main, list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        raise _interrupted() from None


def _interrupted() -> SystemExit:
    """
    A Ctrl-C while Twisted was still starting, before the reactor ran and
    the demo's own handlers took over: nothing was started yet.  One line
    instead of a traceback, and 130, as a shell reports an interrupted
    command.
    """
    print("Interrupted before the demo started; nothing to stop.", file=sys.stderr, flush=True)
    return SystemExit(130)


if __name__ == "__main__":
    main()
