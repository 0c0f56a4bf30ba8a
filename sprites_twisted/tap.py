# -*- test-case-name: tests.test_tap -*-
"""
``twistd sprites-proxy``: forward local ports into a sprite.

::

    SPRITE_TOKEN=... twistd -n sprites-proxy --sprite NAME --map 8080:80 5432

The plugin in ``twisted/plugins/sprites_twisted_tap.py`` only names this
module; the ``sprites-proxy`` console script (:mod:`sprites_twisted.cli`)
uses the same options and the same service.  Every check runs in
:meth:`Options.postOptions`, so bad input stops with a usage error naming
the value, before anything listens.  :func:`_makeService` takes the
reactor as an argument, so tests run it on a ``MemoryReactor``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from sprites_twisted import autoforward
from sprites_twisted._twistd import TokenOptions, checkServerEndpoint, positiveNumber
from sprites_twisted.client import SpritesClient
from sprites_twisted.config import (
    DEFAULT_API_URL,
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_INTERFACE,
    DEFAULT_KEEPALIVE_INTERVAL,
    DEFAULT_LINGER_TIMEOUT,
    DEFAULT_PREWARM,
    DEFAULT_PREWARM_IDLE,
    apiURLFromEnvironment,
    checkSpriteName,
    parseAPIURL,
)
from sprites_twisted.endpoint import loadTrustRoot
from sprites_twisted.errors import AddressError, ConfigurationError, MappingError
from sprites_twisted.manager import ProxyManager
from sprites_twisted.mapping import (
    PortMapping,
    checkBindAddress,
    checkPort,
    parseAddress,
    parseMapping,
)

__all__ = ["Options", "makeService"]

log = Logger()


class Options(TokenOptions):
    """
    Command-line options of ``twistd sprites-proxy``.

    After parsing: ``self["sprite"]``, ``self["api-url"]`` (resolved),
    ``self["bind"]`` (no brackets), the timeouts as floats (``keepalive``
    0 when off), ``self.mappings`` (a list of
    :class:`~sprites_twisted.mapping.PortMapping`), ``self.forwards``
    (``(endpoint string, PortMapping)`` pairs from ``--listen``/``--to``),
    ``self.trustRoot``, ``self.token`` and ``self.tokenSource``.
    """

    synopsis = "[options] MAPPING ... | --listen ENDPOINT --to [HOST:]PORT ..."
    longdesc = (
        "Forward local ports into a Fly.io sprite. Each MAPPING (given with "
        "--map or as an argument, before or after the options) is PORT, "
        "LOCAL:REMOTE, LOCAL:HOST:REMOTE or BIND:LOCAL:HOST:REMOTE (as ssh -L "
        "takes it), with HOST a name, an IPv4 address or a bracketed IPv6 "
        "address (5433:[fdf::1]:5432) and BIND an IP address or localhost; a "
        "local port of 0 picks a free one. To listen on anything else, give a "
        "Twisted server endpoint string with --listen and its target with the "
        "--to that follows it: --listen unix:/tmp/pg.sock --to 5432 (a Unix "
        "socket gets mode 0600 unless mode= says otherwise and is removed on "
        "stop; tcp6:, systemd: and the rest work too). The token comes from "
        "$SPRITE_TOKEN (then $SPRITES_TOKEN) or --token-file."
    )

    optFlags = [
        [
            "no-check",
            None,
            (
                "Do not ask the API about the sprite before listening (by "
                "default a bad token or an unknown sprite stops start-up)."
            ),
        ],
        ["no-keepalive", None, "Send no WebSocket pings on tunnels (same as --keepalive 0)."],
        [
            "early-data",
            None,
            (
                "Send what a local client sends right behind the tunnel's init, "
                "without waiting for the sprite's answer (one round trip less; the "
                "API does not promise to keep such data, the local sprite server does)."
            ),
        ],
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
            f"Sprites API base URL (default: $SPRITES_API_URL, else {DEFAULT_API_URL}).",
        ],
        [
            "bind",
            None,
            DEFAULT_INTERFACE,
            "Local address the listeners bind (IPv4, IPv6, or localhost for both).",
        ],
        [
            "keepalive",
            None,
            f"{DEFAULT_KEEPALIVE_INTERVAL:g}",
            "Seconds between WebSocket pings on a tunnel; a tunnel fails after "
            "three intervals without a pong (0: no pings).",
        ],
        [
            "prewarm",
            None,
            str(DEFAULT_PREWARM),
            "Warm tunnels (upgraded, not yet used) kept per sprite after a connection "
            "used one (0: none).",
        ],
        [
            "prewarm-idle",
            None,
            f"{DEFAULT_PREWARM_IDLE:g}",
            "Seconds an unused warm tunnel is kept before it is closed.",
        ],
        [
            "linger",
            None,
            f"{DEFAULT_LINGER_TIMEOUT:g}",
            "Seconds a half-closed local connection waits for more of the sprite's reply.",
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
        self.forwards: list[tuple[str, PortMapping]] = []
        self._pendingListen: str | None = None
        self.trustRoot: Any = None

    def opt_map(self, value: str) -> None:
        """
        A port to forward: PORT, LOCAL:REMOTE or LOCAL:HOST:REMOTE (repeatable).
        """
        self._addMapping(value)

    opt_m = opt_map

    def opt_listen(self, value: str) -> None:
        """
        Listen on this Twisted server endpoint (unix:PATH, tcp6:..., systemd:...);
        the --to that follows says where its connections go (repeatable).
        """
        if self._pendingListen is not None:
            raise usage.UsageError(
                f"--listen {self._pendingListen!r} has no --to; give --listen ENDPOINT "
                "--to [HOST:]PORT in pairs"
            )
        self._pendingListen = checkServerEndpoint("--listen", value)

    def opt_to(self, value: str) -> None:
        """
        Target of the --listen before it: PORT or HOST:PORT inside the sprite.
        """
        if self._pendingListen is None:
            raise usage.UsageError(f"--to {value!r} needs a --listen ENDPOINT before it")
        try:
            if value.strip().isdigit():
                host, port = "", checkPort(value.strip())
            else:
                host, port = parseAddress(value.strip())
        except (ValueError, AddressError) as e:
            raise usage.UsageError(
                f"--to {value!r}: {e}; expected PORT or HOST:PORT ([IPv6]:PORT)"
            ) from None
        self.forwards.append((self._pendingListen, PortMapping(0, port, host)))
        self._pendingListen = None

    def parseArgs(self, *mappings: str) -> None:
        for value in mappings:
            self._addMapping(value)

    def _addMapping(self, value: str) -> None:
        try:
            mapping = parseMapping(value)
        except MappingError as e:
            raise usage.UsageError(str(e)) from None
        for previous, text in zip(self.mappings, self._mappingTexts, strict=True):
            if (
                mapping.localPort
                and previous.localPort == mapping.localPort
                and previous.bindAddress == mapping.bindAddress
            ):
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
        if self._pendingListen is not None:
            raise usage.UsageError(
                f"--listen {self._pendingListen!r} has no --to: say where its "
                "connections go, e.g. --to 5432"
            )
        self.checkNothingToForward()
        autoforward.checkOptions(self)  # issue 12
        self["bind"] = _checkBind(self["bind"])
        self["handshake-timeout"] = positiveNumber("handshake-timeout", self["handshake-timeout"])
        self["drain-timeout"] = positiveNumber(
            "drain-timeout", self["drain-timeout"], allowZero=True
        )
        self["linger"] = positiveNumber("linger", self["linger"], allowZero=True)
        self["prewarm-idle"] = positiveNumber("prewarm-idle", self["prewarm-idle"])
        try:
            prewarm = int(self["prewarm"])
        except (TypeError, ValueError):
            prewarm = -1
        if prewarm < 0:
            raise usage.UsageError(
                f"--prewarm {self['prewarm']!r}: expected a whole number of tunnels, 0 or more"
            )
        self["prewarm"] = prewarm
        self["keepalive"] = (
            0.0
            if self["no-keepalive"]
            else positiveNumber("keepalive", self["keepalive"], allowZero=True)
        )
        self["api-url"] = self["api-url"] or apiURLFromEnvironment(self.environ)
        try:
            parseAPIURL(self["api-url"], allowInsecure=bool(self["allow-insecure"]))
        except ConfigurationError as e:
            # The library names its keyword; the command has an option.
            message = str(e).replace("allowInsecure=True", "--allow-insecure")
            raise usage.UsageError(message) from None
        try:
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

    def checkNothingToForward(self) -> None:
        """
        :raises usage.UsageError: when no mapping, no ``--listen``, no
            ``--auto`` and no ``--socks`` was given (a subclass with other
            modes overrides this).
        """
        if not self.mappings and not self.forwards and not autoforward.wanted(self):
            raise usage.UsageError(
                "nothing to forward: give one or more mappings, e.g. --map 8080:80 or 5432 "
                "(or --auto, or --socks PORT)"
            )


def _checkBind(value: str) -> str:
    """
    The ``--bind`` address without brackets.

    :raises usage.UsageError: naming ``value`` when it is not an IP address
        or ``localhost``.
    """
    try:
        address = checkBindAddress(value)
        if not address:
            raise ValueError("it is empty")
    except ValueError:
        raise usage.UsageError(
            f"--bind {value!r}: expected an IP address (127.0.0.1, ::1) or localhost"
        ) from None
    return address


def _client(options: Options, reactor: Any) -> SpritesClient:
    """
    The client the options describe.
    """
    # SpritesClient logs the warning for a plain-text URL to another host
    # (allowed here by --allow-insecure).
    return SpritesClient(
        reactor,
        options.token or "",
        options["api-url"],
        handshakeTimeout=options["handshake-timeout"],
        drainTimeout=options["drain-timeout"],
        lingerTimeout=options["linger"],
        keepaliveInterval=options["keepalive"],
        prewarm=options["prewarm"],
        prewarmIdle=options["prewarm-idle"],
        earlyData=bool(options["early-data"]),
        interface=options["bind"],
        trustRoot=options.trustRoot,
        allowInsecure=bool(options["allow-insecure"]),
        check=not options["no-check"],
    )


def _makeService(options: Options, reactor: Any) -> ProxyManager:
    """
    The service ``sprites-proxy`` runs: a
    :class:`~sprites_twisted.manager.ProxyManager` with one session per
    mapping and per ``--listen``, in the order given, which checks the
    sprite before listening unless ``--no-check``.
    """
    if options.tokenFileExposed:
        log.warn(
            "the token file {path} can be read by group or others; anyone who "
            "can read it controls your sprites (chmod 600 it)",
            path=options["token-file"],
        )
    client = _client(options, reactor)
    manager = ProxyManager(check=not options["no-check"])
    for mapping in options.mappings:
        manager.addSession(client.session(options["sprite"], mapping))
    for description, mapping in options.forwards:
        manager.addSession(client.session(options["sprite"], mapping, listenOn=description))
    # Issue 12: automatic forwarding and the SOCKS port.
    for service in autoforward.fromOptions(options, client, reactor):
        service.setServiceParent(manager)
    return manager


def describeStartFailure(failure: Failure, options: Options) -> str:
    """
    One line saying why forwarding could not start, naming where the token
    came from for a rejected token and the sprite for an unknown one.
    """
    from sprites_twisted.errors import SpriteAuthError, SpriteNotFoundError

    if failure.check(SpriteAuthError):
        return f"the Sprites API rejected the token (from {options.tokenSource})"
    if failure.check(SpriteNotFoundError):
        return f"no sprite named {options['sprite']}"
    return failure.getErrorMessage()


def makeService(options: Options) -> ProxyManager:
    """
    Called by twistd with the parsed options.  When start-up fails (the
    check refused the token or the sprite, or a port cannot listen), that
    is logged as an error and the reactor stops: a forwarder that
    forwards nothing should not go on running as a daemon.  The exit code
    is twistd's.
    """
    from twisted.internet import reactor

    manager = _makeService(options, reactor)

    def startFailed(failure: Failure) -> None:
        if failure.check(CancelledError):
            return
        log.error("not forwarding: {why}", why=describeStartFailure(failure, options))
        if reactor.running:
            reactor.stop()

    manager.whenReady().addErrback(startFailed)
    return manager
