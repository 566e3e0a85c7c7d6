//! Kubernetes etcd values written by an independent encoder.
//!
//! `integration/scripts/k8s_encrypt.py` (Python `cryptography` + `pynacl`)
//! produces values in the API server's formats; rekey's own code never
//! encrypts what its tests decrypt. [`load`] writes many values into etcd
//! quickly (transactions of [`TXN_OPS`] puts, several in flight).

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
};

use base64::Engine;
use serde_json::Value;

/// etcd's default `--max-txn-ops` is 128.
pub const TXN_OPS: usize = 100;

/// The Python with `cryptography` and `pynacl`: `REKEY_TEST_PYTHON` (set by
/// `integration/test.sh`), else the venv at `target/pyenv`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("REKEY_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python");
    assert!(
        venv.is_file(),
        "no Python with `cryptography` and `pynacl` for the independent encoder: run \
         `python3 -m venv target/pyenv && target/pyenv/bin/pip install -r integration/requirements.txt` \
         (integration/test.sh does) or set REKEY_TEST_PYTHON"
    );
    venv
}

/// The encoder script.
pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/k8s_encrypt.py")
}

/// Encodes each request (see the script's docstring) into a stored value.
pub fn encode(requests: &[Value]) -> Vec<Vec<u8>> {
    let mut child = Command::new(python())
        .arg(script())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the Python encoder");
    let input = serde_json::to_vec(requests).expect("json");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("encoder output");
    writer
        .join()
        .expect("writer thread")
        .expect("writing to the encoder");
    assert!(
        out.status.success(),
        "the encoder failed (are `cryptography` and `pynacl` installed? `pip install -r integration/requirements.txt`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let values: Vec<String> = serde_json::from_slice(&out.stdout).expect("encoder JSON");
    assert_eq!(values.len(), requests.len());
    values
        .into_iter()
        .map(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v)
                .expect("base64 from the encoder")
        })
        .collect()
}

/// One encoder request for a Secret `ns/name` stored at `/registry/secrets/ns/name`.
pub fn secret(ns: &str, name: &str, format: &str, key_name: &str, key_b64: &str) -> Value {
    serde_json::json!({
        "etcd_key": format!("/registry/secrets/{ns}/{name}"),
        "format": format,
        "key_name": key_name,
        "secret": key_b64,
        "name": name,
        "namespace": ns,
    })
}

/// Puts every `(key, value)` into etcd.
pub async fn load(client: &etcd_client::Client, kvs: Vec<(String, Vec<u8>)>) {
    use etcd_client::{Txn, TxnOp};
    let mut set = tokio::task::JoinSet::new();
    let mut chunks = kvs.chunks(TXN_OPS).map(<[_]>::to_vec).collect::<Vec<_>>();
    while !chunks.is_empty() || !set.is_empty() {
        while set.len() < 8
            && let Some(chunk) = chunks.pop()
        {
            let mut kv = client.kv_client();
            set.spawn(async move {
                let ops: Vec<TxnOp> = chunk
                    .into_iter()
                    .map(|(k, v)| TxnOp::put(k, v, None))
                    .collect();
                kv.txn(Txn::new().and_then(ops)).await.map(|_| ())
            });
        }
        if let Some(r) = set.join_next().await {
            r.expect("put task").expect("etcd txn");
        }
    }
}
