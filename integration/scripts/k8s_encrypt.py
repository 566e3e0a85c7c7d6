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

  {..., "k8s_object": {...}}               # optional: a whole Secret or ConfigMap
                                            # (Kubernetes JSON) stored as the API server
                                            # stores it (see `--serve`)

Uses `cryptography` (AES) and `pynacl` (secretbox).

With `--serve` it is the storage layer of the Kubernetes API stand-in
(`integration/src/kube/storage.rs`): one JSON request per line on stdin, one
JSON answer per line on stdout, written exactly as the API server's storage
writes Secrets and ConfigMaps (`k8s\x00` + protobuf `runtime.Unknown` around a
`v1.Secret` / `v1.ConfigMap`, then the write transformer) and read back the way
it reads them (every configured transformer whose prefix matches is tried in
order; a value opened by any but the first is *stale*):

  {"op": "configure", "resources": {"secrets": [T...], "configmaps": [T...]}}
      T = {"format": "aesgcm"|"aescbc"|"secretbox"|"identity"|"kms-v1"|"kms-v2",
           "key_name": "...", "secret": "<base64>"}       (first = write transformer)
  {"op": "encode", "resource": "secrets", "etcd_key": "...", "object": {...}}
      -> {"value": "<base64>", "plain": "<base64 of the protobuf plaintext>"}
  {"op": "decode", "resource": "secrets", "etcd_key": "...", "value": "<base64>"}
      -> {"object": {...}, "plain": "<base64>", "stale": bool}  or  {"error": "..."}
"""

import base64
import datetime
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
    if "k8s_object" in req:
        plain = object_to_storage(req["k8s_object"])
    else:
        plain = secret_object(req)
    return transform(fmt, req.get("key_name", ""), req.get("secret"),
                     req.get("aad_key", req["etcd_key"]), plain)


def transform(fmt, key_name, secret_b64, aad_key, plain):
    """Applies one transformer (the write path of the API server's storage)."""
    if fmt in ("plaintext", "identity"):
        return plain
    if fmt in ("kms-v2", "kms-v1"):
        version = fmt.split("-")[1]
        return b"k8s:enc:kms:" + version.encode() + b":" + key_name.encode() + b":" + os.urandom(64)
    key = base64.b64decode(secret_b64)
    prefix = b"k8s:enc:" + fmt.encode() + b":v1:" + key_name.encode() + b":"
    if fmt == "aescbc":
        iv = os.urandom(16)
        padder = padding.PKCS7(128).padder()
        padded = padder.update(plain) + padder.finalize()
        enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        return prefix + iv + enc.update(padded) + enc.finalize()
    if fmt == "aesgcm":
        nonce = os.urandom(12)
        return prefix + nonce + AESGCM(key).encrypt(nonce, plain, aad_key.encode())
    if fmt == "secretbox":
        box = nacl.secret.SecretBox(key)
        nonce = os.urandom(nacl.secret.SecretBox.NONCE_SIZE)
        sealed = box.encrypt(plain, nonce)  # nonce + tag + ciphertext
        assert sealed[:24] == nonce
        return prefix + bytes(sealed)
    raise SystemExit(f"unknown format {fmt!r}")


def prefix_of(t):
    fmt = t["format"]
    if fmt == "identity":
        return b""
    if fmt in ("kms-v2", "kms-v1"):
        return b"k8s:enc:kms:" + fmt.split("-")[1].encode() + b":" + t["key_name"].encode() + b":"
    return b"k8s:enc:" + fmt.encode() + b":v1:" + t["key_name"].encode() + b":"


def untransform(t, value, aad_key):
    """Opens one value with one transformer (the read path); raises on failure."""
    fmt = t["format"]
    if fmt == "identity":
        if value.startswith(b"k8s:enc:"):
            raise ValueError("identity transformer tried to read encrypted data")
        return value
    if fmt in ("kms-v2", "kms-v1"):
        raise ValueError("the KMS plugin is not reachable from the stand-in")
    body = value[len(prefix_of(t)):]
    key = base64.b64decode(t["secret"])
    if fmt == "aescbc":
        if len(body) < 32 or len(body) % 16:
            raise ValueError("the stored value was shorter than the minimum length")
        dec = Cipher(algorithms.AES(key), modes.CBC(body[:16])).decryptor()
        padded = dec.update(body[16:]) + dec.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        return unpadder.update(padded) + unpadder.finalize()
    if fmt == "aesgcm":
        if len(body) < 28:
            raise ValueError("the stored data was shorter than the required size")
        return AESGCM(key).decrypt(body[:12], body[12:], aad_key.encode())
    if fmt == "secretbox":
        return nacl.secret.SecretBox(key).decrypt(body)
    raise ValueError(f"unknown format {fmt!r}")


# --- protobuf: the API server's storage encoding of v1 Secrets and ConfigMaps ---

def f_string(tag, s):
    return field(tag, s.encode())


def f_varint(tag, n):
    return varint(tag << 3) + varint(n & 0xFFFFFFFFFFFFFFFF)


def f_map(tag, d, value_bytes):
    out = b""
    for k in sorted(d):  # Kubernetes' generated marshallers sort map keys
        out += field(tag, f_string(1, k) + field(2, value_bytes(d[k])))
    return out


def rfc3339_seconds(s):
    t = datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ")
    return int(t.replace(tzinfo=datetime.timezone.utc).timestamp())


def seconds_rfc3339(n):
    t = datetime.datetime.fromtimestamp(n, tz=datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def time_message(s):
    return f_varint(1, rfc3339_seconds(s))


def object_meta(m):
    out = b""
    for tag, name in ((1, "name"), (2, "generateName"), (3, "namespace"), (5, "uid")):
        if m.get(name):
            out += f_string(tag, m[name])
    # resourceVersion (6) is never stored: the server derives it from etcd
    if m.get("generation"):
        out += f_varint(7, m["generation"])
    if m.get("creationTimestamp"):
        out += field(8, time_message(m["creationTimestamp"]))
    if m.get("deletionTimestamp"):
        out += field(9, time_message(m["deletionTimestamp"]))
    if m.get("deletionGracePeriodSeconds") is not None:
        out += f_varint(10, m["deletionGracePeriodSeconds"])
    out += f_map(11, m.get("labels") or {}, lambda v: v.encode())
    out += f_map(12, m.get("annotations") or {}, lambda v: v.encode())
    for r in m.get("ownerReferences") or []:
        ref = (f_string(1, r.get("kind", "")) + f_string(3, r.get("name", "")) +
               f_string(4, r.get("uid", "")) + f_string(5, r.get("apiVersion", "")))
        if r.get("controller") is not None:
            ref += f_varint(6, 1 if r["controller"] else 0)
        if r.get("blockOwnerDeletion") is not None:
            ref += f_varint(7, 1 if r["blockOwnerDeletion"] else 0)
        out += field(13, ref)
    for f in m.get("finalizers") or []:
        out += f_string(14, f)
    return out


def object_to_storage(obj):
    """Kubernetes JSON of a v1 Secret or ConfigMap -> `k8s\x00` + runtime.Unknown."""
    kind = obj.get("kind")
    body = field(1, object_meta(obj.get("metadata") or {}))
    if kind == "Secret":
        data = dict(obj.get("data") or {})
        for k, v in (obj.get("stringData") or {}).items():
            data[k] = base64.b64encode(v.encode()).decode()
        body += f_map(2, data, lambda v: base64.b64decode(v))
        if obj.get("type"):
            body += f_string(3, obj["type"])
        if obj.get("immutable") is not None:
            body += f_varint(5, 1 if obj["immutable"] else 0)
    elif kind == "ConfigMap":
        body += f_map(2, obj.get("data") or {}, lambda v: v.encode())
        body += f_map(3, obj.get("binaryData") or {}, lambda v: base64.b64decode(v))
        if obj.get("immutable") is not None:
            body += f_varint(4, 1 if obj["immutable"] else 0)
    else:
        raise ValueError(f"the stand-in stores only Secrets and ConfigMaps in etcd, not {kind!r}")
    type_meta = f_string(1, "v1") + f_string(2, kind)
    unknown = field(1, type_meta) + field(2, body) + f_string(4, "application/vnd.kubernetes.protobuf")
    return b"k8s\x00" + unknown


def read_varint(b, i):
    n = shift = 0
    while True:
        if i >= len(b):
            raise ValueError("truncated varint")
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return n, i


def fields(b):
    """Yields (tag, wire type, value) of a protobuf message."""
    i = 0
    while i < len(b):
        key, i = read_varint(b, i)
        tag, wt = key >> 3, key & 7
        if wt == 0:
            v, i = read_varint(b, i)
        elif wt == 2:
            n, i = read_varint(b, i)
            if i + n > len(b):
                raise ValueError("truncated field")
            v, i = b[i:i + n], i + n
        elif wt == 1:
            v, i = b[i:i + 8], i + 8
        elif wt == 5:
            v, i = b[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        yield tag, wt, v


def map_entry(b):
    k = v = b""
    for tag, _, val in fields(b):
        if tag == 1:
            k = val
        elif tag == 2:
            v = val
    return k.decode(), v


def meta_from(b):
    m = {}
    names = {1: "name", 2: "generateName", 3: "namespace", 4: "selfLink", 5: "uid"}
    for tag, _, v in fields(b):
        if tag in names:
            m[names[tag]] = v.decode()
        elif tag == 7:
            m["generation"] = v
        elif tag in (8, 9):
            secs = next((val for t, _, val in fields(v) if t == 1), 0)
            m["creationTimestamp" if tag == 8 else "deletionTimestamp"] = seconds_rfc3339(secs)
        elif tag == 10:
            m["deletionGracePeriodSeconds"] = v
        elif tag in (11, 12):
            k, val = map_entry(v)
            m.setdefault("labels" if tag == 11 else "annotations", {})[k] = val.decode()
        elif tag == 13:
            r = {}
            for t, _, val in fields(v):
                if t in (1, 3, 4, 5):
                    r[{1: "kind", 3: "name", 4: "uid", 5: "apiVersion"}[t]] = val.decode()
                elif t in (6, 7):
                    r["controller" if t == 6 else "blockOwnerDeletion"] = bool(val)
            m.setdefault("ownerReferences", []).append(r)
        elif tag == 14:
            m.setdefault("finalizers", []).append(v.decode())
    return m


def object_from_storage(plain):
    """`k8s\x00` + runtime.Unknown -> Kubernetes JSON (Secret or ConfigMap)."""
    if not plain.startswith(b"k8s\x00"):
        raise ValueError("not a Kubernetes protobuf object")
    api_version = kind = ""
    raw = b""
    for tag, _, v in fields(plain[4:]):
        if tag == 1:
            for t, _, val in fields(v):
                if t == 1:
                    api_version = val.decode()
                elif t == 2:
                    kind = val.decode()
        elif tag == 2:
            raw = v
    obj = {"apiVersion": api_version, "kind": kind, "metadata": {}}
    for tag, _, v in fields(raw):
        if tag == 1:
            obj["metadata"] = meta_from(v)
        elif kind == "Secret" and tag == 2:
            k, val = map_entry(v)
            obj.setdefault("data", {})[k] = base64.b64encode(val).decode()
        elif kind == "Secret" and tag == 3:
            obj["type"] = v.decode()
        elif kind == "Secret" and tag == 5:
            obj["immutable"] = bool(v)
        elif kind == "ConfigMap" and tag == 2:
            k, val = map_entry(v)
            obj.setdefault("data", {})[k] = val.decode()
        elif kind == "ConfigMap" and tag == 3:
            k, val = map_entry(v)
            obj.setdefault("binaryData", {})[k] = base64.b64encode(val).decode()
        elif kind == "ConfigMap" and tag == 4:
            obj["immutable"] = bool(v)
    return obj


def serve():
    resources = {}
    for line in sys.stdin:
        req = json.loads(line)
        try:
            op = req["op"]
            if op == "configure":
                resources = req["resources"]
                answer = {"ok": True}
            elif op == "encode":
                t = resources[req["resource"]][0]
                plain = object_to_storage(req["object"])
                value = transform(t["format"], t.get("key_name", ""), t.get("secret"),
                                  req["etcd_key"], plain)
                answer = {"value": base64.b64encode(value).decode(),
                          "plain": base64.b64encode(plain).decode()}
            elif op == "decode":
                value = base64.b64decode(req["value"])
                errors = []
                answer = None
                for i, t in enumerate(resources[req["resource"]]):
                    if not value.startswith(prefix_of(t)):
                        continue
                    try:
                        plain = untransform(t, value, req["etcd_key"])
                    except Exception as e:  # try the next transformer, as the server does
                        errors.append(f"{t['format']}:{t.get('key_name', '')}: {e!r}")
                        continue
                    answer = {"object": object_from_storage(plain),
                              "plain": base64.b64encode(plain).decode(), "stale": i != 0}
                    break
                if answer is None:
                    answer = {"error": "no configured transformer opens the value: " +
                              ("; ".join(errors) or "no transformer matches its prefix")}
            else:
                answer = {"error": f"unknown op {op!r}"}
        except Exception as e:
            answer = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


def main():
    if sys.argv[1:] == ["--serve"]:
        serve()
        return
    requests = json.load(sys.stdin)
    out = [base64.b64encode(encode(r)).decode() for r in requests]
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
