"""The bare baseline of the mass re-issue benchmark (integration/benches/ca_rotation.rs).

Generates and signs, with Python's `cryptography`, the certificates rekey
re-issues when a CA is rotated (ECDSA P-256 key, CN and one DNS name,
digitalSignature, serverAuth+clientAuth, SKI and AKI, 24h), and writes each
as rekey's file sink lays it out (tls.crt = leaf + CA, tls.key, ca.crt) into
its own directory. No database, no fsync, no atomic swap.

    python bench_reissue.py OUT_DIR N [PROCESSES]

Prints one line: `<n> <seconds>`.
"""

import datetime
import multiprocessing
import os
import sys
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def make_ca():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue(out, start, count, ca_key_pem, ca_pem):
    ca_key = serialization.load_pem_private_key(ca_key_pem, None)
    ca = x509.load_pem_x509_certificate(ca_pem)
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    ku = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    for i in range(start, start + count):
        name = f"c{i:06}.bench.svc"
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=24))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(ku, critical=True)
            .add_extension(eku, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(aki, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        d = os.path.join(out, f"c{i:06}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "tls.crt"), "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM) + ca_pem)
        with open(os.path.join(d, "tls.key"), "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        with open(os.path.join(d, "ca.crt"), "wb") as f:
            f.write(ca_pem)


def main():
    out, n = sys.argv[1], int(sys.argv[2])
    procs = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    ca_key, ca = make_ca()
    ca_key_pem = ca_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    per = n // procs
    t = time.monotonic()
    if procs == 1:
        issue(out, 0, n, ca_key_pem, ca_pem)
    else:
        ps = [
            multiprocessing.Process(target=issue, args=(out, k * per, per if k < procs - 1 else n - k * per, ca_key_pem, ca_pem))
            for k in range(procs)
        ]
        for p in ps:
            p.start()
        for p in ps:
            p.join()
    print(n, time.monotonic() - t)


if __name__ == "__main__":
    main()
