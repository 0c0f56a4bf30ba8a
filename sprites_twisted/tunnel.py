# -*- test-case-name: tests.test_tunnel -*-
"""
The client side of one tunnel: an Autobahn WebSocket client protocol that
performs the Sprites handshake and then relays bytes.

States: ``upgrading`` (HTTP upgrade in flight) -> ``awaitingReply`` (init
sent) -> ``relaying`` -> ``closed``.  The protocol reports the outcome of
the first two states to a L{TunnelAttempt} (one per ``connect`` call), which
turns it into the result of the endpoint's Deferred; after that, bytes flow
through a L{WebSocketStreamTransport} to the application protocol.

Autobahn reports a refused upgrade only as text; we read the HTTP status,
headers and body ourselves (L{TunnelClientProtocol.processHandshake}) so
that a 401, 404 or 429 becomes a typed error with the server's message and
``Retry-After``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import parseHttpHeader
from autobahn.websocket.types import ConnectingRequest
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.python.failure import Failure

from sprites_twisted import __version__
from sprites_twisted.errors import (
    HandshakeError,
    RateLimitedError,
    SpriteAuthError,
    SpriteNotFoundError,
    SpriteServerError,
    TLSHandshakeError,
    TLSVerificationError,
    TunnelClosedError,
    UpgradeRefusedError,
)
from sprites_twisted.relay import (
    SharedOptionsFactoryMixin,
    SpriteAddress,
    StreamingWebSocketMixin,
    WebSocketStreamTransport,
    closeFailure,
    isTLSFailure,
    quietAutobahnLogger,
    sendMessage,
)
from sprites_twisted.wire import MAX_REPLY_SIZE, parseReply

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

__all__ = [
    "USER_AGENT",
    "TunnelClientProtocol",
    "TunnelClientFactory",
    "TunnelAttempt",
    "refusalError",
]

USER_AGENT = f"sprites-twisted/{__version__}"

#: The most of a refused upgrade's body we read and keep.
MAX_ERROR_BODY = 8 * 1024
#: The most of an HTTP response header we accept before giving up.
MAX_RESPONSE_HEADER = 16 * 1024

_UPGRADING, _AWAITING, _RELAYING, _CLOSED = range(4)


def _decodeBody(headers: dict[str, str], body: bytes) -> bytes:
    """
    Undo chunked transfer encoding, as far as the body goes.
    """
    if "chunked" not in headers.get("transfer-encoding", "").lower():
        return body
    out = []
    rest = body
    while rest:
        line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            break
        try:
            size = int(line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2 :]
    return b"".join(out)


def _retryAfter(headers: dict[str, str], body: dict[str, Any]) -> float | None:
    for value in (headers.get("retry-after"), body.get("retry_after_seconds")):
        if value is None or isinstance(value, bool):
            continue
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            continue
        if seconds >= 0:
            return seconds
    return None


def refusalError(status: int, headers: dict[str, str], body: bytes) -> UpgradeRefusedError:
    """
    The typed error for an upgrade refused with HTTP C{status}.

    The body's JSON ``message``/``error`` fields are used when present;
    otherwise the start of the body (truncated) is the message.
    """
    body = _decodeBody(headers, body)[:MAX_ERROR_BODY]
    parsed: dict[str, Any] = {}
    message: str | None = None
    code: str | None = None
    try:
        value = json.loads(body.decode("utf-8"))
        if isinstance(value, dict):
            parsed = value
    except (UnicodeDecodeError, ValueError, RecursionError):
        pass
    if parsed:
        m = parsed.get("message")
        c = parsed.get("error")
        message = m if isinstance(m, str) else None
        code = c if isinstance(c, str) else None
    elif body.strip():
        message = body.decode("utf-8", "replace").strip()
    if status in (401, 403):
        return SpriteAuthError(status, message, code)
    if status == 404:
        return SpriteNotFoundError(status, message, code)
    if status == 429:
        return RateLimitedError(status, message, code, _retryAfter(headers, parsed))
    if 500 <= status <= 599:
        return SpriteServerError(status, message, code)
    return UpgradeRefusedError(status, message, code)


#: OpenSSL verify results meaning "this chain does not end at a CA we trust".
_UNTRUSTED_CODES = frozenset({2, 18, 19, 20, 21})


def _certificateNames(certificate: Any) -> str:
    """
    The DNS names and IP addresses a certificate is valid for, for messages.
    """
    from cryptography import x509

    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return "no names"
    names = [*san.value.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)]
    return ", ".join(names[:5]) or "no names"


def _chainProblem(transport: Any) -> str | None:
    """
    Why the peer's certificate chain fails verification, re-checked against
    the trust store the connection used: OpenSSL itself only says
    "certificate verify failed", which does not tell an expired certificate
    from an untrusted CA.  C{None} when the chain is fine or unknown.
    """
    try:
        from OpenSSL.crypto import X509StoreContext, X509StoreContextError

        handle = transport.getHandle()
        chain = handle.get_peer_cert_chain()
        if not chain:
            return None
        store = handle.get_context().get_cert_store()
        leaf = chain[0]
        try:
            X509StoreContext(store, leaf, chain[1:]).verify_certificate()
        except X509StoreContextError as e:
            errors = e.errors if isinstance(getattr(e, "errors", None), list) else []
            code = errors[0] if errors else None
            text = str(errors[2]) if len(errors) > 2 else str(e)
            certificate = leaf.to_cryptography()
            if code == 10:
                when = certificate.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S UTC")
                return f"{text} (on {when})"
            if code == 9:
                when = certificate.not_valid_before_utc.strftime("%Y-%m-%d %H:%M:%S UTC")
                return f"{text} (valid from {when} on)"
            if code in _UNTRUSTED_CODES:
                return (
                    f"{text}: issuer {certificate.issuer.rfc4514_string()!r} is not a "
                    "trusted CA (for a private CA pass trustRoot= / --ca-file)"
                )
            return str(text)
    except Exception:  # noqa: BLE001 - diagnosis only; the caller falls back
        return None
    return None


def _peerSentCertificate(transport: Any) -> bool:
    """
    Did the TLS peer present a certificate before the handshake failed?
    """
    try:
        return bool(transport.getHandle().get_peer_cert_chain())
    except Exception:  # noqa: BLE001 - no TLS handle: assume it did
        return True


def _tlsReason(reason: Failure, transport: Any = None, host: str = "") -> str:
    """
    Why TLS verification of C{host} failed, in words a user can act on:
    expired, not yet valid, untrusted issuer, or issued for other names.
    """
    problems = []
    if transport is not None:
        chainProblem = _chainProblem(transport)
        if chainProblem:
            problems.append(chainProblem)
    from service_identity import CertificateError, VerificationError

    if reason.check(VerificationError, CertificateError):
        names = None
        try:
            # After a failed handshake only the chain is kept, not the peer.
            chain = transport.getHandle().get_peer_cert_chain()
            if chain:
                names = _certificateNames(chain[0].to_cryptography())
        except Exception:  # noqa: BLE001 - diagnosis only
            names = None
        text = f"the certificate is not valid for the host name {host}"
        if names:
            text += f" (it is for {names})"
        problems.append(text)
    if problems:
        return "; ".join(problems)
    value = reason.value
    args = getattr(value, "args", ())
    # pyOpenSSL: Error([(lib, func, reason), ...])
    if args and isinstance(args[0], list):
        texts = [str(entry[-1]) for entry in args[0] if isinstance(entry, tuple)]
        if texts:
            return "; ".join(texts)
    return str(value) or type(value).__name__


class TunnelAttempt:
    """
    One ``connect`` call's state: what to send, where the result goes.

    The protocol calls L{ready} or L{failed} exactly once between them;
    later calls are ignored, so a cancel or timeout racing with the
    server's answer is harmless.
    """

    def __init__(
        self,
        deferred: Deferred[IProtocol],
        protocolFactory: IProtocolFactory,
        initMessage: bytes,
        peerAddress: SpriteAddress,
        clock: IReactorTime,
        apiHost: str,
        closeTimeout: float = 1.0,
    ) -> None:
        self.deferred = deferred
        self.protocolFactory = protocolFactory
        self.initMessage = initMessage
        self.peerAddress = peerAddress
        self.clock = clock
        self.apiHost = apiHost
        self.closeTimeout = closeTimeout
        self.protocol: TunnelClientProtocol | None = None
        self.done = False

    def ready(self, proto: TunnelClientProtocol) -> WebSocketStreamTransport | None:
        """
        The tunnel answered ``connected``: build the application protocol
        on a stream transport and fire the Deferred with it.
        """
        if self.done:
            proto.dropConnection(abort=True)
            return None
        self.done = True
        assert proto.transport is not None  # it just delivered the reply
        stream = WebSocketStreamTransport(
            proto,
            proto.transport.getHost(),
            self.peerAddress,
            self.clock,
            self.closeTimeout,
        )
        app = self.protocolFactory.buildProtocol(self.peerAddress)
        if app is None:
            from twisted.internet.error import NoProtocol

            proto.dropConnection(abort=True)
            self.deferred.errback(NoProtocol())
            return None
        stream.attach(app)
        self.deferred.callback(app)
        return stream

    def failed(self, failure: Failure) -> None:
        """
        The tunnel could not be opened.
        """
        if self.done:
            return
        self.done = True
        self.deferred.errback(failure)

    def abort(self) -> None:
        """
        Drop the connection (used by cancel and timeout).
        """
        self.done = True
        proto = self.protocol
        if proto is not None and proto.transport is not None:
            proto.dropConnection(abort=True)


class TunnelClientProtocol(StreamingWebSocketMixin, WebSocketClientProtocol):  # type: ignore[misc]
    """
    One tunnel's WebSocket: upgrade, send the init, wait for
    ``connected``, then relay binary data both ways.
    """

    log = quietAutobahnLogger()
    maxTextSize = MAX_REPLY_SIZE
    attempt: TunnelAttempt
    _state = _UPGRADING
    _stream: WebSocketStreamTransport | None = None
    _failure: Failure | None = None
    _refusal: tuple[int, dict[str, str], int] | None = None
    _lostReason: Failure | None = None

    # Upgrade

    def processHandshake(self) -> None:
        """
        Let Autobahn handle a 101; read any other answer ourselves so that
        the status, ``Retry-After`` and the body reach the error.
        """
        data = self.data
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > MAX_RESPONSE_HEADER:
                self._fail(TunnelClosedError(None, "HTTP response header too large"))
            return
        if self._refusal is None:
            statusLine = data[: data.find(b"\r\n")]
            parts = statusLine.split(None, 2)
            try:
                status = int(parts[1])
            except (IndexError, ValueError):
                return super().processHandshake()  # type: ignore[no-any-return]
            if status == 101:
                return super().processHandshake()  # type: ignore[no-any-return]
            _, headers, _ = parseHttpHeader(data[: end + 4])
            self._refusal = (status, headers, end + 4)
        status, headers, bodyStart = self._refusal
        body = data[bodyStart:]
        wanted: int | None = None
        if "chunked" in headers.get("transfer-encoding", "").lower():
            complete = body.endswith(b"0\r\n\r\n")
        else:
            try:
                wanted = int(headers.get("content-length", ""))
            except ValueError:
                wanted = None
            complete = wanted is not None and len(body) >= wanted
        if complete or len(body) >= MAX_ERROR_BODY:
            self._finishRefusal()

    def _finishRefusal(self) -> None:
        if self._refusal is None or self._failure is not None:
            return
        status, headers, bodyStart = self._refusal
        self._fail(refusalError(status, headers, self.data[bodyStart:]))

    def startHandshake(self) -> Any:
        """
        Send the HTTP upgrade request, as Autobahn does, minus the debug
        line it formats (C{pformat} of the transport details) even when
        debug logging is off: a tenth of a tunnel's setup CPU.  Falls back
        to Autobahn's own when its internals differ.
        """
        send = getattr(self, "_actuallyStartHandshake", None)
        if send is None or type(self).onConnecting is not WebSocketClientProtocol.onConnecting:
            return super().startHandshake()
        f = self.factory
        send(
            ConnectingRequest(
                host=f.host,
                port=f.port,
                resource=f.resource,
                headers=f.headers,
                useragent=f.useragent,
                origin=f.origin,
                protocols=f.protocols,
            )
        )
        return None

    def onOpen(self) -> None:
        self._state = _AWAITING
        sendMessage(self, self.attempt.initMessage, isBinary=False)

    # Handshake reply and relay

    def textReceived(self, payload: bytes) -> None:
        if self._state != _AWAITING:
            # Text after the handshake is not payload (PROTOCOL.md).
            return
        try:
            parseReply(payload)
        except HandshakeError as e:
            self._fail(e)
            return
        self._state = _RELAYING
        self._stream = self.attempt.ready(self)

    def binaryReceived(self, data: bytes) -> None:
        if self._state == _RELAYING:
            stream = self._stream
            if stream is not None:
                stream.deliver(data)
        elif self._state == _AWAITING:
            self._fail(HandshakeError(None, "binary data arrived before the handshake reply"))

    def _fail(self, error: Exception) -> None:
        """
        Record why the tunnel failed and drop the connection; L{onClose}
        reports it.
        """
        if self._failure is None:
            self._failure = Failure(error)
            # What Autobahn's own "dropping connection" warning shows.
            self.wasNotCleanReason = str(error)
        self.dropConnection(abort=True)

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> Any:
        result = super().onCloseFrame(code, reasonRaw)
        if self._stream is not None:
            self._stream.closeStarted()
        elif self._state == _AWAITING:
            # No reply can come after a close: fail now rather than wait
            # for the server to drop the connection.
            reason = reasonRaw.decode("utf-8", "replace") if reasonRaw else None
            self._fail(TunnelClosedError(code, reason or "closed before the handshake reply"))
        return result

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lostReason = reason
        if self._refusal is not None and self._failure is None:
            # The server closed after a refusal: use what body we got.
            self._finishRefusal()
        if isTLSFailure(reason):
            # Reported as a TLSVerificationError (and warned about by the
            # listener); Autobahn would also log a cryptic error-level line.
            reason = Failure(ConnectionLost("TLS verification failed"))
        super().connectionLost(reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        state, self._state = self._state, _CLOSED
        if state == _RELAYING:
            stream, self._stream = self._stream, None
            if stream is None:
                return
            stream.deliverConnectionLost(closeFailure(wasClean, code, reason))
            return
        self.attempt.failed(self._failureFor(state, wasClean, code, reason))

    def _failureFor(
        self, state: int, wasClean: bool, code: int | None, reason: str | None
    ) -> Failure:
        if self._failure is not None:
            return self._failure
        lost = self._lostReason
        if isTLSFailure(lost):
            assert lost is not None
            host = self.attempt.apiHost
            reason = _tlsReason(lost, self.transport, host)
            if not _peerSentCertificate(self.transport):
                # No certificate at all: not a verification failure but a
                # peer that does not speak TLS (or broke the handshake).
                return Failure(TLSHandshakeError(host, reason))
            return Failure(TLSVerificationError(host, reason))
        if state == _UPGRADING:
            why = getattr(self, "wasNotCleanReason", None) or (
                lost.getErrorMessage() if lost is not None else None
            )
            return Failure(
                TunnelClosedError(None, f"during the WebSocket upgrade: {why}" if why else None)
            )
        if wasClean:
            return Failure(TunnelClosedError(code, reason or "closed before the handshake reply"))
        if getattr(self, "failedByMe", False) and self.wasNotCleanReason:
            # Autobahn failed the connection itself (a reply over the size
            # limit, a protocol violation): say what the server did wrong.
            why = str(self.wasNotCleanReason).removeprefix(
                "I dropped the WebSocket TCP connection: "
            )
            return Failure(HandshakeError(None, why))
        return Failure(TunnelClosedError(code, "connection dropped before the handshake reply"))


class TunnelClientFactory(SharedOptionsFactoryMixin, WebSocketClientFactory):  # type: ignore[misc]
    """
    The Autobahn client factory for one sprite proxy URL, shared by all
    tunnels of an endpoint.

    All of Autobahn's timers are switched off: they run on the global
    reactor, not the one we are given.  The handshake timeout is the
    endpoint's own (C{Deferred.addTimeout} on our reactor); close timeouts
    are L{WebSocketStreamTransport}'s.
    """

    protocol = TunnelClientProtocol

    def __init__(
        self,
        url: str,
        token: str,
        reactor: Any,
        maxFramePayloadSize: int = 0,
    ) -> None:
        super().__init__(
            url,
            headers={"Authorization": f"Bearer {token}"},
            useragent=USER_AGENT,
            reactor=reactor,
        )
        self.setProtocolOptions(
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            serverConnectionDropTimeout=0,
            autoPingInterval=0,
            maxFramePayloadSize=maxFramePayloadSize,
            perMessageCompressionOffers=[],
            tcpNoDelay=True,
        )

    def __repr__(self) -> str:
        return f"<TunnelClientFactory {self.url}>"


class AttemptFactory(Factory):
    """
    Builds the protocol for one ``connect`` call: a protocol from the
    shared L{TunnelClientFactory}, bound to its L{TunnelAttempt}.
    """

    noisy = False

    def __init__(self, wsFactory: TunnelClientFactory, attempt: TunnelAttempt) -> None:
        self.wsFactory = wsFactory
        self.attempt = attempt

    def buildProtocol(self, addr: Any) -> TunnelClientProtocol:
        proto: TunnelClientProtocol = self.wsFactory.buildProtocol(addr)
        proto.attempt = self.attempt
        self.attempt.protocol = proto
        return proto
