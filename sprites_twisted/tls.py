# -*- test-case-name: tests.test_tls -*-
"""
TLS in one place: the verified TLS endpoint to the API, trust roots, and
the diagnosis of a failed TLS handshake in words a user can act on.

Verification is Twisted's C{optionsForClientTLS} (service_identity checks
the host name); OpenSSL itself only says "certificate verify failed", so
L{tlsFailure} re-checks the chain the peer sent to tell an expired
certificate from an untrusted CA or a certificate for another name.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from sprites_twisted.config import APIEndpoint
from sprites_twisted.errors import ConfigurationError, TLSHandshakeError, TLSVerificationError

__all__ = [
    "apiTransport",
    "apiTransportEndpoint",
    "ResumingClientTLS",
    "loadTrustRoot",
    "isTLSFailure",
    "tlsFailure",
]


def apiTransportEndpoint(
    reactor: Any, api: APIEndpoint, trustRoot: Any = None, timeout: float = 30
) -> IStreamClientEndpoint:
    """
    The TCP (and, for ``https``/``wss``, verified TLS) endpoint to the API
    (see L{apiTransport}).
    """
    return apiTransport(reactor, api, trustRoot, timeout)[0]


def apiTransport(
    reactor: Any, api: APIEndpoint, trustRoot: Any = None, timeout: float = 30
) -> tuple[IStreamClientEndpoint, ResumingClientTLS | None]:
    """
    The TCP (and, for ``https``/``wss``, verified TLS) endpoint to the API,
    and its TLS session cache (C{None} for plain text).

    TLS uses Twisted's C{optionsForClientTLS}: the chain is checked against
    C{trustRoot} (the system store by default) and the host name with
    service_identity.  IP literals skip name resolution.

    :param trustRoot: C{None} (system store), an C{IOpenSSLTrustRoot}, or
        the path of a PEM file of CA certificates.
    """
    try:
        address = ipaddress.ip_address(api.host)
    except ValueError:
        address = None
    inner: IStreamClientEndpoint
    if address is None:
        inner = HostnameEndpoint(reactor, api.host, api.port, timeout=timeout)
    elif address.version == 4:
        inner = TCP4ClientEndpoint(reactor, api.host, api.port, timeout=timeout)
    else:
        inner = TCP6ClientEndpoint(reactor, api.host, api.port, timeout=timeout)
    if not api.secure:
        return inner, None
    from twisted.internet.ssl import optionsForClientTLS

    options = optionsForClientTLS(api.host, trustRoot=loadTrustRoot(trustRoot))
    sessions = ResumingClientTLS(options)
    return wrapClientTLS(sessions, inner), sessions


@implementer(IOpenSSLClientConnectionCreator)
class ResumingClientTLS:
    """
    Twisted's verified client TLS options, resuming the last TLS session to
    the same host: every tunnel is a new TLS connection to the API, and a
    resumed one skips the certificate exchange and its verification (CPU on
    both sides; the round trips are the same).

    The session is taken from a connection once its WebSocket is open
    (L{remember}): TLS 1.3 sends its session tickets after the handshake,
    so by then the client has them.  A session that cannot be resumed
    costs nothing: OpenSSL falls back to a full, verified handshake.
    """

    def __init__(self, options: IOpenSSLClientConnectionCreator) -> None:
        self._options = options
        self.session: Any = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        if self.session is not None:
            connection.set_session(self.session)
        return connection

    def remember(self, connection: Any) -> None:
        """
        Keep C{connection}'s session (a pyOpenSSL C{Connection}) for the
        next connection.
        """
        try:
            session = connection.get_session()
        except Exception:  # noqa: BLE001 - no TLS, or no session yet
            return
        if session is not None:
            self.session = session


def loadTrustRoot(trustRoot: Any) -> Any:
    """
    Turn a CA file path into a trust root; pass anything else through.
    """
    if isinstance(trustRoot, str):
        from twisted.internet.ssl import Certificate, trustRootFromCertificates

        try:
            with open(trustRoot, "rb") as f:
                pem = f.read()
        except OSError as e:
            raise ConfigurationError(f"cannot read CA file {trustRoot!r}: {e.strerror}") from None
        certificates = []
        marker = b"-----END CERTIFICATE-----"
        for block in pem.split(marker)[:-1]:
            certificates.append(Certificate.loadPEM(block + marker + b"\n"))
        if not certificates:
            raise ConfigurationError(f"CA file {trustRoot!r} holds no PEM certificate")
        return trustRootFromCertificates(certificates)
    return trustRoot


def isTLSFailure(reason: Failure | None) -> bool:
    """
    Did the connection end because TLS failed?  A bad chain arrives as
    pyOpenSSL's C{Error}; a certificate for another host name as
    service_identity's C{VerificationError} (Twisted checks the name in its
    verify callback).
    """
    if reason is None:
        return False
    try:
        from OpenSSL.SSL import Error as SSLError
        from service_identity import CertificateError, VerificationError
    except ImportError:  # pragma: no cover - pyOpenSSL is a dependency
        return False
    return reason.check(SSLError, VerificationError, CertificateError) is not None


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
                    "trusted CA (for a private CA, give its certificates as the trust root)"
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


def tlsFailure(reason: Failure, transport: Any, host: str) -> Failure:
    """
    The error for a connection to C{host} that ended because TLS failed
    (L{isTLSFailure}): L{TLSHandshakeError} when the peer sent no
    certificate at all (it does not speak TLS, or broke the handshake),
    else L{TLSVerificationError} saying what is wrong with its certificate.
    """
    text = _tlsReason(reason, transport, host)
    if not _peerSentCertificate(transport):
        return Failure(TLSHandshakeError(host, text))
    return Failure(TLSVerificationError(host, text))
