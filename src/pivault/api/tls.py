"""A self-signed certificate for local use (``pivault dev-cert``).

Only for trying the service on one machine: clients must be told to trust
this exact certificate (``curl --cacert cert.pem``); production uses a
certificate from the organisation's CA. The key is written mode 0600.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from pivault.errors import ConfigError, ValidationError

__all__ = ["DevCert", "make_dev_cert"]


@dataclass(frozen=True)
class DevCert:
    certfile: Path
    keyfile: Path
    not_after: _dt.datetime


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


DEFAULT_HOSTS: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")


def make_dev_cert(directory: str | os.PathLike[str], *, hosts: tuple[str, ...] = DEFAULT_HOSTS,
                  days: int = 30, overwrite: bool = False) -> DevCert:
    """Write ``cert.pem`` and ``key.pem`` (ECDSA P-256, SAN = ``hosts``) into ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not 1 <= days <= 397:  # before anything is made
        raise ValidationError("tls.days", "a development certificate lives 1 to 397 days")
    d = Path(directory)
    certfile, keyfile = d / "cert.pem", d / "key.pem"
    if not overwrite and (certfile.exists() or keyfile.exists()):
        raise ConfigError(f"{certfile} or {keyfile} exists; it is never overwritten silently",
                          code="tls.exists", hint="pass --force to replace the pair")
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pivault local development"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pivault dev-cert")])
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = _dt.datetime.now(_dt.UTC)
    not_after = now + _dt.timedelta(days=days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        # a self-signed leaf that clients trust directly: CA:TRUE lets strict
        # verifiers (OpenSSL 3) accept it as its own trust anchor
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(keyfile, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()), 0o600)
    _write(certfile, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return DevCert(certfile, keyfile, not_after)
