#!/usr/bin/env python3
"""Independent encoder of Kubernetes etcd values (encryption at rest).

Written from the Kubernetes value formats, not from rekey's code, so that the
tests prove rekey reads what a real API server writes:

  plaintext   b"k8s\\x00" + protobuf runtime.Unknown{typeMeta{apiVersion, kind}, raw}
  aescbc      b"k8s:enc:aescbc:v1:<key>:"    + IV(16) + AES-CBC(PKCS#7 padded)
  aesgcm      b"k8s:enc:aesgcm:v1:<key>:"    + nonce(12) + ciphertext + tag(16),
              associated data = the full etcd key
  secretbox   b"k8s:enc:secretbox:v1:<key>:" + nonce(24) + NaCl secretbox (tag + ciphertext)
  kms v2      b"k8s:enc:kms:v2:<name>:"      + opaque bytes (only the plugin opens them)

Usage: reads a JSON list of requests on stdin, writes a JSON list of base64
values on stdout, one per request:

  {"etcd_key": "/registry/secrets/ns/name", "format": "aesgcm",
   "key_name": "key1", "secret": "<base64 key>",
   "object": "protobuf" | "json",            # the plaintext object to build
   "name": "name", "namespace": "ns",       # metadata for the object
   "aad_key": "/registry/..."}              # optional: encrypt as if stored elsewhere

Uses `cryptography` (AES) and `pynacl` (secretbox).
"""

import base64
import json
import os
import sys

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
import nacl.secret


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(tag, payload):
    """A length-delimited protobuf field (wire type 2)."""
    return varint((tag << 3) | 2) + varint(len(payload)) + payload


def secret_object(req):
    name = req.get("name", "s")
    namespace = req.get("namespace", "default")
    filler = req.get("filler", 0)
    if req.get("object", "protobuf") == "json":
        obj = {
            "kind": "Secret",
            "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"password": base64.b64encode(b"x" * (16 + filler)).decode()},
            "type": "Opaque",
        }
        return json.dumps(obj).encode()
    # v1.Secret: ObjectMeta(1){name(1), namespace(3)}, data(2) map<string,bytes>, type(3)
    meta = field(1, name.encode()) + field(3, namespace.encode())
    data_entry = field(1, b"password") + field(2, os.urandom(16 + filler))
    secret = field(1, meta) + field(2, data_entry) + field(3, b"Opaque")
    type_meta = field(1, b"v1") + field(2, b"Secret")
    unknown = field(1, type_meta) + field(2, secret) + field(4, b"application/vnd.kubernetes.protobuf")
    return b"k8s\x00" + unknown


def encode(req):
    fmt = req["format"]
    plain = secret_object(req)
    if fmt == "plaintext":
        return plain
    if fmt == "kms-v2":
        return b"k8s:enc:kms:v2:" + req["key_name"].encode() + b":" + os.urandom(64)
    key = base64.b64decode(req["secret"])
    prefix = b"k8s:enc:" + fmt.encode() + b":v1:" + req["key_name"].encode() + b":"
    if fmt == "aescbc":
        iv = os.urandom(16)
        padder = padding.PKCS7(128).padder()
        padded = padder.update(plain) + padder.finalize()
        enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        return prefix + iv + enc.update(padded) + enc.finalize()
    if fmt == "aesgcm":
        nonce = os.urandom(12)
        aad = req.get("aad_key", req["etcd_key"]).encode()
        return prefix + nonce + AESGCM(key).encrypt(nonce, plain, aad)
    if fmt == "secretbox":
        box = nacl.secret.SecretBox(key)
        nonce = os.urandom(nacl.secret.SecretBox.NONCE_SIZE)
        sealed = box.encrypt(plain, nonce)  # nonce + tag + ciphertext
        assert sealed[:24] == nonce
        return prefix + bytes(sealed)
    raise SystemExit(f"unknown format {fmt!r}")


def main():
    requests = json.load(sys.stdin)
    out = [base64.b64encode(encode(r)).decode() for r in requests]
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
