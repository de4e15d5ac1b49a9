"""The gateway's PKI (CA, server and client certificates) and the sandboxes' SSH host keys.

Certificates are ECDSA P-256 with SHA-256, as upstream made them, valid for a century. Upstream
reused whatever it found as long as it looked like PEM; :func:`reconcile_pki` reuses a bundle only
when :func:`validate_pki` finds nothing wrong with it (parsable, keys match, signed by the CA,
within validity, every SAN present), and otherwise generates a new one. Reuse is what keeps the
host-side mTLS files working across restarts, so a bundle is never rewritten when it is good.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from openshell_core.wire import contract

log = logging.getLogger("openshell.pki")

#: The server certificate's names, before any extra ones (seed spec 4.1).
DEFAULT_DNS_SANS: Final = (
    "openshell",
    "openshell.openshell.svc",
    "openshell.openshell.svc.cluster.local",
    "localhost",
    "host.docker.internal",
)
DEFAULT_IP_SANS: Final = ("127.0.0.1",)

VALIDITY: Final = datetime.timedelta(days=36525)
#: Allow for a clock that lags the machine that issued the certificates.
BACKDATE: Final = datetime.timedelta(days=1)

#: File name of each bundle field in a PKI directory.
FILES: Final = contract.PKI_FILES


@dataclass(frozen=True)
class PkiBundle:
    """Every PEM of one gateway's PKI. Keys are PKCS#8, unencrypted."""

    ca_cert: str
    ca_key: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str

    def __repr__(self) -> str:  # never put private keys in logs or tracebacks
        return f"PkiBundle(ca={fingerprint(self.ca_cert)[:16]}...)"


# -- generation ----------------------------------------------------------------------------------


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _general_name(text: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        return x509.DNSName(text)


def _san_names(extra_sans: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for raw in (*DEFAULT_DNS_SANS, *DEFAULT_IP_SANS, *extra_sans):
        text = raw.strip()
        if text and (name := _general_name(text)) not in names:
            names.append(name)
    return names


def _issue(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    usage: x509.ObjectIdentifier | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if not ca:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
            critical=False,
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signer, hashes.SHA256())


def generate_pki(extra_sans: Iterable[str] = ()) -> PkiBundle:
    """A new CA, server certificate (default SANs plus ``extra_sans``) and client certificate.

    :param extra_sans: host names or IP addresses (an IP when it parses as one, else DNS).
    """
    ca_key, server_key, client_key = _new_key(), _new_key(), _new_key()
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "openshell"),
            x509.NameAttribute(NameOID.COMMON_NAME, "openshell-ca"),
        ]
    )
    ca = _issue(ca_name, ca_key.public_key(), ca_name, ca_key, ca=True)
    server = _issue(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "openshell-server")]),
        server_key.public_key(),
        ca_name,
        ca_key,
        ca=False,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=_san_names(extra_sans),
    )
    client = _issue(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "openshell-client")]),
        client_key.public_key(),
        ca_name,
        ca_key,
        ca=False,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    return PkiBundle(
        ca_cert=_cert_pem(ca),
        ca_key=_key_pem(ca_key),
        server_cert=_cert_pem(server),
        server_key=_key_pem(server_key),
        client_cert=_cert_pem(client),
        client_key=_key_pem(client_key),
    )


# -- validation ----------------------------------------------------------------------------------


def _public_der(public: PublicKeyTypes) -> bytes:
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def validate_pki(
    bundle: PkiBundle,
    extra_sans: Iterable[str] = (),
    *,
    now: datetime.datetime | None = None,
) -> list[str]:
    """What is wrong with ``bundle`` (empty when nothing is): one sentence per problem."""
    now = now or datetime.datetime.now(datetime.UTC)
    problems: list[str] = []
    certs: dict[str, x509.Certificate] = {}
    for role in ("ca", "server", "client"):
        cert = _check_pair(bundle, role, now, problems)
        if cert is not None:
            certs[role] = cert
    if "ca" in certs:
        _check_issued(certs, problems)
    if "server" in certs:
        _check_sans(certs["server"], extra_sans, problems)
    return problems


def _check_pair(
    bundle: PkiBundle, role: str, now: datetime.datetime, problems: list[str]
) -> x509.Certificate | None:
    """Parse one certificate and its key, check that they match and that the dates hold."""
    cert_file, key_file = FILES[f"{role}_cert"], FILES[f"{role}_key"]
    try:
        cert = x509.load_pem_x509_certificate(getattr(bundle, f"{role}_cert").encode())
    except ValueError:
        problems.append(f"{cert_file} is not a PEM certificate")
        return None
    try:
        key = serialization.load_pem_private_key(
            getattr(bundle, f"{role}_key").encode(), password=None
        )
    except (ValueError, TypeError):
        problems.append(f"{key_file} is not an unencrypted PEM private key")
    else:
        if _public_der(key.public_key()) != _public_der(cert.public_key()):
            problems.append(f"{key_file} does not belong to {cert_file}")
    if cert.not_valid_after_utc < now:
        problems.append(f"{cert_file} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if cert.not_valid_before_utc > now:
        problems.append(f"{cert_file} is not valid before {cert.not_valid_before_utc:%Y-%m-%d}")
    return cert


def _check_issued(certs: dict[str, x509.Certificate], problems: list[str]) -> None:
    ca = certs["ca"]
    try:
        is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        problems.append(f"{contract.CA_CERT_FILE} is not a CA certificate")
    for role in ("server", "client"):
        issued = certs.get(role)
        if issued is None:
            continue
        try:
            issued.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            problems.append(f"{FILES[role + '_cert']} is not signed by {contract.CA_CERT_FILE}")


def _check_sans(server: x509.Certificate, extra_sans: Iterable[str], problems: list[str]) -> None:
    try:
        present = list(server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        present = []
    missing = [str(name.value) for name in _san_names(extra_sans) if name not in present]
    if missing:
        problems.append(f"{contract.SERVER_CERT_FILE} lacks the names " + ", ".join(missing))


# -- files ---------------------------------------------------------------------------------------


def load_pki(directory: Path | str) -> PkiBundle | None:
    """The bundle in ``directory``, or None when any of its six files is missing.

    Contents are not checked here (see :func:`validate_pki`); undecodable bytes become U+FFFD so
    that validation reports them.
    """
    directory = Path(directory)
    values: dict[str, str] = {}
    for field, name in FILES.items():
        try:
            values[field] = (directory / name).read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return None
    return PkiBundle(**values)


def write_pki(directory: Path | str, bundle: PkiBundle) -> None:
    """Write the six files (keys 0600, certificates 0644, directory 0700) all at once.

    The files go into a temporary sibling directory that then replaces ``directory`` by rename, so
    a reader never sees a mix of two bundles and a crash never leaves half a bundle in place.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.new-", dir=directory.parent))
    try:
        for field in fields(PkiBundle):
            name = FILES[field.name]
            mode = 0o600 if name.endswith(".key") else 0o644
            descriptor = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(getattr(bundle, field.name))
                handle.flush()
                os.fsync(handle.fileno())
        staging.chmod(0o700)
        if directory.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            directory.rename(retired / directory.name)
            staging.rename(directory)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(directory)
        _fsync_dir(directory.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def reconcile_pki(directory: Path | str, extra_sans: Iterable[str] = ()) -> tuple[PkiBundle, bool]:
    """Reuse the bundle in ``directory`` when it is complete and valid, else generate and write one.

    :returns: ``(bundle, rotated)``; ``rotated`` is True when a new bundle was written.
    """
    extra = tuple(extra_sans)
    existing = load_pki(directory)
    if existing is not None:
        problems = validate_pki(existing, extra)
        if not problems:
            log.info("Reusing existing TLS certificates")
            return existing, False
        reason = "; ".join(problems)
    else:
        reason = "no complete bundle found"
    log.info("Cannot reuse existing TLS certificates (%s): generating new PKI", reason)
    bundle = generate_pki(extra)
    write_pki(directory, bundle)
    return bundle, True


def fingerprint(cert_pem: str) -> str:
    """SHA-256 of the certificate's DER encoding, lowercase hex."""
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


# -- SSH host keys -------------------------------------------------------------------------------


def generate_ssh_host_key() -> tuple[str, str]:
    """A new Ed25519 host key: ``(OpenSSH private key PEM, "ssh-ed25519 AAAA..." public line)``."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    return private, ssh_public_line(private)


def ssh_public_line(private_key: str) -> str:
    """The ``type base64`` public line of an OpenSSH private key."""
    key = serialization.load_ssh_private_key(private_key.encode(), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def ssh_fingerprint(public_line: str) -> str:
    """``SHA256:...`` of a public key line (``type base64 [comment]``), as ``ssh-keygen -l``."""
    parts = public_line.split()
    if len(parts) < 2:
        raise ValueError(f"not an SSH public key line: {public_line!r}")
    blob = base64.b64decode(parts[1], validate=True)
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"
