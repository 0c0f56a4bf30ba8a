# -*- test-case-name: tests.test_mapping -*-
"""
Port mappings and ``host:port`` addresses: parsing and validation.

Pure functions and values, no I/O.  Everything that comes from a user (a
``--map`` option, a ``proxySocket`` address, a :class:`PortMapping`
constructed in code) goes through here, so that a bad value stops the caller
early with an error that names it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sprites_twisted.errors import AddressError, MappingError

__all__ = [
    "PortMapping",
    "parseMapping",
    "parseAddress",
    "checkHost",
    "checkPort",
    "checkBindAddress",
    "bracketHost",
    "formatTarget",
]

_MAX_HOST_LENGTH = 253
_EXPECTED = (
    "expected PORT, LOCAL:REMOTE, LOCAL:HOST:REMOTE or BIND:LOCAL:HOST:REMOTE "
    "(IPv6 addresses in brackets)"
)


def bracketHost(host: str) -> str:
    """
    C{host} as it goes before ``:port`` or into a URL: IPv6 literals in
    brackets, anything else unchanged.
    """
    return f"[{host}]" if ":" in host else host


def formatTarget(host: str, port: object) -> str:
    """
    ``host:port``, with IPv6 literals in brackets: the one form every log
    line, message and repr uses.
    """
    return f"{bracketHost(host)}:{port}"


def checkPort(value: object, *, allowZero: bool = False) -> int:
    """
    Return C{value} as a port number, or raise C{ValueError} describing the
    problem.

    :param allowZero: accept 0 (for a local port: "pick a free one").
    """
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.isascii() and value.isdigit():
            value = int(value)
        else:
            raise ValueError(f"port {value!r} is not a whole number")
    low = 0 if allowZero else 1
    if not low <= value <= 65535:
        raise ValueError(f"port {value} is outside {low}..65535")
    return value


def checkHost(host: str) -> str:
    """
    Validate a target host (inside the sprite) and return it in wire form:
    IPv6 literals without brackets, C{""} left as is (it means localhost).

    :raises ValueError: for control characters, spaces, unbalanced brackets
        or an over-long name.
    """
    if not isinstance(host, str):
        raise ValueError(f"host {host!r} is not a string")
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            raise ValueError(f"host {host!r} has unbalanced brackets")
        inner = host[1:-1]
        try:
            ipaddress.IPv6Address(inner.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"host {host!r} is not an IPv6 literal") from None
        host = inner
    if len(host) > _MAX_HOST_LENGTH:
        raise ValueError(f"host is longer than {_MAX_HOST_LENGTH} characters")
    for ch in host:
        if not ch.isprintable() or ch.isspace() or ch in "/[]@?#\\":
            raise ValueError(f"host {host!r} contains the character {ch!r}")
    return host


def checkBindAddress(address: str) -> str:
    """
    Validate a local bind address and return it without brackets.

    An IPv4 or IPv6 literal, or ``localhost`` (both loopback families);
    C{""} is left as is (it means "the caller's default").

    :raises ValueError: for anything else (names are not resolved).
    """
    if not isinstance(address, str):
        raise ValueError(f"bind address {address!r} is not a string")
    text = address.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text in ("", "localhost"):
        return text
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"bind address {address!r} is not an IP address or 'localhost'") from None
    return text


@dataclass(frozen=True)
class PortMapping:
    """
    One forwarded port: a listener on C{localPort} whose connections reach
    C{remoteHost}:C{remotePort} inside the sprite.

    Fields follow the Go SDK's ``PortMapping{LocalPort, RemotePort,
    RemoteHost}``.  C{remoteHost} C{""} means ``localhost`` in the sprite;
    IPv6 literals are stored without brackets (brackets given are removed).
    C{localPort} 0 asks the system for a free port.  C{bindAddress} is the
    local address to listen on, as ``ssh -L BIND:...`` takes it; C{""}
    leaves the choice to the caller (loopback by default).

    :raises MappingError: when a field is out of range or malformed.
    """

    localPort: int
    remotePort: int
    remoteHost: str = ""
    bindAddress: str = ""

    def __post_init__(self) -> None:
        try:
            local = checkPort(self.localPort, allowZero=True)
        except ValueError as e:
            raise MappingError(self.localPort, f"local {e}") from None
        try:
            remote = checkPort(self.remotePort)
        except ValueError as e:
            raise MappingError(self.remotePort, f"remote {e}") from None
        try:
            host = checkHost(self.remoteHost)
        except ValueError as e:
            raise MappingError(self.remoteHost, str(e)) from None
        try:
            bind = checkBindAddress(self.bindAddress)
        except ValueError as e:
            raise MappingError(self.bindAddress, str(e)) from None
        object.__setattr__(self, "bindAddress", bind)
        object.__setattr__(self, "localPort", local)
        object.__setattr__(self, "remotePort", remote)
        object.__setattr__(self, "remoteHost", host)

    @property
    def targetHost(self) -> str:
        """
        The host the tunnel asks for: C{remoteHost}, or ``localhost``.
        """
        return self.remoteHost or "localhost"

    def describeTarget(self) -> str:
        """
        ``host:port`` inside the sprite, IPv6 in brackets, for logs.
        """
        return formatTarget(self.targetHost, self.remotePort)


def _splitColons(text: str) -> list[str] | None:
    """
    Split C{text} on the colons outside brackets; C{None} when brackets
    are unbalanced or nested, or a bracketed part is not a whole field.
    """
    parts: list[str] = []
    current = ""
    inside = False
    for ch in text:
        if ch == "[":
            if inside or current:
                return None
            inside = True
        elif ch == "]":
            if not inside:
                return None
            inside = False
        elif ch == ":" and not inside:
            parts.append(current)
            current = ""
            continue
        elif current.endswith("]"):
            return None
        current += ch
    if inside:
        return None
    parts.append(current)
    return parts


def parseMapping(text: str) -> PortMapping:
    """
    Parse a mapping as the official ``sprite proxy`` command and our
    ``--map`` option take it, plus the ``ssh -L`` form with a bind address.

    Forms: ``PORT`` (same port both sides), ``LOCAL:REMOTE``,
    ``LOCAL:HOST:REMOTE`` where HOST is a name, an IPv4 literal or a
    bracketed IPv6 literal (``5433:[fdf::1]:5432``), and
    ``BIND:LOCAL:HOST:REMOTE`` where BIND is an IP literal (IPv6 in
    brackets) or ``localhost`` (``127.0.0.2:8080:web:80``,
    ``[::1]:8080:localhost:80``).

    :raises MappingError: naming C{text} and the expected forms.
    """
    if not isinstance(text, str) or not text.strip():
        raise MappingError(text, f"empty; {_EXPECTED}")
    raw = text.strip()
    split = _splitColons(raw)
    if split is None:
        raise MappingError(text, f"unbalanced or misplaced brackets; {_EXPECTED}")
    parts = [part[1:-1] if part.startswith("[") else part for part in split]
    bracketed = [part.startswith("[") for part in split]
    bind = host = ""
    if len(parts) == 1:
        local = remote = parts[0]
    elif len(parts) == 2:
        local, remote = parts
    elif len(parts) == 3:
        local, host, remote = parts
        if not host:
            raise MappingError(text, f"empty host; {_EXPECTED}")
    elif len(parts) == 4:
        bind, local, host, remote = parts
        if not host:
            raise MappingError(text, f"empty host; {_EXPECTED}")
    else:
        raise MappingError(text, f"too many ':' (an IPv6 address needs brackets); {_EXPECTED}")
    portIndexes = {1: [0], 2: [0, 1], 3: [0, 2], 4: [1, 3]}[len(parts)]
    if any(bracketed[i] for i in portIndexes):
        raise MappingError(text, f"a port cannot be in brackets; {_EXPECTED}")
    try:
        localPort = checkPort(local, allowZero=len(parts) > 1)
    except ValueError as e:
        raise MappingError(text, f"local {e}; {_EXPECTED}") from None
    try:
        remotePort = checkPort(remote)
    except ValueError as e:
        raise MappingError(text, f"remote {e}; {_EXPECTED}") from None
    try:
        if host and bracketed[-2]:
            host = checkHost(f"[{host}]")
        else:
            host = checkHost(host)
    except ValueError as e:
        raise MappingError(text, str(e)) from None
    try:
        bind = checkBindAddress(bind)
        if len(parts) == 4 and not bind:
            raise ValueError("empty bind address")
    except ValueError as e:
        raise MappingError(text, f"{e}; {_EXPECTED}") from None
    return PortMapping(localPort, remotePort, host, bind)


def parseAddress(address: str) -> tuple[str, int]:
    """
    Parse a ``host:port`` target address as ``ProxySocket`` takes it.

    ``[v6]:port`` for IPv6; an empty host means ``localhost``.  Returns the
    host in wire form (no brackets) and the port.

    :raises AddressError: naming C{address} and the problem.
    """
    if not isinstance(address, str):
        raise AddressError(address, "expected a 'host:port' string")
    if address.startswith("["):
        inner, sep, portText = address[1:].partition("]:")
        if not sep:
            raise AddressError(address, "expected '[IPv6]:port'")
        host = f"[{inner}]"
    else:
        host, sep, portText = address.rpartition(":")
        if not sep:
            raise AddressError(address, "missing ':port'")
        if ":" in host:
            raise AddressError(address, "an IPv6 host must be in brackets: '[::1]:22'")
    try:
        port = checkPort(portText)
    except ValueError as e:
        raise AddressError(address, str(e)) from None
    try:
        host = checkHost(host)
    except ValueError as e:
        raise AddressError(address, str(e)) from None
    return host or "localhost", port
