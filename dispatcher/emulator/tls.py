"""HTTPS workers under a root CA shaped like Vast's (``jvastai_root.cer``).

Vast's workers serve HTTPS with certificates under Vast's own root, which carries a
path-length constraint but no key usage extension. OpenSSL's strict mode
(``VERIFY_X509_STRICT``: Python 3.13+ and urllib3 2.x on 3.13+ turn it on) rejects such
a chain with "Path length given without key usage keyCertSign"; Vast's client clears
that one flag. This root is made the same way so that a dispatcher's TLS context can be
tested against it on any Python: everything else (critical basic constraints, key
identifiers, the leaf's usages and its IP address) is what strict mode wants, so the
root's shape is the only thing strict mode objects to.

EC keys, made once per emulator (the root) and once per worker (its leaf): about a
millisecond each. The files live in a temporary folder removed when the emulator stops.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT_PATH_LENGTH = 1
VALIDITY = datetime.timedelta(days=30)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Vast emulator"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class WorkerTLS:
    """The root CA of one emulator and the server contexts of its HTTPS workers."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="vast-emulator-tls-"))
        self._key = ec.generate_private_key(ec.SECP256R1())
        start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
        public = self._key.public_key()
        self._ski = x509.SubjectKeyIdentifier.from_public_key(public)
        name = _name("Vast emulator root CA (shaped like jvastai_root.cer)")
        self.root = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(public).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + VALIDITY)
            # Vast's shape: CA with a path length, and no KeyUsage extension at all.
            .add_extension(x509.BasicConstraints(ca=True, path_length=ROOT_PATH_LENGTH),
                           critical=True)
            .add_extension(self._ski, critical=False)
            .sign(self._key, hashes.SHA256()))
        self.ca_pem: bytes = self.root.public_bytes(serialization.Encoding.PEM)
        self.ca_path = self._dir / "ca.pem"
        self.ca_path.write_bytes(self.ca_pem)

    def server_context(self, name: str, ip: str = "127.0.0.1") -> ssl.SSLContext:
        """A TLS server context with a new leaf certificate for ``ip``, under the root."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
        cert = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(self.root.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + VALIDITY)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                self._ski), critical=False)
            .sign(self._key, hashes.SHA256()))
        stem = self._dir / f"leaf-{cert.serial_number:x}"
        cert_file, key_file = stem.with_suffix(".crt"), stem.with_suffix(".key")
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(_pem_key(key))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file, key_file)
        return ctx

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
