"""PKI generation, validation, reuse-or-generate, files on disk, and SSH host keys."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from openshell_core import pki
from openshell_core.pki import (
    FILES,
    PkiBundle,
    fingerprint,
    generate_pki,
    generate_ssh_host_key,
    load_pki,
    reconcile_pki,
    ssh_fingerprint,
    ssh_public_line,
    validate_pki,
    write_pki,
)


@pytest.fixture(scope="module")
def bundle() -> PkiBundle:
    return generate_pki(["gw.example", "198.18.0.7"])


@pytest.fixture(scope="module")
def other() -> PkiBundle:
    return generate_pki()


def sans(cert_pem: str) -> tuple[list[str], list[str]]:
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        names.get_values_for_type(x509.DNSName),
        [str(ip) for ip in names.get_values_for_type(x509.IPAddress)],
    )


def subject(cert_pem: str) -> str:
    return x509.load_pem_x509_certificate(cert_pem.encode()).subject.rfc4514_string()


def test_generated_bundle_is_valid(bundle: PkiBundle) -> None:
    assert validate_pki(bundle, ["gw.example", "198.18.0.7"]) == []


def test_subjects_follow_upstream(bundle: PkiBundle) -> None:
    assert subject(bundle.ca_cert) == "CN=openshell-ca,O=openshell"
    assert subject(bundle.server_cert) == "CN=openshell-server"
    assert subject(bundle.client_cert) == "CN=openshell-client"


def test_keys_are_ecdsa_p256_and_signatures_sha256(bundle: PkiBundle) -> None:
    for pem in (bundle.ca_cert, bundle.server_cert, bundle.client_cert):
        cert = x509.load_pem_x509_certificate(pem.encode())
        public = cert.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert public.curve.name == "secp256r1"
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert bundle.server_key.startswith("-----BEGIN PRIVATE KEY-----")


def test_server_certificate_carries_default_and_extra_sans(bundle: PkiBundle) -> None:
    dns, ips = sans(bundle.server_cert)
    assert dns == [
        "openshell",
        "openshell.openshell.svc",
        "openshell.openshell.svc.cluster.local",
        "localhost",
        "host.docker.internal",
        "gw.example",
    ]
    assert ips == ["127.0.0.1", "198.18.0.7"]


def test_certificates_are_valid_for_decades(bundle: PkiBundle) -> None:
    cert = x509.load_pem_x509_certificate(bundle.server_cert.encode())
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=365 * 50)
    assert cert.not_valid_after_utc > later


def test_python_tls_accepts_the_bundle_for_mutual_tls(bundle: PkiBundle, tmp_path: Path) -> None:
    write_pki(tmp_path / "pki", bundle)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "pki/server.crt", tmp_path / "pki/server.key")
    server.load_verify_locations(tmp_path / "pki/ca.crt")
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(cafile=tmp_path / "pki/ca.crt")
    client.load_cert_chain(tmp_path / "pki/client.crt", tmp_path / "pki/client.key")
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    back_in, back_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(back_in, outgoing, server_hostname="localhost")
    server_side = server.wrap_bio(incoming, back_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, side in (("client", client_side), ("server", server_side)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        incoming.write(outgoing.read())
        back_in.write(back_out.read())
        if all(done.values()):
            break
    assert all(done.values())
    peer = server_side.getpeercert()
    assert peer is not None
    assert peer["subject"] == ((("commonName", "openshell-client"),),)


def test_validate_reports_a_corrupt_certificate(bundle: PkiBundle) -> None:
    broken = dataclasses.replace(bundle, server_cert="-----BEGIN CERTIFICATE-----\nxx\n")
    assert validate_pki(broken) == ["server.crt is not a PEM certificate"]


def test_validate_reports_a_key_that_belongs_to_another_certificate(
    bundle: PkiBundle, other: PkiBundle
) -> None:
    mixed = dataclasses.replace(bundle, client_key=other.client_key)
    assert validate_pki(mixed, ["gw.example", "198.18.0.7"]) == [
        "client.key does not belong to client.crt"
    ]


def test_validate_reports_a_certificate_signed_by_another_ca(
    bundle: PkiBundle, other: PkiBundle
) -> None:
    mixed = dataclasses.replace(bundle, server_cert=other.server_cert, server_key=other.server_key)
    assert validate_pki(mixed) == ["server.crt is not signed by ca.crt"]


def test_validate_reports_expired_certificates(bundle: PkiBundle) -> None:
    much_later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=365 * 200)
    problems = validate_pki(bundle, now=much_later)
    assert len(problems) == 3
    assert all("expired" in problem for problem in problems)


def test_validate_reports_missing_sans(other: PkiBundle) -> None:
    assert validate_pki(other, ["gw.example", "10.1.2.3"]) == [
        "server.crt lacks the names gw.example, 10.1.2.3"
    ]


def test_sans_given_twice_or_blank_count_once(tmp_path: Path) -> None:
    made = generate_pki(["localhost", " ", "127.0.0.1", "extra"])
    dns, ips = sans(made.server_cert)
    assert dns.count("localhost") == 1
    assert ips == ["127.0.0.1"]
    assert "extra" in dns


def test_write_pki_sets_modes(bundle: PkiBundle, tmp_path: Path) -> None:
    target = tmp_path / "state" / "pki"
    write_pki(target, bundle)
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    for name in FILES.values():
        mode = stat.S_IMODE((target / name).stat().st_mode)
        assert mode == (0o600 if name.endswith(".key") else 0o644), name


def test_write_then_load_round_trips(bundle: PkiBundle, tmp_path: Path) -> None:
    write_pki(tmp_path / "pki", bundle)
    assert load_pki(tmp_path / "pki") == bundle


def test_write_replaces_a_bundle_leaving_no_staging_behind(
    bundle: PkiBundle, other: PkiBundle, tmp_path: Path
) -> None:
    write_pki(tmp_path / "pki", bundle)
    (tmp_path / "pki" / "stray").write_text("x")
    write_pki(tmp_path / "pki", other)
    assert load_pki(tmp_path / "pki") == other
    assert sorted(path.name for path in tmp_path.iterdir()) == ["pki"]
    assert not (tmp_path / "pki" / "stray").exists()


def test_load_returns_none_when_a_file_is_missing(bundle: PkiBundle, tmp_path: Path) -> None:
    write_pki(tmp_path / "pki", bundle)
    (tmp_path / "pki" / "client.key").unlink()
    assert load_pki(tmp_path / "pki") is None


def test_reconcile_generates_when_nothing_is_there(tmp_path: Path) -> None:
    made, rotated = reconcile_pki(tmp_path / "pki")
    assert rotated
    assert load_pki(tmp_path / "pki") == made


def test_reconcile_reuses_a_valid_bundle_keeping_fingerprints(tmp_path: Path) -> None:
    first, _ = reconcile_pki(tmp_path / "pki", ["gw.example"])
    before = {name: (tmp_path / "pki" / name).stat().st_mtime_ns for name in FILES.values()}
    again, rotated = reconcile_pki(tmp_path / "pki", ["gw.example"])
    assert not rotated
    assert fingerprint(again.ca_cert) == fingerprint(first.ca_cert)
    assert fingerprint(again.server_cert) == fingerprint(first.server_cert)
    assert fingerprint(again.client_cert) == fingerprint(first.client_cert)
    after = {name: (tmp_path / "pki" / name).stat().st_mtime_ns for name in FILES.values()}
    assert after == before


def test_reconcile_regenerates_a_corrupt_bundle(tmp_path: Path) -> None:
    first, _ = reconcile_pki(tmp_path / "pki")
    (tmp_path / "pki" / "ca.crt").write_bytes(b"\xff\xfe garbage")
    again, rotated = reconcile_pki(tmp_path / "pki")
    assert rotated
    assert fingerprint(again.ca_cert) != fingerprint(first.ca_cert)
    assert validate_pki(load_pki(tmp_path / "pki")) == []  # type: ignore[arg-type]


def test_reconcile_regenerates_a_mismatched_bundle(other: PkiBundle, tmp_path: Path) -> None:
    reconcile_pki(tmp_path / "pki")
    (tmp_path / "pki" / "server.key").write_text(other.server_key)
    _, rotated = reconcile_pki(tmp_path / "pki")
    assert rotated


def test_reconcile_regenerates_an_expired_bundle(tmp_path: Path) -> None:
    expired = _expired_bundle()
    assert any("expired" in problem for problem in validate_pki(expired))
    write_pki(tmp_path / "pki", expired)
    again, rotated = reconcile_pki(tmp_path / "pki")
    assert rotated
    assert again != expired


def test_reconcile_regenerates_when_a_requested_san_is_missing(tmp_path: Path) -> None:
    reconcile_pki(tmp_path / "pki")
    again, rotated = reconcile_pki(tmp_path / "pki", ["new.example"])
    assert rotated
    assert "new.example" in sans(again.server_cert)[0]


def test_fingerprint_is_sha256_of_der(bundle: PkiBundle) -> None:
    cert = x509.load_pem_x509_certificate(bundle.ca_cert.encode())
    assert fingerprint(bundle.ca_cert) == cert.fingerprint(hashes.SHA256()).hex()


def test_bundle_repr_shows_no_key_material(bundle: PkiBundle) -> None:
    assert "PRIVATE" not in repr(bundle)


def test_host_key_is_openssh_ed25519(tmp_path: Path) -> None:
    private, public = generate_ssh_host_key()
    assert private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert public.startswith("ssh-ed25519 ")
    assert ssh_public_line(private) == public


def test_host_key_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    private, public = generate_ssh_host_key()
    (tmp_path / "key").write_text(private)
    (tmp_path / "key").chmod(0o600)
    (tmp_path / "key.pub").write_text(public + " comment\n")
    listed = subprocess.run(
        ["ssh-keygen", "-lf", str(tmp_path / "key.pub")], capture_output=True, text=True, check=True
    ).stdout.split()
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(tmp_path / "key")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert listed[1] == ssh_fingerprint(public)
    assert derived[:2] == public.split()


def test_ssh_fingerprint_refuses_a_line_without_a_key() -> None:
    with pytest.raises(ValueError, match="not an SSH public key"):
        ssh_fingerprint("ssh-ed25519")


def _expired_bundle() -> PkiBundle:
    """A bundle that is right in every way but its dates."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "openshell-ca")])
    start = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
    end = datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC)

    def issue(
        subject_name: x509.Name,
        public: ec.EllipticCurvePublicKey,
        ca: bool,
        sans: list[x509.GeneralName] | None = None,
    ) -> str:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject_name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), False)
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()

    def pem(private: ec.EllipticCurvePrivateKey) -> str:
        return private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()

    server_key = ec.generate_private_key(ec.SECP256R1())
    client_key = ec.generate_private_key(ec.SECP256R1())
    all_sans: list[x509.GeneralName] = [x509.DNSName(n) for n in pki.DEFAULT_DNS_SANS]
    all_sans += [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "openshell-server")])
    client_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "openshell-client")])
    return PkiBundle(
        ca_cert=issue(name, key.public_key(), True),
        ca_key=pem(key),
        server_cert=issue(server_name, server_key.public_key(), False, sans=all_sans),
        server_key=pem(server_key),
        client_cert=issue(client_name, client_key.public_key(), False),
        client_key=pem(client_key),
    )


def test_expired_fixture_is_only_expired() -> None:
    problems = validate_pki(_expired_bundle())
    assert problems == [
        "ca.crt expired on 2001-01-01",
        "server.crt expired on 2001-01-01",
        "client.crt expired on 2001-01-01",
    ]


def test_paths_may_be_strings(bundle: PkiBundle, tmp_path: Path) -> None:
    write_pki(str(tmp_path / "pki"), bundle)
    assert load_pki(str(tmp_path / "pki")) == bundle
