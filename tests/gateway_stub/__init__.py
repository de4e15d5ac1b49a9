"""The stub gateway image the lifecycle tests deploy, until the reference gateway exists.

:func:`build_stub_images` builds three tags from ``stub.py`` on the base image, each with its own
PKI bundle baked in (made here with ``cryptography``): ``test1`` and ``test2`` (two images for the
image-change cases: whichever PKI the volume holds must win) and ``broken`` (exits at start).
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import tarfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from openshell_core import labels
from openshell_core.engine import Engine

HERE = Path(__file__).parent
REPOSITORY = "openshell-gateway-stub"


@dataclass(frozen=True)
class StubImages:
    test1: str = f"{REPOSITORY}:test1"
    test2: str = f"{REPOSITORY}:test2"
    broken: str = f"{REPOSITORY}:broken"

    @property
    def all(self) -> tuple[str, ...]:
        return (self.test1, self.test2, self.broken)


def build_stub_images(engine: Engine, base_image: str) -> StubImages:
    images = StubImages()
    for ref, variant, fail in (
        (images.test1, "test1", ""),
        (images.test2, "test2", ""),
        (images.broken, "broken", "exit"),
    ):
        context = _context(make_pki(variant))
        for _ in engine.build_image(
            context,
            ref=ref,
            labels={labels.BUILT_BY: labels.MANAGER},
            buildargs={"BASE_IMAGE": base_image, "VARIANT": variant, "FAIL": fail},
        ):
            pass
    return images


def make_pki(variant: str) -> dict[str, bytes]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"stub CA {variant}")])
    ca = (
        _builder(ca_name, ca_name, ca_key, now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    bundle = {"ca.crt": _pem(ca), "ca.key": _key_pem(ca_key)}
    for role, usage, sans in (
        (
            "server",
            ExtendedKeyUsageOID.SERVER_AUTH,
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
        ),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("openshell-client")]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"stub {role} {variant}")])
        cert = (
            _builder(subject, ca_name, key, now)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        bundle[f"{role}.crt"] = _pem(cert)
        bundle[f"{role}.key"] = _key_pem(key)
    return bundle


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, now: datetime.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _context(pki: dict[str, bytes]) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        files = {
            "Dockerfile": (HERE / "Dockerfile").read_bytes(),
            "stub.py": (HERE / "stub.py").read_bytes(),
            **{f"pki/{name}": data for name, data in pki.items()},
        }
        for name, data in sorted(files.items()):
            entry = tarfile.TarInfo(name)
            entry.size = len(data)
            entry.mode = 0o644
            archive.addfile(entry, io.BytesIO(data))
    buffer.seek(0)
    return buffer
