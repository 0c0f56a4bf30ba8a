# -*- test-case-name: tests.test_localtap -*-
"""
``twistd sprites-local``: serve the local sprite server.

::

    twistd -n sprites-local --listen tcp:8900:interface=127.0.0.1

It speaks the Sprites proxy API on this machine (see
:mod:`sprites_twisted.server`), so that ``sprites-proxy``, the demo and
tests run with no Sprites account: point ``SPRITES_API_URL`` at it.
Tunnels reach ports on this machine; other targets only with ``--allow``.
"""

from __future__ import annotations

import ipaddress
import secrets
import sys
from typing import IO, Any

from twisted.application import strports
from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage

from sprites_twisted._twistd import TokenOptions, checkServerEndpoint
from sprites_twisted.config import DEFAULT_LOCAL_LISTEN as DEFAULT_LISTEN
from sprites_twisted.config import DEFAULT_MAX_TUNNELS, checkSpriteName, isLoopbackHost
from sprites_twisted.errors import ConfigurationError
from sprites_twisted.mapping import checkHost
from sprites_twisted.server import LocalSpriteServer

__all__ = ["DEFAULT_LISTEN", "Options", "makeService"]


log = Logger()


class Options(TokenOptions):
    """
    Command-line options of ``twistd sprites-local``.

    After parsing: ``self["listen"]``, ``self.sprites`` (names, or ``None``
    for any), ``self.allow`` (extra targets), ``self["max-tunnels"]`` (an
    int) and ``self.token``; ``self.tokenGenerated`` is true when no token was
    given and one was made up.
    """

    synopsis = "[options]"
    longdesc = (
        "Serve the Sprites proxy API on this machine, for the demo, tests and "
        "offline work. Clients authenticate with the token from $SPRITE_TOKEN "
        "(then $SPRITES_TOKEN) or --token-file; without one, a token is "
        "generated and printed once at start. Tunnels may reach loopback "
        "targets, plus what --allow adds."
    )

    optParameters = [
        [
            "listen",
            None,
            DEFAULT_LISTEN,
            "Twisted server endpoint string to serve on (tcp:..., ssl:...).",
        ],
        [
            "max-tunnels",
            None,
            str(DEFAULT_MAX_TUNNELS),
            "Concurrent tunnels before the server answers 429.",
        ],
    ]

    def __init__(self, environ: Any = None) -> None:
        super().__init__(environ)
        self.sprites: list[str] | None = None
        self.allow: list[str] = []
        self.tokenGenerated = False

    def opt_sprite(self, name: str) -> None:
        """
        Serve only this sprite name (repeatable; default: any name).
        """
        try:
            checkSpriteName(name)
        except ConfigurationError as e:
            raise usage.UsageError(str(e)) from None
        if self.sprites is None:
            self.sprites = []
        self.sprites.append(name)

    opt_s = opt_sprite

    def opt_allow(self, target: str) -> None:
        """
        Also let tunnels reach this host, IP address or network (repeatable).
        """
        entry = target.strip()
        try:
            ipaddress.ip_network(entry.strip("[]"), strict=False)
        except ValueError:
            try:
                if not entry:
                    raise ValueError("it is empty") from None
                checkHost(entry)
            except ValueError as e:
                raise usage.UsageError(
                    f"--allow {target!r}: {e}; expected a host name, an IP address "
                    "or a network such as 10.0.0.0/8"
                ) from None
        self.allow.append(entry)

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError(
                f"unexpected argument {args[0]!r}: sprites-local takes options only"
            )

    def postOptions(self) -> None:
        try:
            maxTunnels = int(self["max-tunnels"])
        except ValueError:
            maxTunnels = 0
        if maxTunnels < 1:
            raise usage.UsageError(
                f"--max-tunnels {self['max-tunnels']!r}: expected a whole number, 1 or more"
            )
        self["max-tunnels"] = maxTunnels
        checkServerEndpoint("--listen", self["listen"])
        self.token = self.readToken()
        if self.token is None:
            self.token = secrets.token_urlsafe(32)
            self.tokenGenerated = True


def _listenInterface(description: str) -> str | None:
    """
    The ``interface=`` of a ``tcp:``/``ssl:`` endpoint string, ``""`` when it
    has none (all interfaces), ``None`` when it is another kind of endpoint.
    """
    kind = description.split(":", 1)[0].lower()
    if kind not in ("tcp", "tcp6", "ssl"):
        return None
    for part in description.split(":"):
        if part.startswith("interface="):
            return part[len("interface=") :].replace("\\", "")
    return ""


def _makeService(options: Options, reactor: Any, stdout: IO[str] | None = None) -> IService:
    """
    The service ``twistd sprites-local`` runs: the server's factory on the
    ``--listen`` endpoint, through ``strports.service`` so that a busy port
    stops start-up.

    A generated token is written to ``stdout`` here, once: it is the only
    place a token is ever shown, because the user needs it to connect.
    """
    server = LocalSpriteServer(
        reactor,
        options.token or "",
        sprites=options.sprites,
        allow=options.allow,
        maxTunnels=options["max-tunnels"],
    )
    if options.tokenGenerated:
        out = sys.stdout if stdout is None else stdout
        out.write(
            "sprites-local: no token given, so this one was generated for this run;\n"
            "clients need it in their environment:\n"
            f"    SPRITE_TOKEN={options.token}\n"
        )
        out.flush()
    if options.tokenFileExposed:
        log.warn(
            "the token file {path} can be read by group or others (chmod 600 it)",
            path=options["token-file"],
        )
    interface = _listenInterface(options["listen"])
    if interface is not None and not isLoopbackHost(interface):
        log.warn(
            "sprites-local listens on {listen}, which is not loopback only: anyone "
            "who can reach it and has the token can open tunnels from this machine",
            listen=options["listen"],
        )
    log.info(
        "sprites-local: serving the Sprites proxy API on {listen} for {sprites}; "
        "targets: loopback{allow}",
        listen=options["listen"],
        sprites=", ".join(options.sprites) if options.sprites else "any sprite name",
        allow="".join(f", {target}" for target in options.allow),
    )
    return strports.service(options["listen"], server.factory(), reactor=reactor)


def makeService(options: Options) -> IService:
    """
    Called by twistd with the parsed options: the server's factory on the
    ``--listen`` endpoint (``strports.service``, so that a busy port stops
    twistd at start-up, as twistd does).
    """
    from twisted.internet import reactor

    return _makeService(options, reactor)
