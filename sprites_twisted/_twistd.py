# -*- test-case-name: tests.test_twistd -*-
"""
What the two twistd commands, ``sprites-proxy`` and ``sprites-local``,
share: where the token comes from, and the top service that makes start-up
failures and shutdown behave like a command-line tool's.

Kept apart from :mod:`sprites_twisted.tap` and
:mod:`sprites_twisted.localtap` so that neither command imports the
other's dependencies.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python import usage

from sprites_twisted.config import checkToken, readTokenFile, tokenFromEnvironment
from sprites_twisted.errors import ConfigurationError

__all__ = ["CommandService", "TokenOptions", "positiveNumber"]


def positiveNumber(option: str, value: str, *, allowZero: bool = False) -> float:
    """
    Parse the value of a seconds option.

    :raises usage.UsageError: naming the option and the value when it is
        not a finite number above zero (or at least zero).
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    low = 0.0
    if not (number >= low if allowZero else number > low) or number == float("inf"):
        expected = "zero or more" if allowZero else "more than zero"
        raise usage.UsageError(f"--{option} {value!r}: expected a number of seconds, {expected}")
    return number


class TokenOptions(usage.Options):
    """
    Options base for a command that needs the API token.

    The token comes from ``--token-file PATH`` or from ``SPRITE_TOKEN``
    (then ``SPRITES_TOKEN``), never from a plain command-line value, which
    anyone could read in the process list.  It is kept in the ``token``
    attribute, not in the options dictionary, so that printing the options
    cannot show it.

    :param environ: the environment to read (tests pass their own).
    """

    optParameters = [
        [
            "token-file",
            None,
            None,
            "Read the API token from this file (default: $SPRITE_TOKEN, then $SPRITES_TOKEN).",
        ],
    ]

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.token: str | None = None
        #: True when the token file can be read by group or others.
        self.tokenFileExposed = False

    def readToken(self) -> str | None:
        """
        Read the token from the file given, else from the environment.

        :returns: the token, or ``None`` when neither source has one.
        :raises usage.UsageError: when the file cannot be read or a token
            is malformed (the message never contains the token).
        """
        path = self["token-file"]
        try:
            if path:
                fromFile, self.tokenFileExposed = readTokenFile(path)
                return fromFile
            fromEnvironment = tokenFromEnvironment(self.environ)
            return None if fromEnvironment is None else checkToken(fromEnvironment)
        except ConfigurationError as e:
            raise usage.UsageError(str(e)) from None


class CommandService(MultiService):
    """
    The top service of a twistd command, wrapping the real one.

    Two things twistd does by default are wrong for a port forwarder run
    from a terminal or a supervisor:

    - a local port that is already in use stops start-up with a traceback;
      here it prints one line naming the address (``sprites-proxy:
      Couldn't listen on 127.0.0.1:8080: ... Address already in use.``)
      and twistd still exits non-zero;
    - after SIGTERM or SIGINT, twistd kills itself with that signal once
      shut down; here connections were drained and shutdown is what the
      user asked for, so the process exits 0.

    :param command: the command name, prefixed to start-up errors.
    :param reactor: the reactor twistd runs.
    :param service: the service doing the work.
    """

    log = Logger()

    def __init__(self, command: str, reactor: Any, service: IService) -> None:
        super().__init__()
        self.command = command
        self._reactor = reactor
        service.setServiceParent(self)

    def privilegedStartService(self) -> None:
        self._start(MultiService.privilegedStartService)

    def startService(self) -> None:
        self._start(MultiService.startService)

    def _start(self, start: Callable[[MultiService], None]) -> None:
        try:
            start(self)
        except CannotListenError as e:
            self._startFailed(e)
            raise

    def _startFailed(self, error: CannotListenError) -> None:
        """
        Log ``error``, and make the interpreter print it as one line rather
        than a traceback when twistd lets it escape.

        twistd must still see the exception itself, so that it removes its
        pid file and, when daemonizing, reports the error to the parent.
        """
        self.log.error("{command}: {error}", command=self.command, error=str(error))
        previous = sys.excepthook
        command = self.command

        def excepthook(
            kind: type[BaseException],
            value: BaseException,
            traceback: TracebackType | None,
        ) -> None:
            if value is error:
                (sys.__stderr__ or sys.stderr).write(f"{command}: {error}\n")
            else:
                previous(kind, value, traceback)

        sys.excepthook = excepthook

    def stopService(self) -> Deferred[Any]:
        # twistd reads _exitSignal once the reactor stops and re-raises the
        # signal; forgetting it makes a requested, drained shutdown exit 0.
        if getattr(self._reactor, "_exitSignal", None) is not None:
            self._reactor._exitSignal = None
        return MultiService.stopService(self)  # type: ignore[no-any-return]
