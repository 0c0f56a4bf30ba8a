# -*- test-case-name: tests.test_twistd -*-
"""
What the commands (``twistd sprites-proxy``, ``twistd sprites-local`` and
the ``sprites-proxy`` console script) share: options and mappings in any
order, where the token comes from, and checks of seconds and endpoint
strings that name the bad value.

Kept apart from :mod:`sprites_twisted.tap` and
:mod:`sprites_twisted.localtap` so that neither command imports the
other's dependencies.
"""

from __future__ import annotations

import getopt
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from sprites_twisted.config import TOKEN_VARIABLES, checkToken, readTokenFile
from sprites_twisted.errors import ConfigurationError

__all__ = ["TokenOptions", "positiveNumber", "checkServerEndpoint"]

_PORT_FIRST = re.compile(r"^(tcp6?|ssl):(?:port=)?(\d+)(?::|$)", re.IGNORECASE)
_PORT_OPTION = re.compile(r"(?:^|:)port=(\d+)(?::|$)")


class _ParseOnly:
    """
    Stands in for the reactor while an endpoint string is only parsed:
    Twisted's server endpoints keep their reactor until they listen, which
    never happens to this one.
    """

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"endpoint string parsed for checking only, no reactor ({name})")


def _systemdSockets() -> int:
    """
    How many sockets systemd passed this process, as Twisted's ``systemd:``
    endpoints see them (Twisted reads, and then removes, the environment
    variables once, when its endpoints module is imported).
    """
    count = 0
    while count < 1024:
        try:
            serverFromString(_ParseOnly(), f"systemd:domain=INET:index={count}")
        except Exception:  # noqa: BLE001 - no socket at that index
            break
        count += 1
    return count


def checkServerEndpoint(option: str, description: str) -> str:
    """
    Check a Twisted server endpoint string before anything runs.

    Twisted parses it (loading any certificate an ``ssl:`` string names);
    a ``tcp:``, ``tcp6:`` or ``ssl:`` port must be 0..65535, which
    Twisted itself only finds out when listening (with an
    C{OverflowError}).

    :returns: C{description}.
    :raises usage.UsageError: naming the option and the string.
    """
    hint = "expected a Twisted server endpoint string such as tcp:8900:interface=127.0.0.1"
    try:
        serverFromString(_ParseOnly(), description)
    except Exception as e:  # noqa: BLE001 - any parse error is a usage error
        problem = str(e)
        systemd = description.split(":", 1)[0].lower() == "systemd"
        if systemd and isinstance(e, (IndexError, KeyError)):
            # Twisted says only "list index out of range" (or a bare name).
            problem = "no such socket was passed to this process"
            hint = (
                f"systemd's socket activation passed {_systemdSockets()} socket(s) here "
                "(it sets LISTEN_FDS, LISTEN_PID and LISTEN_FDNAMES)"
            )
        raise usage.UsageError(f"{option} {description!r}: {problem}; {hint}") from None
    match = _PORT_FIRST.match(description) or (
        description.split(":", 1)[0].lower() in ("tcp", "tcp6", "ssl")
        and _PORT_OPTION.search(description)
    )
    if match:
        port = int(match.group(match.lastindex or 1))
        if port > 65535:
            raise usage.UsageError(
                f"{option} {description!r}: port {port} is outside 0..65535; {hint}"
            )
    return description


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
        #: Where the token came from, for messages: ``$SPRITE_TOKEN``,
        #: ``$SPRITES_TOKEN`` or ``--token-file PATH``.
        self.tokenSource = ""

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        Parse C{options}, which may come in any order: an option after a
        positional argument is still an option (as GNU tools do), and
        ``--`` ends the options.
        """
        arguments = list(sys.argv[1:] if options is None else options)
        try:
            found, positional = getopt.gnu_getopt(arguments, self.shortOpt, self.longOpt)
        except getopt.error as e:
            raise usage.UsageError(str(e)) from None
        ordered: list[str] = []
        for name, value in found:
            if name.startswith("--"):
                ordered.append(f"{name}={value}" if f"{name[2:]}=" in self.longOpt else name)
            elif f"{name[1]}:" in self.shortOpt:
                ordered += [name, value]
            else:
                ordered.append(name)
        super().parseOptions([*ordered, "--", *positional])

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
                self.tokenSource = f"--token-file {path}"
                return fromFile
            for name in TOKEN_VARIABLES:
                value = self.environ.get(name)
                if value:
                    self.tokenSource = f"${name}"
                    return checkToken(value)
            return None
        except ConfigurationError as e:
            raise usage.UsageError(str(e)) from None
