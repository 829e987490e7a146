"""Key material on disk: the ed25519 signing key and the TLS certificate, generated once, atomically."""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import string
import tempfile
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from signedjson.key import (
    decode_signing_key_base64,
    encode_signing_key_base64,
    encode_verify_key_base64,
    generate_signing_key,
    get_verify_key,
)
from signedjson.types import SigningKey

#: Self-signed certificates are valid this long.
SELF_SIGNED_VALIDITY = datetime.timedelta(days=3650)

_KEY_VERSION_CHARS = string.ascii_letters + string.digits


class KeyFileError(Exception):
    """A key or certificate file is unreadable or malformed; ``str()`` is one line."""


def atomic_write(path: str, data: bytes, mode: int = 0o600, *, replace: bool = False) -> bool:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, rename.

    The file is created with ``mode`` from the start (never briefly world-readable).

    :param replace: overwrite an existing file; otherwise an existing file is kept.
    :returns: ``True`` if we wrote the file, ``False`` if (without ``replace``) it already
        existed, e.g. created by a concurrent start.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if the file exists: never clobber a key
            except FileExistsError:
                return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return True


def key_id(signing_key: SigningKey) -> str:
    """:returns: the key id, e.g. ``ed25519:a_Xy12``."""
    return f"{signing_key.alg}:{signing_key.version}"


def verify_key_base64(signing_key: SigningKey) -> str:
    """:returns: the unpadded base64 public key of ``signing_key``."""
    return encode_verify_key_base64(get_verify_key(signing_key))


def new_key_version() -> str:
    """:returns: a fresh random key version matching ``[a-zA-Z0-9_]`` (spec: key ids)."""
    return "fs_" + "".join(secrets.choice(_KEY_VERSION_CHARS) for _ in range(6))


def read_signing_key(path: str) -> SigningKey:
    """Read the first ed25519 key from a file of ``ed25519 VERSION BASE64`` lines.

    :raises KeyFileError: if the file cannot be read or holds no valid ed25519 key.
    """
    try:
        with open(path, encoding="ascii") as f:
            lines = [ln.split() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"cannot read signing key {path}: {getattr(e, 'strerror', None) or e}") from None
    for parts in lines:
        if len(parts) != 3 or parts[0] != "ed25519":
            raise KeyFileError(f"signing key {path}: expected 'ed25519 VERSION BASE64' lines")
        alg, version, b64 = parts
        if not version or not all(c in _KEY_VERSION_CHARS + "_" for c in version):
            raise KeyFileError(f"signing key {path}: key version {version!r} must match [a-zA-Z0-9_]")
        try:
            return decode_signing_key_base64(alg, version, b64)
        except Exception:
            raise KeyFileError(f"signing key {path}: not a valid ed25519 seed") from None
    raise KeyFileError(f"signing key {path} holds no key")


def load_or_generate_signing_key(path: str) -> tuple[SigningKey, bool]:
    """Load the signing key at ``path``, generating and saving one (mode 0600) if missing.

    :returns: ``(key, generated)``.
    :raises KeyFileError: if an existing file is malformed (it is never overwritten).
    """
    if not os.path.exists(path):
        key = generate_signing_key(new_key_version())
        line = f"{key.alg} {key.version} {encode_signing_key_base64(key)}\n".encode("ascii")
        if atomic_write(path, line, 0o600):
            return key, True
    return read_signing_key(path), False


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the TLS certificate and key, and whether we just generated them."""

    certificate_path: str
    private_key_path: str
    generated: bool
    fingerprint_sha256: str


def self_signed_certificate(host: str, key: ec.EllipticCurvePrivateKey | None = None) -> tuple[bytes, bytes]:
    """Make a self-signed certificate for ``host`` (a DNS name or an IP literal).

    Subject CN and subjectAltName are ``host`` (an IP SAN for IP literals).

    :returns: ``(certificate_pem, private_key_pem)``.
    """
    key = key or ec.generate_private_key(ec.SECP256R1())
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        san = x509.DNSName(host)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + SELF_SIGNED_VALIDITY)
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def load_or_generate_tls(certificate_path: str, private_key_path: str, host: str) -> TlsFiles:
    """Make sure a usable TLS certificate and key exist, generating a self-signed pair if
    both are missing (or only the certificate, from the existing key).

    :param host: the server name's host, used for CN and subjectAltName.
    :raises KeyFileError: if only the certificate exists, or the files are unreadable,
        malformed or do not belong together.
    """
    have_cert, have_key = os.path.exists(certificate_path), os.path.exists(private_key_path)
    generated = False
    if not have_cert:
        if have_key:
            key = _load_private_key(private_key_path)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise KeyFileError(
                    f"TLS certificate {certificate_path} is missing and its key {private_key_path} "
                    "is not an EC key we can self-sign with; provide the certificate"
                )
            cert_pem, _ = self_signed_certificate(host, key)
        else:
            cert_pem, key_pem = self_signed_certificate(host)
            atomic_write(private_key_path, key_pem, 0o600)
        atomic_write(certificate_path, cert_pem, 0o644)
        generated = True
    elif not have_key:
        raise KeyFileError(f"TLS certificate {certificate_path} exists but its key {private_key_path} does not")
    cert = _load_certificate(certificate_path)
    key = _load_private_key(private_key_path)
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(serialization.Encoding.DER, pub) != key.public_key().public_bytes(
        serialization.Encoding.DER, pub
    ):
        raise KeyFileError(f"TLS key {private_key_path} does not match certificate {certificate_path}")
    return TlsFiles(certificate_path, private_key_path, generated, cert.fingerprint(hashes.SHA256()).hex())


def _load_certificate(path: str) -> x509.Certificate:
    try:
        with open(path, "rb") as f:
            return x509.load_pem_x509_certificate(f.read())
    except OSError as e:
        raise KeyFileError(f"cannot read TLS certificate {path}: {e.strerror or e}") from None
    except ValueError:
        raise KeyFileError(f"TLS certificate {path} is not a PEM certificate") from None


def _load_private_key(path: str):  # -> PrivateKeyTypes
    try:
        with open(path, "rb") as f:
            return serialization.load_pem_private_key(f.read(), password=None)
    except OSError as e:
        raise KeyFileError(f"cannot read TLS key {path}: {e.strerror or e}") from None
    except (ValueError, TypeError):
        raise KeyFileError(f"TLS key {path} is not an unencrypted PEM private key") from None
