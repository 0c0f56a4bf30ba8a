# -*- test-case-name: tests.test_cli -*-
"""
The ``sprites-proxy`` command (also ``python -m sprites_twisted``)::

    SPRITE_TOKEN=... sprites-proxy -s NAME 5432 8080:80
    ssh -o ProxyCommand='sprites-proxy -s %h -W :22' user@NAME

It runs the same :class:`~sprites_twisted.manager.ProxyManager`, with the
same options, as ``twistd sprites-proxy``, under
``twisted.internet.task.react``, and adds what a foreground command needs
beyond twistd:

- a usage error is one line naming the bad value and ``try --help`` on
  stderr, exit 2;
- a refused start (the Sprites API rejected the token, no such sprite, a
  busy port) is one line on stderr, exit 1;
- SIGINT/SIGTERM stop listening, drain, and exit 0; a second signal exits
  at once;
- logs go to stderr through ``twisted.logger`` (text, or ``--log-format
  json``), ``-v`` for debug;
- ``-W [HOST]:PORT`` (stdio mode, :mod:`sprites_twisted.stdio`) connects
  stdin and stdout to one tunnel; then nothing but tunnel bytes is written
  to stdout, logs are quiet unless ``-v``, the sprite's close exits 0 and
  a refused tunnel exits 1.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.internet.task import react
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    PredicateResult,
    eventAsText,
    globalLogBeginner,
    jsonFileLogObserver,
)
from twisted.python import usage
from twisted.python.failure import Failure

from sprites_twisted import __version__, tap
from sprites_twisted.errors import AddressError
from sprites_twisted.mapping import checkPort, formatTarget, parseAddress

__all__ = ["Options", "main", "run"]

COMMAND = "sprites-proxy"
#: Exit codes: usage error, refused start or tunnel.
EXIT_USAGE, EXIT_REFUSED = 2, 1


class Options(tap.Options):
    """
    The options of ``twistd sprites-proxy``, plus ``-W``, ``-v``,
    ``--log-format`` and ``--version``.

    After parsing, ``self.stdioTarget`` is C{(host, port)} in stdio mode,
    else C{None}.
    """

    synopsis = (
        f"Usage: {COMMAND} -s NAME [options] MAPPING ...\n"
        f"       {COMMAND} -s NAME [options] --listen ENDPOINT --to [HOST:]PORT ...\n"
        f"       {COMMAND} -s NAME [options] -W [HOST]:PORT"
    )
    longdesc = (
        tap.Options.longdesc
        + " With -W [HOST]:PORT, standard input and output are connected to one "
        "tunnel instead (for ssh -o ProxyCommand='sprites-proxy -s %h -W :22'). "
        "Logs go to stderr. Exit codes: 0 after a stop by SIGINT/SIGTERM (or the "
        "sprite's close in -W mode), 1 when the API refuses the token or the "
        "sprite, a port cannot listen or the -W tunnel fails, 2 for a usage error."
    )

    optFlags = [
        ["verbose", "v", "Log debug messages too (in -W mode: log at all)."],
    ]
    optParameters = [
        [
            "stdio",
            "W",
            None,
            "Connect stdin/stdout to one tunnel to [HOST]:PORT in the sprite (HOST: localhost).",
        ],
        ["log-format", None, "text", "Log format on stderr: text or json."],
    ]

    def __init__(self, environ: Any = None) -> None:
        super().__init__(environ)
        self.stdioTarget: tuple[str, int] | None = None

    def opt_version(self) -> None:
        """
        Print the version and exit.
        """
        print(f"{COMMAND} (sprites-twisted) {__version__}")
        sys.exit(0)

    def checkNothingToForward(self) -> None:
        if self["stdio"] is None:
            super().checkNothingToForward()
        elif self.mappings or self.forwards:
            raise usage.UsageError(
                f"-W {self['stdio']!r} connects stdin/stdout to one tunnel: give no "
                "mappings or --listen with it"
            )

    def postOptions(self) -> None:
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError(f"--log-format {self['log-format']!r}: expected text or json")
        if self["stdio"] is not None:
            self.stdioTarget = _parseStdioTarget(self["stdio"])
        super().postOptions()


def _parseStdioTarget(value: str) -> tuple[str, int]:
    """
    ``-W``'s ``[HOST]:PORT`` (or just ``PORT``): empty host is localhost.

    :raises usage.UsageError: naming the value.
    """
    text = value.strip()
    try:
        if text.isdigit():
            return "localhost", checkPort(text)
        return parseAddress(text)
    except (ValueError, AddressError) as e:
        raise usage.UsageError(
            f"-W {value!r}: {e}; expected [HOST]:PORT such as :22 or db:5432"
        ) from None


def _say(stream: IO[str], text: str) -> None:
    stream.write(f"{COMMAND}: {text}\n")
    stream.flush()


def startLogging(options: Options, stream: IO[str]) -> ILogObserver:
    """
    Send log events to C{stream} (stderr).

    Text is one line per event without the system field; JSON is one
    object per line.  Without ``-v``: our own info messages and everyone's
    warnings (in stdio mode: nothing below critical, since the outcome is
    reported on its own).  With ``-v``: debug and up.
    """
    observer: ILogObserver
    if options["log-format"] == "json":
        observer = jsonFileLogObserver(stream, recordSeparator="")
    else:
        observer = FileLogObserver(
            stream, lambda event: (eventAsText(event, includeSystem=False) or "") + "\n"
        )
    verbose = bool(options["verbose"])
    quiet = options.stdioTarget is not None

    def predicate(event: Any) -> Any:
        level = event.get("log_level", LogLevel.info)
        if verbose:
            return PredicateResult.maybe
        if quiet:
            return PredicateResult.maybe if level >= LogLevel.critical else PredicateResult.no
        if level >= LogLevel.warn:
            return PredicateResult.maybe
        ours = str(event.get("log_namespace", "")).startswith("sprites_twisted")
        return PredicateResult.maybe if ours and level >= LogLevel.info else PredicateResult.no

    filtered = FilteringLogObserver(observer, [predicate])  # type: ignore[list-item]
    globalLogBeginner.beginLoggingTo([filtered], redirectStandardIO=False)
    return filtered


class _Signals:
    """
    SIGINT/SIGTERM handling for the command: the first signal starts a
    graceful stop, a second one exits the process at once.

    Installed once the reactor runs (it installs its own handlers while
    starting), replacing the reactor's for these two signals.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.received: Deferred[int] = Deferred()
        self._count = 0

    def install(self) -> None:
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, self._handle)

    def _handle(self, number: int, frame: Any) -> None:
        self._count += 1
        if self._count > 1:
            os._exit(128 + number)
        self._reactor.callFromThread(self._fire, number)

    def _fire(self, number: int) -> None:
        if not self.received.called:
            self.received.callback(number)


async def run(
    reactor: Any,
    argv: Sequence[str],
    environ: Any = None,
    stderr: IO[str] | None = None,
) -> int:
    """
    The command: parse C{argv}, forward until a signal (or run one stdio
    tunnel), and return the exit code.
    """
    err = sys.stderr if stderr is None else stderr
    options = Options(environ)
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as e:
        _say(err, f"{e} (try {COMMAND} --help)")
        return EXIT_USAGE
    startLogging(options, err)
    signals = _Signals(reactor)
    reactor.callWhenRunning(signals.install)
    if options.stdioTarget is not None:
        return await _runStdio(reactor, options, signals, err)
    return await _runForwards(reactor, options, signals, err)


async def _runForwards(reactor: Any, options: Options, signals: _Signals, err: IO[str]) -> int:
    manager = tap._makeService(options, reactor)
    ready = manager.whenReady()
    manager.startService()
    first = await _first(ready, signals.received)
    if isinstance(first, Failure):
        await manager.stopService()
        _say(err, tap.describeStartFailure(first, options))
        return EXIT_REFUSED
    if not signals.received.called:
        await signals.received
    await manager.stopService()
    return 0


async def _runStdio(reactor: Any, options: Options, signals: _Signals, err: IO[str]) -> int:
    from sprites_twisted.stdio import connectStdio

    assert options.stdioTarget is not None
    host, port = options.stdioTarget
    client = tap._client(options, reactor)
    endpoint = client.endpoint(options["sprite"], port, host)
    finished = connectStdio(
        reactor,
        endpoint,
        options["sprite"],
        formatTarget(host, port),
        lingerTimeout=options["linger"],
    )
    outcome = await _first(finished, signals.received)
    if not finished.called:
        # A signal: end now (there is nothing to drain towards a terminal
        # that asked us to stop).
        return 0
    failure = getattr(outcome, "failure", None)
    if failure is not None:
        why = tap.describeStartFailure(failure, options)
        _say(err, f"no tunnel to {options['sprite']} {formatTarget(host, port)}: {why}")
        return EXIT_REFUSED
    return 0


async def _first(*ds: Deferred[Any]) -> Any:
    """
    The result (or Failure) of whichever of C{ds} fires first; the others
    are left alone.  A failure is handled here (it is the result).
    """
    winner: Deferred[list[Any]] = Deferred()

    def done(result: Any) -> Any:
        if not winner.called:
            # In a list, so that a Failure is a value here, not an error.
            winner.callback([result])
        return None if isinstance(result, Failure) else result

    for d in ds:
        d.addBoth(done)
    return (await winner)[0]


def main(argv: Sequence[str] | None = None) -> None:
    """
    The console script's entry point.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)

    async def _main(reactor: Any) -> None:
        code = await run(reactor, arguments)
        if code:
            raise SystemExit(code)

    react(_main)
