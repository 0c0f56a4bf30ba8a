# -*- test-case-name: tests.test_tap -*-
"""
``twistd sprites-proxy``: forward local ports into a sprite.

::

    SPRITE_TOKEN=... twistd -n sprites-proxy --sprite NAME --map 8080:80 5432

The plugin in ``twisted/plugins/sprites_twisted_tap.py`` only names this
module; everything the command does is here.  Every check runs in
:meth:`Options.postOptions`, so bad input stops twistd with a usage error
naming the value, before anything listens.  :func:`_makeService` takes the
reactor as an argument, so tests run it on a ``MemoryReactor``.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.logger import Logger
from twisted.python import usage

from sprites_twisted import autoforward
from sprites_twisted._twistd import CommandService, TokenOptions, positiveNumber
from sprites_twisted.client import SpritesClient
from sprites_twisted.config import (
    apiURLFromEnvironment,
    checkSpriteName,
    parseAPIURL,
)
from sprites_twisted.endpoint import DEFAULT_HANDSHAKE_TIMEOUT, loadTrustRoot
from sprites_twisted.errors import ConfigurationError, MappingError
from sprites_twisted.manager import ProxyManager
from sprites_twisted.mapping import PortMapping, parseMapping
from sprites_twisted.session import DEFAULT_DRAIN_TIMEOUT, DEFAULT_INTERFACE

__all__ = ["Options", "makeService"]

log = Logger()


class Options(TokenOptions):
    """
    Command-line options of ``twistd sprites-proxy``.

    After parsing: ``self["sprite"]``, ``self["api-url"]`` (resolved),
    ``self["bind"]`` (no brackets), the timeouts as floats, ``self.mappings``
    (a list of :class:`~sprites_twisted.mapping.PortMapping`),
    ``self.trustRoot`` and ``self.token``.
    """

    synopsis = "[options] [MAPPING ...]"
    longdesc = (
        "Forward local TCP ports into a Fly.io sprite. Each MAPPING (given with "
        "--map or as an argument) is PORT, LOCAL:REMOTE or LOCAL:HOST:REMOTE, "
        "with HOST a name, an IPv4 address or a bracketed IPv6 address "
        "(5433:[fdf::1]:5432); a local port of 0 picks a free one. The token "
        "comes from $SPRITE_TOKEN (then $SPRITES_TOKEN) or --token-file."
    )

    optFlags = [
        [
            "allow-insecure",
            None,
            (
                "Allow a plain http:// or ws:// API URL to a host that is not "
                "loopback (the token then travels in clear text)."
            ),
        ],
    ]

    optParameters = [
        ["sprite", "s", None, "Name of the sprite to forward into (required)."],
        [
            "api-url",
            None,
            None,
            "Sprites API base URL (default: $SPRITES_API_URL, else https://api.sprites.dev).",
        ],
        [
            "bind",
            None,
            DEFAULT_INTERFACE,
            "Local address the listeners bind (IPv4 or IPv6).",
        ],
        [
            "handshake-timeout",
            None,
            str(DEFAULT_HANDSHAKE_TIMEOUT),
            "Seconds a tunnel may take to be connected.",
        ],
        [
            "drain-timeout",
            None,
            str(DEFAULT_DRAIN_TIMEOUT),
            "Seconds open connections may go on after shutdown starts.",
        ],
        [
            "ca-file",
            None,
            None,
            "PEM file of CA certificates to trust for https:// (wss://).",
        ],
    ]

    # Issue 12: --auto, --auto-ports, --auto-exclude, --auto-max, --socks,
    # --socks-auth; checked and turned into services by
    # sprites_twisted.autoforward.
    optFlags = optFlags + autoforward.OPT_FLAGS
    optParameters = optParameters + autoforward.OPT_PARAMETERS

    def __init__(self, environ: Any = None) -> None:
        super().__init__(environ)
        self.mappings: list[PortMapping] = []
        self._mappingTexts: list[str] = []
        self.trustRoot: Any = None

    def opt_map(self, value: str) -> None:
        """
        A port to forward: PORT, LOCAL:REMOTE or LOCAL:HOST:REMOTE (repeatable).
        """
        self._addMapping(value)

    opt_m = opt_map

    def parseArgs(self, *mappings: str) -> None:
        for value in mappings:
            self._addMapping(value)

    def _addMapping(self, value: str) -> None:
        try:
            mapping = parseMapping(value)
        except MappingError as e:
            raise usage.UsageError(str(e)) from None
        for previous, text in zip(self.mappings, self._mappingTexts, strict=True):
            if mapping.localPort and previous.localPort == mapping.localPort:
                raise usage.UsageError(
                    f"local port {mapping.localPort} is mapped twice ({text!r} and "
                    f"{value!r}); each local port can be forwarded only once"
                )
        self.mappings.append(mapping)
        self._mappingTexts.append(value)

    def postOptions(self) -> None:
        if not self["sprite"]:
            raise usage.UsageError("--sprite NAME is required: the sprite to forward into")
        try:
            checkSpriteName(self["sprite"])
        except ConfigurationError as e:
            raise usage.UsageError(str(e)) from None
        if not self.mappings and not autoforward.wanted(self):
            raise usage.UsageError(
                "nothing to forward: give one or more mappings, e.g. --map 8080:80 or 5432 "
                "(or --auto, or --socks PORT)"
            )
        autoforward.checkOptions(self)  # issue 12
        self["bind"] = _checkBind(self["bind"])
        self["handshake-timeout"] = positiveNumber("handshake-timeout", self["handshake-timeout"])
        self["drain-timeout"] = positiveNumber(
            "drain-timeout", self["drain-timeout"], allowZero=True
        )
        self["api-url"] = self["api-url"] or apiURLFromEnvironment(self.environ)
        try:
            parseAPIURL(self["api-url"], allowInsecure=bool(self["allow-insecure"]))
            if self["ca-file"]:
                self.trustRoot = loadTrustRoot(self["ca-file"])
        except ConfigurationError as e:
            raise usage.UsageError(str(e)) from None
        self.token = self.readToken()
        if self.token is None:
            raise usage.UsageError(
                "no Sprites token: set SPRITE_TOKEN (or SPRITES_TOKEN), or use "
                "--token-file PATH; a token is never taken from the command line"
            )


def _checkBind(value: str) -> str:
    """
    The ``--bind`` address without brackets.

    :raises usage.UsageError: naming ``value`` when it is not an IP address.
    """
    address = value.strip()
    if address.startswith("[") and address.endswith("]"):
        address = address[1:-1]
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise usage.UsageError(
            f"--bind {value!r}: expected an IP address, such as 127.0.0.1 or ::1"
        ) from None
    return address


def _makeService(options: Options, reactor: Any) -> ProxyManager:
    """
    The service ``twistd sprites-proxy`` runs: a
    :class:`~sprites_twisted.manager.ProxyManager` with one session per
    mapping, in the order given.

    Each session raises a synchronous listen failure (a busy port) from
    ``startService`` instead of only logging it, so that twistd stops at
    start-up.
    """
    apiURL = options["api-url"]
    if options.tokenFileExposed:
        log.warn(
            "the token file {path} can be read by group or others; anyone who "
            "can read it controls your sprites (chmod 600 it)",
            path=options["token-file"],
        )
    # SpritesClient logs the warning for a plain-text URL to another host
    # (allowed here by --allow-insecure).
    client = SpritesClient(
        reactor,
        options.token or "",
        apiURL,
        handshakeTimeout=options["handshake-timeout"],
        drainTimeout=options["drain-timeout"],
        interface=options["bind"],
        trustRoot=options.trustRoot,
        allowInsecure=bool(options["allow-insecure"]),
    )
    manager = ProxyManager()
    for mapping in options.mappings:
        session = client.session(options["sprite"], mapping)
        session._raiseSynchronously = True
        manager.addSession(session)
    # Issue 12: automatic forwarding and the SOCKS port.
    for service in autoforward.fromOptions(options, client, reactor):
        service.setServiceParent(manager)
    return manager


def makeService(options: Options) -> CommandService:
    """
    Called by twistd with the parsed options.
    """
    from twisted.internet import reactor

    return CommandService("sprites-proxy", reactor, _makeService(options, reactor))
