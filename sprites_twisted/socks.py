# -*- test-case-name: tests.test_socks -*-
"""
Dynamic forwarding: a SOCKS server whose CONNECTs are tunnels into a sprite.

One local port reaches every service inside the sprite: point a browser or
``curl --socks5-hostname 127.0.0.1:1080`` at it, and each CONNECT opens a
tunnel to that host and port *as seen from inside the sprite*.

Speaks SOCKS5 (RFC 1928; CONNECT only; the "no authentication" method, or
username/password after RFC 1929 when credentials are configured) and
SOCKS4/4a.  The contract:

- Domain names are passed to the sprite unresolved; IP addresses as
  literals.
- The reply is sent only once the tunnel answered ``connected``; a tunnel
  that fails gets the reply code matching its reason (L{replyCodeFor}) and
  one log line with the server's reason, and that connection closes.  The
  listener serves on.
- BIND and UDP ASSOCIATE are answered "command not supported" (7).
- Malformed input (an unknown version, a truncated or over-long message, a
  name over 255 bytes, a request that takes longer than C{requestTimeout})
  gets a refusal where the protocol has one, one log line, and a close.
  At most L{MAX_BUFFER} bytes of a greeting or request are buffered.
- Flow control as in Twisted's ``portforward``: the accepted connection is
  paused while the tunnel is being opened, then each transport is a
  streaming producer of the other.  A clean end on one side is a clean end
  (FIN, WebSocket close 1000) on the other; a broken one is a reset.

:func:`socksFactory` makes the factory for a L{SpritesClient}; any Twisted
server endpoint can listen with it.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from sprites_twisted.config import DEFAULT_DRAIN_TIMEOUT, DEFAULT_INTERFACE
from sprites_twisted.config import DEFAULT_SOCKS_REQUEST_TIMEOUT as DEFAULT_REQUEST_TIMEOUT
from sprites_twisted.errors import (
    APIUnreachableError,
    HandshakeError,
    SpriteAuthError,
    TunnelTimeoutError,
)
from sprites_twisted.mapping import checkHost, formatTarget
from sprites_twisted.pipe import Pipe, endStream, isCleanEnd, resetAfterFlush, splice
from sprites_twisted.tracking import OpenSet

if TYPE_CHECKING:
    from sprites_twisted.client import SpritesClient

__all__ = [
    "SOCKSServerProtocol",
    "SOCKSServerFactory",
    "SOCKSRequest",
    "SOCKSError",
    "SOCKSService",
    "Reply",
    "parseListenAddress",
    "socksFactory",
    "replyCodeFor",
    "parseCredentials",
    "MAX_BUFFER",
    "DEFAULT_REQUEST_TIMEOUT",
]

#: The most bytes of a greeting, authentication or request kept while it is
#: incomplete.  The largest valid one (a SOCKS4a request with a 255-byte user
#: id and a 255-byte name) is 520 bytes.
MAX_BUFFER = 1024
#: The most bytes kept from a client between its request and the reply
#: (pipelined data; the connection is paused, so this is what one read got).
MAX_EARLY_DATA = 256 * 1024
#: The most bytes a tunnel may deliver before the reply has been written.
MAX_EARLY_TUNNEL_DATA = 256 * 1024
_MAX_NAME = 255


class Reply(enum.IntEnum):
    """
    SOCKS5 reply codes (RFC 1928, section 6).
    """

    SUCCEEDED = 0
    GENERAL_FAILURE = 1
    NOT_ALLOWED = 2
    NETWORK_UNREACHABLE = 3
    HOST_UNREACHABLE = 4
    CONNECTION_REFUSED = 5
    TTL_EXPIRED = 6
    COMMAND_NOT_SUPPORTED = 7
    ADDRESS_TYPE_NOT_SUPPORTED = 8


#: SOCKS4 reply codes: granted, and rejected or failed (the only failure
#: code that does not concern identd).
SOCKS4_GRANTED = 0x5A
SOCKS4_REJECTED = 0x5B

_NO_AUTH = 0x00
_USERNAME_PASSWORD = 0x02
_NO_ACCEPTABLE = 0xFF
_CONNECT, _BIND, _UDP_ASSOCIATE = 1, 2, 3
_IPV4, _DOMAIN, _IPV6 = 1, 3, 4
_SOCKS4_HEADER = struct.Struct("!BBH4s")


class SOCKSError(Exception):
    """
    A greeting or request that cannot be served.

    :ivar reply: the SOCKS5 reply code to send, or C{None} when the
        protocol has no reply for this (the connection just closes).
    :ivar message: what was wrong, naming the bad value.
    """

    def __init__(self, reply: int | None, message: str) -> None:
        super().__init__(message)
        self.reply = reply
        self.message = message


@dataclass(frozen=True)
class SOCKSRequest:
    """
    A parsed CONNECT request.

    :ivar version: 4 or 5.
    :ivar host: the target host in wire form (a name, unresolved, or an IP
        literal without brackets).
    :ivar port: the target port, 1..65535.
    :ivar consumed: how many bytes of the buffer the request took.
    :ivar userid: the SOCKS4 user id (not used for anything but logs).
    """

    version: int
    host: str
    port: int
    consumed: int
    userid: str = ""


def _checkTarget(host: str, port: int) -> None:
    if port == 0:
        raise SOCKSError(Reply.GENERAL_FAILURE, "destination port 0 is not a valid port")
    try:
        checkHost(host)
    except ValueError as e:
        raise SOCKSError(Reply.GENERAL_FAILURE, f"bad destination host: {e}") from None


def _decodeName(raw: bytes) -> str:
    if not raw:
        raise SOCKSError(Reply.GENERAL_FAILURE, "empty destination host name")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SOCKSError(
                Reply.GENERAL_FAILURE, f"destination host name {raw[:64]!r} is not text"
            ) from None


def parseGreeting(data: bytes) -> tuple[frozenset[int], int] | None:
    """
    Parse a SOCKS5 method-selection message (``05 NMETHODS METHODS...``).

    :returns: the offered methods and the bytes consumed, or C{None} when
        more data is needed.
    :raises SOCKSError: for a greeting offering no method.
    """
    if len(data) < 2:
        return None
    count = data[1]
    if count == 0:
        raise SOCKSError(None, "SOCKS5 greeting offers no authentication method")
    if len(data) < 2 + count:
        return None
    return frozenset(data[2 : 2 + count]), 2 + count


def parseUserPass(data: bytes) -> tuple[bytes, bytes, int] | None:
    """
    Parse an RFC 1929 username/password request.

    :returns: user name, password and bytes consumed, or C{None} when more
        data is needed.
    :raises SOCKSError: for a wrong sub-negotiation version.
    """
    if not data:
        return None
    if data[0] != 1:
        raise SOCKSError(
            None, f"username/password request has version {data[0]}; expected 1 (RFC 1929)"
        )
    if len(data) < 2:
        return None
    userEnd = 2 + data[1]
    if len(data) < userEnd + 1:
        return None
    end = userEnd + 1 + data[userEnd]
    if len(data) < end:
        return None
    return data[2:userEnd], data[userEnd + 1 : end], end


def parseSOCKS5Request(data: bytes) -> SOCKSRequest | None:
    """
    Parse a SOCKS5 request (``05 CMD 00 ATYP DST.ADDR DST.PORT``).

    :returns: the CONNECT request, or C{None} when more data is needed.
    :raises SOCKSError: for another version, another command, an unknown
        address type or a bad address, with the reply code to send.
    """
    if not data:
        return None
    if data[0] != 5:
        raise SOCKSError(Reply.GENERAL_FAILURE, f"SOCKS5 request has version {data[0]}; expected 5")
    if len(data) < 5:
        return None
    command, addressType = data[1], data[3]
    if addressType == _IPV4:
        end = 4 + 4
        if len(data) < end + 2:
            return None
        host = str(ipaddress.IPv4Address(data[4:end]))
    elif addressType == _IPV6:
        end = 4 + 16
        if len(data) < end + 2:
            return None
        host = ipaddress.IPv6Address(data[4:end]).compressed
    elif addressType == _DOMAIN:
        end = 5 + data[4]
        if len(data) < end + 2:
            return None
        host = ""  # decoded below, after the command check
    else:
        raise SOCKSError(
            Reply.ADDRESS_TYPE_NOT_SUPPORTED, f"address type {addressType} is not supported"
        )
    if command != _CONNECT:
        name = {_BIND: "BIND", _UDP_ASSOCIATE: "UDP ASSOCIATE"}.get(command, str(command))
        raise SOCKSError(
            Reply.COMMAND_NOT_SUPPORTED, f"command {name} is not supported (only CONNECT)"
        )
    if addressType == _DOMAIN:
        host = _decodeName(data[5:end])
    port = int.from_bytes(data[end : end + 2], "big")
    _checkTarget(host, port)
    return SOCKSRequest(5, host, port, end + 2)


def parseSOCKS4Request(data: bytes) -> SOCKSRequest | None:
    """
    Parse a SOCKS4 or SOCKS4a request (``04 CMD PORT IP USERID 00
    [HOST 00]``).

    :returns: the CONNECT request, or C{None} when more data is needed.
    :raises SOCKSError: for another command, a user id or host name over
        255 bytes, or a bad address (the reply is always "rejected").
    """
    if len(data) < 8:
        return None
    _, command, port, rawIP = _SOCKS4_HEADER.unpack_from(data)
    userEnd = data.find(b"\x00", 8)
    if userEnd < 0:
        if len(data) - 8 > _MAX_NAME:
            raise SOCKSError(SOCKS4_REJECTED, f"SOCKS4 user id over {_MAX_NAME} bytes")
        return None
    if userEnd - 8 > _MAX_NAME:
        raise SOCKSError(SOCKS4_REJECTED, f"SOCKS4 user id over {_MAX_NAME} bytes")
    userid = data[8:userEnd].decode("utf-8", "replace")
    end = userEnd + 1
    if rawIP[:3] == b"\x00\x00\x00" and rawIP[3] != 0:
        # SOCKS4a: the name follows the user id.
        nameEnd = data.find(b"\x00", end)
        if nameEnd < 0:
            if len(data) - end > _MAX_NAME:
                raise SOCKSError(SOCKS4_REJECTED, f"SOCKS4a host name over {_MAX_NAME} bytes")
            return None
        if nameEnd - end > _MAX_NAME:
            raise SOCKSError(SOCKS4_REJECTED, f"SOCKS4a host name over {_MAX_NAME} bytes")
        try:
            host = _decodeName(data[end:nameEnd])
        except SOCKSError as e:
            raise SOCKSError(SOCKS4_REJECTED, e.message) from None
        end = nameEnd + 1
    else:
        host = str(ipaddress.IPv4Address(rawIP))
    if command != _CONNECT:
        name = "BIND" if command == _BIND else str(command)
        raise SOCKSError(SOCKS4_REJECTED, f"command {name} is not supported (only CONNECT)")
    try:
        _checkTarget(host, port)
    except SOCKSError as e:
        raise SOCKSError(SOCKS4_REJECTED, e.message) from None
    return SOCKSRequest(4, host, port, end, userid)


_REFUSED_WORDS = ("refused",)
_NOT_ALLOWED_WORDS = ("not allowed", "forbidden", "denied", "not permitted", "prohibited")
_NETWORK_WORDS = ("network is unreachable", "network unreachable")
_HOST_WORDS = (
    "unreachable",
    "no route",
    "lookup",
    "resolve",
    "dns",
    "name or service",
    "unknown host",
    "no address",
    "timed out",
    "timeout",
)


def replyCodeFor(failure: Failure) -> Reply:
    """
    The SOCKS5 reply code for a tunnel that failed with C{failure}.

    A refusal by the sprite (L{HandshakeError}) is classified by the
    server's reason: "refused" is connection refused (5); "not allowed",
    "forbidden", "denied" is not allowed (2); "network is unreachable" is
    network unreachable (3); "unreachable", "no route", a failed name
    lookup or a time-out is host unreachable (4).  A rejected token is not
    allowed (2); an unreachable API is network unreachable (3); a tunnel
    time-out is host unreachable (4); anything else is a general failure (1).
    """
    if failure.check(HandshakeError):
        error: HandshakeError = failure.value  # type: ignore[assignment]
        reason = (error.serverMessage or "").lower()
        for words, code in (
            (_NOT_ALLOWED_WORDS, Reply.NOT_ALLOWED),
            (_REFUSED_WORDS, Reply.CONNECTION_REFUSED),
            (_NETWORK_WORDS, Reply.NETWORK_UNREACHABLE),
            (_HOST_WORDS, Reply.HOST_UNREACHABLE),
        ):
            if any(word in reason for word in words):
                return code
        return Reply.GENERAL_FAILURE
    if failure.check(SpriteAuthError):
        return Reply.NOT_ALLOWED
    if failure.check(APIUnreachableError):
        return Reply.NETWORK_UNREACHABLE
    if failure.check(TunnelTimeoutError):
        return Reply.HOST_UNREACHABLE
    return Reply.GENERAL_FAILURE


def _socks5Reply(code: int) -> bytes:
    # BND.ADDR/BND.PORT mean nothing for a tunnel: 0.0.0.0:0.
    return bytes([5, code, 0, _IPV4, 0, 0, 0, 0, 0, 0])


def _socks4Reply(code: int) -> bytes:
    return bytes([0, code, 0, 0, 0, 0, 0, 0])


class _State(enum.Enum):
    GREETING = "greeting"  # waiting for the version byte and the greeting
    AUTHENTICATING = "authenticating"  # SOCKS5: waiting for RFC 1929 credentials
    REQUEST = "request"  # SOCKS5: waiting for the request
    CONNECTING = "connecting"  # the tunnel is being opened; reading paused
    RELAYING = "relaying"
    CLOSED = "closed"


class _TunnelSide(Pipe):
    """
    The tunnel's end of one SOCKS connection's pipe.

    Data the tunnel delivers before the reply has gone out is held (capped)
    and written after it.  When the tunnel ends, the local connection is
    ended the same way (L{sprites_twisted.pipe.endStream}): a FIN for a
    clean close, a reset for a broken tunnel.
    """

    def __init__(self, local: SOCKSServerProtocol) -> None:
        self.local = local
        self.clock = local.factory.clock
        self._held: list[bytes] | None = []
        self._heldSize = 0

    def dataReceived(self, data: bytes) -> None:
        if self._held is None:
            Pipe.dataReceived(self, data)
            return
        self.bytesIn += len(data)
        self._heldSize += len(data)
        self._held.append(data)
        if self._heldSize > MAX_EARLY_TUNNEL_DATA and self.transport is not None:
            self.transport.abortConnection()

    def release(self) -> None:
        """
        The reply is written and the pipe spliced: pass on what was held.
        """
        held, self._held = self._held, None
        peer = self.peer
        if held and peer is not None and peer.transport is not None:
            peer.transport.write(b"".join(held))

    def connectionLost(self, reason: Failure | None = None) -> None:
        Pipe.connectionLost(self, reason)
        self.local.tunnelLost(reason)


class _TunnelSideFactory(Factory):
    noisy = False

    def __init__(self, local: SOCKSServerProtocol) -> None:
        self.local = local

    def buildProtocol(self, addr: Any) -> _TunnelSide:
        return _TunnelSide(self.local)


class SOCKSServerProtocol(Pipe):
    """
    One accepted SOCKS connection: greeting, optional authentication,
    request, then a tunnel relayed both ways.

    States (L{_State}): ``greeting`` -> (``authenticating``) -> ``request``
    -> ``connecting`` -> ``relaying`` -> ``closed``; SOCKS4 goes from
    ``greeting`` to ``connecting`` directly.  Any error leads to ``closed``.
    """

    log = Logger()
    factory: SOCKSServerFactory
    # An accepted TCP connection: ITCPTransport, IPushProducer, IConsumer.
    transport: Any

    def __init__(self) -> None:
        self.state = _State.GREETING
        self.request: SOCKSRequest | None = None
        self._buffer = b""
        self._early: list[bytes] = []
        self._earlySize = 0
        self._timer: IDelayedCall | None = None
        self._connecting: Deferred[Any] | None = None
        self._tunnel: _TunnelSide | None = None
        self._tunnelOpen = False
        self._lost = False
        self._localEnd: Failure | None = None
        self._started = 0.0

    # Connection events

    def connectionMade(self) -> None:
        factory = self.factory
        self.clock = factory.clock
        self._started = factory.clock.seconds()
        factory.connections.add(self)
        if factory.requestTimeout:
            self._timer = factory.clock.callLater(factory.requestTimeout, self._timedOut)

    def dataReceived(self, data: bytes) -> None:
        state = self.state
        if state is _State.RELAYING:
            Pipe.dataReceived(self, data)
            return
        if state is _State.CONNECTING:
            self._hold(data)
            return
        if state is _State.CLOSED:
            return
        self._buffer += data
        try:
            self._advance()
        except SOCKSError as e:
            self._refuse(e)
            return
        if self.state in (_State.GREETING, _State.AUTHENTICATING, _State.REQUEST):
            if len(self._buffer) > MAX_BUFFER:
                self._refuse(
                    SOCKSError(
                        self._failureReply(),
                        f"{self.state.value} message over {MAX_BUFFER} bytes",
                    )
                )

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._lost = True
        self._cancelTimer()
        state, self.state = self.state, _State.CLOSED
        if state in (_State.GREETING, _State.AUTHENTICATING, _State.REQUEST):
            self.log.info(
                "SOCKS client {peer} closed before its request was complete "
                "({state}, {size} bytes pending)",
                peer=self._peer(),
                state=state.value,
                size=len(self._buffer),
            )
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        self._localEnd = reason
        if state is _State.RELAYING:
            Pipe.connectionLost(self, reason)  # ends the tunnel the same way
        self._maybeEnded()

    # Parsing

    def _failureReply(self) -> int | None:
        """
        The reply for a failure in the current state.
        """
        if self.state is _State.REQUEST:
            return Reply.GENERAL_FAILURE
        if self.state is _State.GREETING and self._buffer[:1] == b"\x04":
            return SOCKS4_REJECTED
        return None

    def _advance(self) -> None:
        """
        Consume as many complete messages from the buffer as the state
        allows.
        """
        while self._buffer and self.state in (
            _State.GREETING,
            _State.AUTHENTICATING,
            _State.REQUEST,
        ):
            before = self.state
            if before is _State.GREETING:
                self._greeting()
            elif before is _State.AUTHENTICATING:
                self._authenticate()
            else:
                request = parseSOCKS5Request(self._buffer)
                if request is not None:
                    self._connect(request)
            if self.state is before:
                return  # incomplete

    def _greeting(self) -> None:
        version = self._buffer[0]
        if version == 4:
            request = parseSOCKS4Request(self._buffer)
            if request is None:
                return
            if self.factory.credentials is not None:
                raise SOCKSError(
                    SOCKS4_REJECTED,
                    "SOCKS4 cannot authenticate and this server requires a user name "
                    "and password (use SOCKS5)",
                )
            self._connect(request)
            return
        if version != 5:
            raise SOCKSError(None, f"unknown SOCKS version {version} (first byte 0x{version:02x})")
        greeting = parseGreeting(self._buffer)
        if greeting is None:
            return
        methods, consumed = greeting
        self._buffer = self._buffer[consumed:]
        wanted = _NO_AUTH if self.factory.credentials is None else _USERNAME_PASSWORD
        if wanted not in methods:
            self.transport.write(bytes([5, _NO_ACCEPTABLE]))
            offered = ", ".join(str(m) for m in sorted(methods))
            raise SOCKSError(
                None,
                f"no acceptable authentication method (offered {offered}; this server "
                f"requires {'username/password (2)' if wanted else 'none (0)'})",
            )
        self.transport.write(bytes([5, wanted]))
        if wanted == _USERNAME_PASSWORD:
            self.state = _State.AUTHENTICATING
        else:
            self.state = _State.REQUEST

    def _authenticate(self) -> None:
        parsed = parseUserPass(self._buffer)
        if parsed is None:
            return
        user, password, consumed = parsed
        self._buffer = self._buffer[consumed:]
        if not self.factory.checkPassword(user, password):
            self.transport.write(b"\x01\x01")
            raise SOCKSError(
                None,
                f"wrong user name or password for user {user[:64].decode('utf-8', 'replace')!r}",
            )
        self.transport.write(b"\x01\x00")
        self.state = _State.REQUEST

    # The tunnel

    def _connect(self, request: SOCKSRequest) -> None:
        self._cancelTimer()
        self.request = request
        self.state = _State.CONNECTING
        rest, self._buffer = self._buffer[request.consumed :], b""
        self.transport.pauseProducing()
        if rest:
            self._hold(rest)
        try:
            endpoint = self.factory.endpointFor(request.host, request.port)
            d = endpoint.connect(_TunnelSideFactory(self))
        except Exception as e:  # noqa: BLE001 - reported to the client
            self._tunnelFailed(Failure(e))
            return
        self._connecting = d
        d.addCallbacks(self._tunnelUp, self._tunnelFailed)
        d.addErrback(lambda f: self.log.failure("Unexpected error in a SOCKS connection", f))

    def _hold(self, data: bytes) -> None:
        self._early.append(data)
        self._earlySize += len(data)
        if self._earlySize > MAX_EARLY_DATA:
            self._refuse(SOCKSError(None, "too much data before the tunnel was connected"))

    def _tunnelUp(self, tunnel: _TunnelSide) -> None:
        self._connecting = None
        self._tunnel = tunnel
        self._tunnelOpen = True
        if self.state is not _State.CONNECTING:
            # Refused or gone meanwhile: end the tunnel as the client ended.
            if self._lost and not isCleanEnd(self._localEnd):
                resetAfterFlush(tunnel.transport, self.clock)
            else:
                tunnel.transport.loseConnection()
            return
        request = self.request
        assert request is not None
        self.state = _State.RELAYING
        if request.version == 5:
            self.transport.write(_socks5Reply(Reply.SUCCEEDED))
        else:
            self.transport.write(_socks4Reply(SOCKS4_GRANTED))
        self.log.debug(
            "SOCKS{version} CONNECT from {peer} to {sprite} {target}",
            version=request.version,
            **self._where(),
        )
        splice(self, tunnel)
        tunnel.release()
        early, self._early = self._early, []
        for chunk in early:
            Pipe.dataReceived(self, chunk)
        self.transport.resumeProducing()

    def _tunnelFailed(self, failure: Failure) -> None:
        self._connecting = None
        if self.state is not _State.CONNECTING:
            # Refused or lost meanwhile; the cancellation is ours.
            if not failure.check(CancelledError):
                self.log.debug(
                    "tunnel failed after its connection ended: {error}",
                    error=failure.getErrorMessage(),
                )
            self._maybeEnded()
            return
        request = self.request
        assert request is not None
        code = replyCodeFor(failure)
        self.log.warn(
            "SOCKS{version} CONNECT from {peer} to {sprite} {target} failed "
            "(reply {reply}): {error}",
            version=request.version,
            reply=code.name.lower().replace("_", " "),
            error=failure.getErrorMessage(),
            **self._where(),
        )
        self.state = _State.CLOSED
        if self.transport is not None:
            if request.version == 5:
                self.transport.write(_socks5Reply(code))
            else:
                self.transport.write(_socks4Reply(SOCKS4_REJECTED))
            self.transport.loseConnection()
        self._maybeEnded()

    def tunnelLost(self, reason: Failure | None) -> None:
        """
        The tunnel's connection is gone; its side of the pipe has ended the
        local connection the same way (a FIN for a clean close, a reset for
        a broken tunnel).
        """
        self._tunnelOpen = False
        if not isCleanEnd(reason) and not self._lost:
            self.log.warn(
                "SOCKS tunnel from {peer} to {sprite} {target} broke: {error}",
                error=reason.getErrorMessage() if reason is not None else "?",
                **self._where(),
            )
        if self.peer is None and not self._lost and self.transport is not None:
            endStream(self.transport, reason, self.clock)
        self._maybeEnded()

    # Refusals and the end

    def _refuse(self, error: SOCKSError) -> None:
        """
        Send C{error}'s reply (if the protocol has one), log, close.
        """
        if self.state is _State.CLOSED:
            return
        version = self.request.version if self.request is not None else None
        self.state = _State.CLOSED
        self._cancelTimer()
        self._buffer = b""
        self._early = []
        self.log.info(
            "SOCKS client {peer} refused: {problem}",
            peer=self._peer(),
            problem=error.message,
        )
        if self._connecting is not None:
            connecting, self._connecting = self._connecting, None
            connecting.cancel()
        if self.transport is None:
            return
        if error.reply is not None:
            if error.reply == SOCKS4_REJECTED or version == 4:
                self.transport.write(_socks4Reply(SOCKS4_REJECTED))
            else:
                self.transport.write(_socks5Reply(error.reply))
        self.transport.loseConnection()

    def _timedOut(self) -> None:
        self._timer = None
        timeout = self.factory.requestTimeout
        self._refuse(SOCKSError(None, f"no complete request within {timeout:g} s"))

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _maybeEnded(self) -> None:
        if not self._lost or self._tunnelOpen or self._connecting is not None:
            return
        factory = self.factory
        if self not in factory.connections:
            return
        factory.connections.discard(self)
        tunnel = self._tunnel
        if tunnel is not None and self.request is not None:
            self.log.info(
                "SOCKS connection from {peer} to {sprite} {target} ended: {sent} bytes "
                "sent, {received} bytes received, {duration:.3f} s",
                sent=self.bytesIn,
                received=tunnel.bytesIn,
                duration=factory.clock.seconds() - self._started,
                **self._where(),
            )

    def _peer(self) -> str:
        address = self.transport.getPeer() if self.transport is not None else None
        host = getattr(address, "host", None)
        if host is None:
            return str(address)
        return formatTarget(str(host), getattr(address, "port", "?"))

    def _where(self) -> dict[str, str]:
        request = self.request
        return {
            "peer": self._peer(),
            "sprite": self.factory.spriteName,
            "target": formatTarget(request.host, request.port) if request else "?",
        }

    def abort(self) -> None:
        """
        Close this connection and its tunnel now.
        """
        tunnel = self._tunnel
        if tunnel is not None and tunnel.transport is not None:
            tunnel.transport.abortConnection()
        if self.transport is not None:
            self.transport.abortConnection()


class SOCKSServerFactory(Factory):
    """
    Accepts SOCKS connections whose CONNECTs become tunnels.

    :param endpointFor: C{(host, port) -> IStreamClientEndpoint}: where one
        CONNECT's tunnel comes from (for a sprite:
        C{lambda host, port: client.endpoint(spriteName, port, host)}).
    :param clock: for the request timeout and the logs' durations.
    :param spriteName: for log lines.
    :param credentials: user name -> password; when given, SOCKS5 clients
        must authenticate (RFC 1929) and SOCKS4 is refused.
    :param requestTimeout: seconds a client may take to send its request
        (0: no limit).
    """

    protocol = SOCKSServerProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        endpointFor: Callable[[str, int], IStreamClientEndpoint],
        clock: IReactorTime,
        spriteName: str = "",
        *,
        credentials: Mapping[str, str] | None = None,
        requestTimeout: float = DEFAULT_REQUEST_TIMEOUT,
        closeSpares: Callable[[], None] | None = None,
    ) -> None:
        self.endpointFor = endpointFor
        self._closeSpares = closeSpares
        self.clock = clock
        self.spriteName = spriteName
        self.credentials = (
            None
            if credentials is None
            else {u.encode("utf-8"): p.encode("utf-8") for u, p in credentials.items()}
        )
        self.requestTimeout = requestTimeout
        self.connections = OpenSet()

    def __repr__(self) -> str:
        auth = "username/password" if self.credentials is not None else "no authentication"
        return f"<SOCKSServerFactory {self.spriteName!r} ({auth})>"

    def checkPassword(self, user: bytes, password: bytes) -> bool:
        """
        Are C{user} and C{password} configured?  Constant-time comparison
        of the password.
        """
        credentials = self.credentials or {}
        expected = credentials.get(user)
        if expected is None:
            hmac.compare_digest(password, password)
            return False
        return hmac.compare_digest(password, expected)

    def whenIdle(self) -> Deferred[None]:
        """
        A Deferred that fires once no SOCKS connection is open.
        """
        return self.connections.whenEmpty()

    def abortAll(self) -> None:
        """
        Close every open connection (and its tunnel) now.
        """
        for proto in list(self.connections):
            proto.abort()

    def closeSpares(self) -> None:
        """
        Close the warm tunnels kept for this factory's CONNECTs, if any (a
        L{SOCKSService} calls this once it has stopped).
        """
        if self._closeSpares is not None:
            self._closeSpares()


def socksFactory(
    client: SpritesClient,
    spriteName: str,
    clock: IReactorTime,
    *,
    credentials: Mapping[str, str] | None = None,
    requestTimeout: float = DEFAULT_REQUEST_TIMEOUT,
) -> SOCKSServerFactory:
    """
    A SOCKS server factory whose CONNECTs are tunnels into C{spriteName}
    through C{client} (C{client.endpoint(spriteName, port, host)}); listen
    with it on any server endpoint::

        factory = socksFactory(client, "mysprite", reactor)
        serverFromString(reactor, "tcp:1080:interface=127.0.0.1").listen(factory)

    C{client.socksFactory(spriteName)} is the same with the client's
    reactor.

    :raises ConfigurationError: for a bad sprite name.
    """
    from sprites_twisted.config import checkSpriteName

    checkSpriteName(spriteName)
    return SOCKSServerFactory(
        lambda host, port: client.endpoint(spriteName, port, host),
        clock,
        spriteName,
        credentials=credentials,
        requestTimeout=requestTimeout,
        closeSpares=lambda: client.closeSpares(spriteName),
    )


def parseCredentials(text: str, source: str = "credentials") -> dict[str, str]:
    """
    Parse ``user:password`` lines (blank lines and ``#`` comments skipped).

    :raises ConfigurationError: naming C{source} and the line number of a
        line without ``:``, an empty user name, or a user name or password
        over 255 bytes; or when no line is left.
    """
    from sprites_twisted.errors import ConfigurationError

    credentials: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user:
            raise ConfigurationError(f"{source} line {number}: expected USER:PASSWORD")
        if len(user.encode("utf-8")) > _MAX_NAME or len(password.encode("utf-8")) > _MAX_NAME:
            raise ConfigurationError(
                f"{source} line {number}: user name and password are limited to "
                f"{_MAX_NAME} bytes (RFC 1929)"
            )
        credentials[user] = password
    if not credentials:
        raise ConfigurationError(f"{source} holds no USER:PASSWORD line")
    return credentials


def parseListenAddress(text: str, default: str = DEFAULT_INTERFACE) -> tuple[str, int]:
    """
    Parse ``[BIND:]PORT`` (``1080``, ``127.0.0.1:1080``, ``[::1]:1080``).

    :returns: the address (no brackets) and the port (0: any free one).
    :raises ConfigurationError: naming C{text} when the address is not an IP
        address or the port not 0..65535.
    """
    from sprites_twisted.errors import ConfigurationError

    value = text.strip()
    if value.startswith("["):
        host, sep, portText = value[1:].partition("]:")
        if not sep:
            raise ConfigurationError(f"{text!r}: expected [IPV6]:PORT, such as [::1]:1080")
    elif value.count(":") == 1:
        host, _, portText = value.partition(":")
    elif ":" in value:
        raise ConfigurationError(f"{text!r}: put an IPv6 address in brackets, as in [::1]:1080")
    else:
        host, portText = default, value
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigurationError(
            f"{text!r}: {host!r} is not an IP address (such as 127.0.0.1 or [::1])"
        ) from None
    if not (portText.isascii() and portText.isdigit()) or int(portText) > 65535:
        raise ConfigurationError(f"{text!r}: port {portText!r} is not a number in 0..65535")
    return host, int(portText)


class SOCKSService(Service):
    """
    Listen for SOCKS clients on C{interface}:C{port} while running.

    C{listen} (which a manager may call instead of C{startService}) fails,
    and C{startService} raises, with C{CannotListenError} naming the
    address when the port cannot be had, so that start-up stops; stopping
    stops listening, gives open connections C{drainTimeout} seconds, then
    closes them, and closes the factory's warm tunnels.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        factory: SOCKSServerFactory,
        interface: str,
        port: int,
        drainTimeout: float = DEFAULT_DRAIN_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self.factory = factory
        self.interface = interface
        self.port = port
        self.drainTimeout = drainTimeout
        self.listeningPort: Any = None

    def listen(self) -> Deferred[SOCKSService]:
        """
        Start listening (once).

        :returns: a Deferred that fires with this service when listening,
            or fails with C{CannotListenError} (which names the address).
        """
        from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

        if self.listeningPort is not None:
            return succeed(self)
        endpoint: Any
        if ":" in self.interface:
            endpoint = TCP6ServerEndpoint(self._reactor, self.port, interface=self.interface)
        else:
            endpoint = TCP4ServerEndpoint(self._reactor, self.port, interface=self.interface)
        d: Deferred[Any] = endpoint.listen(self.factory)
        return d.addCallback(self._listening)

    def startService(self) -> None:
        """
        Listen; a port that cannot be had raises C{CannotListenError} here,
        so that start-up stops naming the address.
        """
        Service.startService(self)
        failures: list[Failure] = []
        self.listen().addErrback(failures.append)
        if failures:
            self.running = 0
            failures[0].raiseException()

    def _listening(self, port: Any) -> SOCKSService:
        self.listeningPort = port
        self.log.info(
            "SOCKS5/SOCKS4a on {address} -> {sprite}",
            address=formatTarget(self.interface, port.getHost().port),
            sprite=self.factory.spriteName,
        )
        if not _isLoopback(self.interface) and self.factory.credentials is None:
            self.log.warn(
                "the SOCKS port {address} is not on loopback and asks for no password: "
                "anyone who can reach it can reach everything in the sprite {sprite}",
                address=formatTarget(self.interface, port.getHost().port),
                sprite=self.factory.spriteName,
            )
        return self

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        port, self.listeningPort = self.listeningPort, None
        d: Deferred[Any] = maybeDeferred(port.stopListening) if port else succeed(None)

        def drain(_: Any) -> Deferred[None]:
            idle = self.factory.whenIdle()
            if idle.called:
                return idle
            timer = self._reactor.callLater(self.drainTimeout, self.factory.abortAll)

            def stopTimer(result: Any) -> Any:
                if timer.active():
                    timer.cancel()
                return result

            return idle.addBoth(stopTimer)

        def closeSpares(result: Any) -> Any:
            self.factory.closeSpares()
            return result

        return d.addBoth(drain).addBoth(closeSpares)


def _isLoopback(host: str) -> bool:
    from sprites_twisted.config import isLoopbackHost

    return isLoopbackHost(host)
