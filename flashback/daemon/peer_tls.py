"""Mutual TLS between two daemons with self-signed identities (INTERFACE §10.1, §11).

Both ends of a tunnel or a direct connection present a certificate; the
identity is the fingerprint of each daemon's self-signed certificate (§6.1),
never a CA's word. The owner is the TLS server and its certificate is
checked by fingerprint, by hand, right after the handshake (the requester
uses ``CERT_NONE``: there is no CA to ask).

The other direction needs a trick, because Python's ``ssl`` has no verify
callback: a server that asks for a client certificate *verifies* it, and a
self-signed one fails. So the requester presents a **client-auth
certificate** issued by :data:`OPEN_ISSUER` -- an issuer whose private key
is published right here, so it vouches for nothing -- that carries:

- the requester's own public key (the TLS handshake's CertificateVerify
  proves it holds the private key), and
- the DER of its self-signed identity certificate, in a private extension.

The owner's context trusts only the open issuer, so OpenSSL accepts any such
certificate; :func:`requester_fingerprint` then accepts the embedded
identity only if its public key is the one the handshake proved, and returns
that identity's fingerprint. Anybody can mint a client-auth certificate,
but only for a key they hold: the fingerprint is as strong as the key.
"""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass, field
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from flashback.daemon.keys import NO_EXPIRY, KeyPair, write_private
from flashback.protocol.fingerprint import fingerprint_of

ALPN: Final = "flashback/1"
#: the private extension that carries the identity certificate's DER (a UUID OID,
#: ITU-T X.667: needs no registration and collides with nobody's)
IDENTITY_OID: Final = ObjectIdentifier("2.25.166626303850629105851414375991041731600")
CLIENT_AUTH_FILE: Final = "client-auth.pem"
#: the biggest client certificate we parse (ours are well under 2 KiB)
MAX_CLIENT_CERT_BYTES: Final = 16 * 1024

_EPOCH: Final = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
# A fixed scalar: the open issuer is the same for every daemon, everywhere,
# and proves nothing -- see the module docstring.
_OPEN_ISSUER_KEY: Final = ec.derive_private_key(0x466C6173684261636B, ec.SECP256R1())
_OPEN_ISSUER_NAME: Final = x509.Name(
    [x509.NameAttribute(NameOID.COMMON_NAME, "flashback open issuer (vouches for nothing)")]
)
OPEN_ISSUER: Final = (
    x509.CertificateBuilder()
    .subject_name(_OPEN_ISSUER_NAME)
    .issuer_name(_OPEN_ISSUER_NAME)
    .public_key(_OPEN_ISSUER_KEY.public_key())
    .serial_number(1)
    .not_valid_before(_EPOCH)
    .not_valid_after(NO_EXPIRY)
    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    .sign(_OPEN_ISSUER_KEY, hashes.SHA256())
)
_OPEN_ISSUER_DER: Final = OPEN_ISSUER.public_bytes(serialization.Encoding.DER)


def client_auth_pem(identity_pem: bytes) -> bytes:
    """Key + client-auth certificate for the identity in *identity_pem*."""
    key = serialization.load_pem_private_key(identity_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the identity key is not an EC key")
    identity = x509.load_pem_x509_certificate(identity_pem)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(identity.subject)
        .issuer_name(_OPEN_ISSUER_NAME)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_EPOCH)
        .not_valid_after(NO_EXPIRY)
        .add_extension(
            x509.UnrecognizedExtension(
                IDENTITY_OID, identity.public_bytes(serialization.Encoding.DER)
            ),
            critical=False,
        )
        .sign(_OPEN_ISSUER_KEY, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem + certificate.public_bytes(serialization.Encoding.PEM)


def requester_fingerprint(der: bytes | None) -> str | None:
    """The identity fingerprint a client-auth certificate proves, or None.

    None for no certificate, one we cannot parse, one without the identity
    extension, or one whose embedded identity is for another key.
    """
    if not der or len(der) > MAX_CLIENT_CERT_BYTES:
        return None
    try:
        presented = x509.load_der_x509_certificate(der)
        embedded = presented.extensions.get_extension_for_oid(IDENTITY_OID).value
        if not isinstance(embedded, x509.UnrecognizedExtension):
            return None
        identity_der = embedded.value
        identity = x509.load_der_x509_certificate(identity_der)
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        encoding = serialization.Encoding.DER
        if presented.public_key().public_bytes(
            encoding, spki
        ) != identity.public_key().public_bytes(encoding, spki):
            return None
    except (ValueError, x509.ExtensionNotFound, TypeError):
        return None
    return fingerprint_of(identity_der)


def _spki(certificate: x509.Certificate) -> bytes:
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def owner_fingerprint(der: bytes | None) -> str:
    """The owner's fingerprint: of the self-signed certificate it served ("none" if none)."""
    return fingerprint_of(der) if der else "none"


@dataclass
class PeerTLS:
    """This daemon's two TLS contexts, built once from its identity."""

    keys: KeyPair
    _server: ssl.SSLContext | None = field(default=None, repr=False)
    _client: ssl.SSLContext | None = field(default=None, repr=False)

    def server_context(self) -> ssl.SSLContext:
        """As the owner: our identity certificate; a client certificate asked for."""
        if self._server is None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_3
            context.load_cert_chain(self.keys.path, self.keys.path)
            context.set_alpn_protocols([ALPN])
            # OPTIONAL, not REQUIRED: a requester without a certificate gets a
            # clear ``ERR forbidden`` inside TLS instead of a handshake alert
            context.verify_mode = ssl.CERT_OPTIONAL
            context.load_verify_locations(cadata=_OPEN_ISSUER_DER)
            self._server = context
        return self._server

    def client_context(self) -> ssl.SSLContext:
        """As the requester: our client-auth certificate; the owner checked by hand."""
        if self._client is None:
            path = self.keys.path.with_name(CLIENT_AUTH_FILE)
            write_private(path, client_auth_pem(self.keys.path.read_bytes()))
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.minimum_version = ssl.TLSVersion.TLSv1_3
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # self-signed: the fingerprint check is the proof
            context.set_alpn_protocols([ALPN])
            context.load_cert_chain(path, path)
            self._client = context
        return self._client


def plain_client_context() -> ssl.SSLContext:
    """A requester without a certificate (tests, and tools that only look)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols([ALPN])
    return context
