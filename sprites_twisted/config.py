# -*- test-case-name: tests.test_config -*-
"""
Where the Sprites API is and how to authenticate: base URL, token, and the
per-sprite proxy URL.  Pure functions over strings and an environment
mapping, so they are trivially testable and shared by the library, the
twistd plugins and the endpoint parser.

Every tunable default of the library, the commands and the local sprite
server is defined here, once; the modules that use one import it from here
(and re-export it under the name they always had).  Hard limits of a wire
format (the largest init, reply or SOCKS request) live with the code that
enforces them.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import quote, urlsplit

from sprites_twisted.errors import ConfigurationError
from sprites_twisted.mapping import bracketHost, formatTarget

__all__ = [
    "DEFAULT_API_URL",
    "USER_AGENT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_LINGER_TIMEOUT",
    "DEFAULT_DRAIN_TIMEOUT",
    "DEFAULT_INTERFACE",
    "DEFAULT_KEEPALIVE_INTERVAL",
    "DEFAULT_PREWARM",
    "DEFAULT_PREWARM_IDLE",
    "DEFAULT_RESET_FLUSH_TIMEOUT",
    "DEFAULT_WATCH_PING_INTERVAL",
    "DEFAULT_WATCH_CONNECT_TIMEOUT",
    "DEFAULT_WATCH_BACKOFF",
    "DEFAULT_MAX_PORTS",
    "DEFAULT_SOCKS_REQUEST_TIMEOUT",
    "DEFAULT_LOCAL_LISTEN",
    "DEFAULT_MAX_TUNNELS",
    "DEFAULT_INIT_TIMEOUT",
    "DEFAULT_MAX_FRAME",
    "DEFAULT_SERVER_REQUEST_TIMEOUT",
    "APIEndpoint",
    "apiURLFromEnvironment",
    "tokenFromEnvironment",
    "readTokenFile",
    "checkToken",
    "parseAPIURL",
    "proxyPath",
    "isLoopbackHost",
]

from sprites_twisted import __version__  # noqa: E402

#: The public Sprites API.
DEFAULT_API_URL = "https://api.sprites.dev"
#: Our honest User-Agent on every request to the API.
USER_AGENT = f"sprites-twisted/{__version__}"
#: Seconds from ``connect`` until a tunnel must have answered ``connected``.
DEFAULT_HANDSHAKE_TIMEOUT = 30.0
#: Seconds a closing tunnel waits for the closing handshake before closing
#: its TCP connection (and ten times that before aborting it).
DEFAULT_CLOSE_TIMEOUT = 1.0
#: Seconds a half-closed local connection waits for more of the reply.
DEFAULT_LINGER_TIMEOUT = 2.0
#: Seconds open connections may go on after a session stops listening.
DEFAULT_DRAIN_TIMEOUT = 5.0
#: Where listeners bind unless the caller says otherwise.
DEFAULT_INTERFACE = "127.0.0.1"
#: Seconds between WebSocket pings on an open tunnel (0: none); a tunnel
#: is dead after three intervals without an answer.
DEFAULT_KEEPALIVE_INTERVAL = 15.0
#: Warm tunnels (upgraded, not yet initialised) kept per sprite after a
#: connection used one (0: none).
DEFAULT_PREWARM = 1
#: Seconds a warm tunnel may stay unused before it is closed with 1000.
DEFAULT_PREWARM_IDLE = 10.0
#: Seconds a reset waits for the kernel to send what it already holds.
DEFAULT_RESET_FLUSH_TIMEOUT = 30.0

# The port watch and automatic forwarding.

#: Seconds between pings on an open port watch (the SDKs' 15 s).
DEFAULT_WATCH_PING_INTERVAL = 15.0
#: Seconds from starting a watch connection to its upgrade being answered.
DEFAULT_WATCH_CONNECT_TIMEOUT = 30.0
#: Reconnection backoff of the port watch: first delay, factor, cap (s).
DEFAULT_WATCH_BACKOFF = (1.0, 2.0, 30.0)
#: The most ports forwarded at once unless told otherwise.
DEFAULT_MAX_PORTS = 64

# The SOCKS port.

#: Seconds from accepting a SOCKS connection until its request is complete.
DEFAULT_SOCKS_REQUEST_TIMEOUT = 30.0

# The local sprite server (``twistd sprites-local``).

#: Where the local sprite server listens unless told otherwise: loopback.
DEFAULT_LOCAL_LISTEN = "tcp:8900:interface=127.0.0.1"
#: Tunnels the local sprite server holds open at once.
DEFAULT_MAX_TUNNELS = 10000
#: Seconds an upgraded tunnel may wait for its init.  Longer than a client
#: keeps a warm tunnel unused (L{DEFAULT_PREWARM_IDLE}), so that the client
#: closes its idle spare with 1000 before the server would refuse it.
DEFAULT_INIT_TIMEOUT = 30.0
#: The largest WebSocket frame the local sprite server accepts.
DEFAULT_MAX_FRAME = 1024 * 1024
#: Seconds an HTTP connection to the local server may take to send its
#: whole request.
DEFAULT_SERVER_REQUEST_TIMEOUT = 10.0
TOKEN_VARIABLES = ("SPRITE_TOKEN", "SPRITES_TOKEN")


class APIEndpoint(NamedTuple):
    """
    A parsed API base URL.

    :ivar secure: ``wss``/``https`` (TLS) or not.
    :ivar host: host name or IP literal, without brackets.
    :ivar port: TCP port.
    :ivar basePath: path prefix, without a trailing ``/``.
    """

    secure: bool
    host: str
    port: int
    basePath: str

    def webSocketURL(self, path: str) -> str:
        """
        The ``ws://``/``wss://`` URL for C{path} under this base.
        """
        scheme = "wss" if self.secure else "ws"
        host = bracketHost(self.host)
        default = 443 if self.secure else 80
        netloc = host if self.port == default else f"{host}:{self.port}"
        return f"{scheme}://{netloc}{self.basePath}{path}"

    def describe(self) -> str:
        """
        ``host:port``, for error messages.
        """
        return formatTarget(self.host, self.port)


def isLoopbackHost(host: str) -> bool:
    """
    Is C{host} this machine's loopback (``localhost``, 127.0.0.0/8, ::1)?

    Only literal addresses and the name ``localhost`` count; other names are
    not resolved, so they are never trusted as loopback.
    """
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def parseAPIURL(url: str, *, allowInsecure: bool = False) -> APIEndpoint:
    """
    Parse and check an API base URL.

    ``http``/``ws`` and ``https``/``wss`` are accepted; a trailing ``/`` is
    dropped.  The token travels in a header, so a plain-text URL is only
    accepted to a loopback host unless C{allowInsecure} is set.

    :raises ConfigurationError: naming the URL and what is wrong.
    """
    if not isinstance(url, str) or not url:
        raise ConfigurationError("API URL is empty; expected e.g. https://api.sprites.dev")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ConfigurationError(f"API URL {url!r} is not a valid URL: {e}") from None
    scheme = parts.scheme.lower()
    if scheme in ("https", "wss"):
        secure = True
    elif scheme in ("http", "ws"):
        secure = False
    else:
        raise ConfigurationError(
            f"API URL {url!r} must start with https://, wss://, http:// or ws://"
        )
    host = parts.hostname
    if not host:
        raise ConfigurationError(f"API URL {url!r} has no host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigurationError(f"API URL {url!r} must not carry a query, fragment or credentials")
    if not secure and not allowInsecure and not isLoopbackHost(host):
        raise ConfigurationError(
            f"API URL {url!r} is not encrypted and {host} is not a loopback address: "
            "the token would travel in clear text. Use https://, or allow it "
            "explicitly (allowInsecure=True)"
        )
    if port is None:
        port = 443 if secure else 80
    elif port == 0:
        raise ConfigurationError(f"API URL {url!r} has port 0; expected 1..65535")
    return APIEndpoint(secure, host, port, parts.path.rstrip("/"))


def proxyPath(spriteName: str) -> str:
    """
    The proxy path for C{spriteName}: ``/v1/sprites/{name}/proxy`` with the
    name percent-encoded as exactly one path segment.

    ``/``, ``?``, ``%`` and the like are encoded, and a name made only of
    dots (``.``, ``..``) has its dots encoded, so no name can change which
    path is requested.

    :raises ConfigurationError: for an empty name.
    """
    checkSpriteName(spriteName)
    segment = quote(spriteName, safe="")
    if set(spriteName) == {"."}:
        segment = segment.replace(".", "%2E")
    return f"/v1/sprites/{segment}/proxy"


def checkSpriteName(spriteName: object) -> str:
    """
    Check that C{spriteName} is a usable sprite name and return it.

    :raises ConfigurationError: when it is not a non-empty string without
        control characters.
    """
    if not isinstance(spriteName, str) or not spriteName:
        raise ConfigurationError(f"sprite name {spriteName!r} is empty or not a string")
    if any(not c.isprintable() for c in spriteName):
        raise ConfigurationError(f"sprite name {spriteName!r} contains control characters")
    return spriteName


def checkToken(token: object) -> str:
    """
    Check that C{token} can be sent in an ``Authorization`` header.

    The message never contains the token itself.

    :raises ConfigurationError: when it is empty or holds characters that
        would break (or inject into) the HTTP header.
    """
    if not isinstance(token, str) or not token.strip():
        raise ConfigurationError("no Sprites token: set SPRITE_TOKEN (or SPRITES_TOKEN)")
    token = token.strip()
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in token):
        raise ConfigurationError(
            "the Sprites token contains spaces, control or non-ASCII characters"
        )
    return token


def apiURLFromEnvironment(environ: Mapping[str, str] | None = None) -> str:
    """
    The API base URL: ``SPRITES_API_URL`` if set, else the public API.
    """
    env = os.environ if environ is None else environ
    return env.get("SPRITES_API_URL") or DEFAULT_API_URL


def tokenFromEnvironment(environ: Mapping[str, str] | None = None) -> str | None:
    """
    The token from ``SPRITE_TOKEN`` (the official tools' variable), else
    ``SPRITES_TOKEN``; C{None} when neither is set.
    """
    env = os.environ if environ is None else environ
    for name in TOKEN_VARIABLES:
        value = env.get(name)
        if value:
            return value
    return None


def readTokenFile(path: str) -> tuple[str, bool]:
    """
    Read a token from C{path} (once, at start-up).

    :returns: the token and whether the file is readable by group or others
        (the caller warns about that, as ssh does for keys).
    :raises ConfigurationError: when the file cannot be read or is empty.
    """
    try:
        with open(path, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            text = f.read(64 * 1024)
    except OSError as e:
        raise ConfigurationError(f"cannot read token file {path!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"token file {path!r} is not UTF-8 text") from None
    token = text.strip()
    if not token:
        raise ConfigurationError(f"token file {path!r} is empty")
    checkToken(token)
    exposed = bool(mode & (stat.S_IRWXG | stat.S_IRWXO))
    return token, exposed
