"""
A throw-away certificate authority for TLS tests, made with
C{cryptography}: EC keys, so that generating it takes milliseconds; built
once per process and cached.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["ServerCertificate", "PKI", "sharedPKI"]

_DAY = datetime.timedelta(days=1)


def _name(commonName: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class _Authority:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, commonName: str, now: datetime.datetime) -> _Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(commonName))
            .issuer_name(_name(commonName))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    def issue(
        self, names: list[str], notBefore: datetime.datetime, notAfter: datetime.datetime
    ) -> ServerCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        alternatives: list[x509.GeneralName] = []
        for name in names:
            try:
                alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alternatives.append(x509.DNSName(name))
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(notBefore)
            .not_valid_after(notAfter)
            .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return ServerCertificate(_pem(key) + certificate.public_bytes(serialization.Encoding.PEM))

    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class ServerCertificate:
    """
    A server's key and certificate, as one PEM blob.
    """

    pem: bytes

    def write(self, directory: str, name: str) -> str:
        """
        Write the PEM to C{directory}/C{name}.pem; returns the path.
        """
        path = os.path.join(directory, f"{name}.pem")
        with open(path, "wb") as f:
            f.write(self.pem)
        return path

    def serverDescription(self, directory: str, name: str) -> str:
        """
        A Twisted ``ssl:`` server endpoint string for this certificate on an
        ephemeral port of 127.0.0.1.
        """
        path = self.write(directory, name)
        return f"ssl:0:interface=127.0.0.1:privateKey={path}:certKey={path}"


@dataclass(frozen=True)
class PKI:
    """
    A trusted CA (whose certificate the client gets as its trust root), an
    unrelated CA, and server certificates: valid for ``localhost`` and
    127.0.0.1, expired, issued for another name, and issued by the
    unrelated CA.
    """

    caPEM: bytes
    good: ServerCertificate
    expired: ServerCertificate
    wrongHost: ServerCertificate
    untrusted: ServerCertificate

    def writeCA(self, directory: str) -> str:
        """
        Write the trusted CA's certificate; returns the path.
        """
        path = os.path.join(directory, "ca.pem")
        with open(path, "wb") as f:
            f.write(self.caPEM)
        return path


@functools.cache
def sharedPKI() -> PKI:
    """
    The process-wide test PKI (generated on first use).
    """
    now = datetime.datetime.now(datetime.UTC)
    trusted = _Authority.create("sprites-twisted test CA", now)
    other = _Authority.create("some other CA", now)
    return PKI(
        caPEM=trusted.pem(),
        good=trusted.issue(["localhost", "127.0.0.1"], now - _DAY, now + _DAY),
        expired=trusted.issue(["localhost", "127.0.0.1"], now - 10 * _DAY, now - _DAY),
        wrongHost=trusted.issue(["wrong.example"], now - _DAY, now + _DAY),
        untrusted=other.issue(["localhost", "127.0.0.1"], now - _DAY, now + _DAY),
    )
