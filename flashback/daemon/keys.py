"""The daemon's long-term key pair and self-signed certificate (INTERFACE §6.1).

ECDSA P-256: Python's ``ssl`` (OpenSSL 3.0 here) completes a TLS 1.3
handshake through ``trio.SSLStream`` with it at both ends -- as it does with
Ed25519 -- and ``ecdsa_secp256r1_sha256`` is the signature scheme every TLS
1.3 stack must implement (RFC 8446 §9.1), so no build of OpenSSL or LibreSSL
a peer runs can lack it. Key and certificate live in one PEM file, written
atomically: a crash never leaves a key without its certificate, and
``ssl.SSLContext.load_cert_chain`` reads it as is.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flashback.errors import ConfigError
from flashback.protocol.fingerprint import fingerprint_of

KEY_FILE: Final = "identity.pem"
MAX_KEY_FILE_BYTES: Final = 64 * 1024
# RFC 5280 §4.1.2.5: "no well-defined expiration date". Peers pin the
# fingerprint; a date that runs out would only change it.
NO_EXPIRY: Final = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


@dataclass(frozen=True)
class KeyPair:
    """Where the PEM file is, and the certificate's DER and fingerprint."""

    path: Path
    certificate_der: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.certificate_der)


def generate_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flashback peer")])
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))  # a peer's clock a bit behind
        .not_valid_after(NO_EXPIRY)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem + certificate.public_bytes(serialization.Encoding.PEM)


def parse_pem(data: bytes) -> bytes:
    """The certificate's DER, after checking the key and the certificate belong together."""
    key = serialization.load_pem_private_key(data, password=None)
    certificate = x509.load_pem_x509_certificate(data)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if key.public_key().public_bytes(encoding, public) != certificate.public_key().public_bytes(
        encoding, public
    ):
        raise ValueError("the certificate is not for this key")
    return certificate.public_bytes(serialization.Encoding.DER)


def write_private(path: Path, data: bytes) -> None:
    """Write *data* to *path* atomically, mode 0600 from the first byte on."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an old tmp file may have had other bits
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def load_or_create(directory: Path) -> KeyPair:
    """The key pair in *directory*, made on first use.

    An unreadable or damaged file is a configuration error, never silently
    replaced: a new key would be a new fingerprint every peer refuses.
    """
    path = directory / KEY_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        write_private(path, generate_pem())
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(f"cannot read the identity key {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as file:
        if os.fstat(file.fileno()).st_mode & 0o077:
            os.fchmod(file.fileno(), 0o600)
        data = file.read(MAX_KEY_FILE_BYTES + 1)
    try:
        if len(data) > MAX_KEY_FILE_BYTES:
            raise ValueError("file too large")
        der = parse_pem(data)
    except ValueError as exc:
        raise ConfigError(
            f"the identity key {path} is damaged ({exc}); move it away to start a new identity"
        ) from None
    return KeyPair(path, der)
