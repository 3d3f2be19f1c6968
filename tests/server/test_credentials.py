"""Test-federation credentials: the CA really signs the server certificate; node keys are what Flower reads."""

import ipaddress

import pytest
from cryptography import x509

from server.credentials import (
    CredentialsError,
    check_private_key,
    check_public_key,
    make_node_keys,
    make_test_certificates,
)
from server.deployment import DeploymentError, SuperLinkSettings, split_address, write_connection


def test_server_certificate_is_signed_by_the_ca_for_the_hosts_the_nodes_dial(tmp_path):
    files = make_test_certificates(tmp_path, hosts=["fl.example.org", "10.0.0.5"])
    ca = x509.load_pem_x509_certificate(files.ca_certificate.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_certificate.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # the names the nodes dial, and loopback: `fedge server` registers the allow-list over 127.0.0.1
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("127.0.0.1"),
    ]
    assert (tmp_path / "server.key").stat().st_mode & 0o077 == 0, "private keys are not world-readable"


def test_node_keys_are_openssh_ecdsa_pairs(tmp_path):
    (key,) = make_node_keys(tmp_path, ["hospital-a"])
    assert check_private_key(key.private) == key.private
    assert check_public_key(key.public) == key.public
    assert key.public.read_text().startswith("ecdsa-sha2-nistp384 ")
    with pytest.raises(CredentialsError, match="file name"):
        make_node_keys(tmp_path, ["../evil"])


def test_rejects_keys_flower_cannot_use(tmp_path):
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    with pytest.raises(CredentialsError, match="not an OpenSSH public key"):
        check_public_key(bad)
    with pytest.raises(CredentialsError, match="does not exist"):
        check_private_key(tmp_path / "missing.key")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    edf = tmp_path / "ed.pub"
    edf.write_bytes(ed.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    with pytest.raises(CredentialsError, match="elliptic-curve"):
        check_public_key(edf)


def test_superlink_refuses_to_start_without_tls_files_unless_insecure(tmp_path):
    with pytest.raises(DeploymentError, match="fedge certs"):
        SuperLinkSettings(state_dir=tmp_path)
    files = make_test_certificates(tmp_path / "certs")
    settings = SuperLinkSettings(
        state_dir=tmp_path,
        ca_certificate=files.ca_certificate,
        server_certificate=files.server_certificate,
        server_key=files.server_key,
    )
    cmd = settings.command()
    assert "--enable-supernode-auth" in cmd and "--insecure" not in cmd
    assert cmd[cmd.index("--database") + 1].endswith("superlink.db")
    assert "--insecure" in SuperLinkSettings(state_dir=tmp_path, insecure=True).command()


def test_flower_connection_names_the_ca(tmp_path):
    import tomllib

    path = write_connection(tmp_path, "127.0.0.1:9092", ca_certificate=tmp_path / "ca.crt")
    conf = tomllib.loads(path.read_text())
    assert conf["superlink"]["default"] == "fedge"
    assert conf["superlink"]["fedge"]["root-certificates"].endswith("ca.crt")
    with pytest.raises(DeploymentError, match="HOST:PORT"):
        split_address("localhost")


def test_existing_certificates_and_keys_are_not_replaced_without_overwrite(tmp_path):
    files = make_test_certificates(tmp_path / "certs")
    ca = files.ca_certificate.read_bytes()
    with pytest.raises(CredentialsError, match="already exist.*--force"):
        make_test_certificates(tmp_path / "certs")
    assert files.ca_certificate.read_bytes() == ca  # nothing lost
    assert make_test_certificates(tmp_path / "certs", overwrite=True).ca_certificate.read_bytes() != ca

    (a,) = make_node_keys(tmp_path / "keys", ["hospital-a"])
    public = a.public.read_bytes()
    with pytest.raises(CredentialsError, match="hospital-a.key"):
        make_node_keys(tmp_path / "keys", ["hospital-b", "hospital-a"])
    assert a.public.read_bytes() == public
    assert not (tmp_path / "keys" / "hospital-b.key").exists(), "refused as a whole: nothing half-written"
    (b,) = make_node_keys(tmp_path / "keys", ["hospital-b"])  # a new node beside the old ones is fine
    assert b.public.exists() and a.public.read_bytes() == public
