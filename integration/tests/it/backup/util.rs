//! Helpers shared by the `backup::*` tests (and `crash_points`): key files,
//! data, running the binary, configs.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use rekey_integration::{
    bin::{outcome, rekey, run},
    etcd::Etcd,
};

/// Writes a fresh random 32-byte KEK (raw) with mode 0600.
pub fn kek_file(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let mut key = [0u8; 32];
    for (i, b) in key.iter_mut().enumerate() {
        *b = (uuid::Uuid::new_v4().as_bytes()[i % 16]) ^ (i as u8);
    }
    std::fs::write(&p, key).expect("writing KEK");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p
}

/// Deterministic, incompressible-looking bytes.
pub fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// Runs `rekey ARGS`; returns (exit code, stdout, stderr).
pub fn rekey_run(args: &[&str], env: &[(&str, String)]) -> (i32, String, String) {
    let mut c = rekey();
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    outcome(&run(&mut c))
}

/// Runs `rekey ARGS` and expects success; returns stdout.
pub fn rekey_ok(args: &[&str], env: &[(&str, String)]) -> String {
    let (code, out, err) = rekey_run(args, env);
    assert_eq!(
        code, 0,
        "rekey {args:?} failed:\nstdout: {out}\nstderr: {err}"
    );
    out
}

/// Runs `rekey ARGS --json` and parses stdout.
pub fn rekey_json(args: &[&str], env: &[(&str, String)]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = rekey_ok(&a, env);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("rekey {args:?}: not JSON ({e}): {out}"))
}

/// Names of the entries of a directory, sorted.
pub fn ls(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The `[etcd]` section for a test etcd.
pub fn etcd_section(etcd: &Etcd) -> String {
    let mut s = format!("[etcd]\nendpoints = [\"{}\"]\n", etcd.endpoint);
    if let Some(t) = &etcd.tls {
        s.push_str(&format!(
            "ca_cert = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"\n",
            t.ca_cert.display(),
            t.client_cert.display(),
            t.client_key.display()
        ));
    }
    s
}

/// Writes `rekey.toml` with a database, an etcd and a `[backup]` section.
pub fn write_config(
    dir: &Path,
    db_url: &str,
    etcd: &Etcd,
    destination: &str,
    kek: &Path,
    extra_backup_lines: &str,
) -> PathBuf {
    let text = format!(
        "[database]\nurl = \"{db_url}\"\n\n{}\n[backup]\ndestination = \"{destination}\"\nkek_file = \"{}\"\n{extra_backup_lines}",
        etcd_section(etcd),
        kek.display()
    );
    let p = dir.join("rekey.toml");
    std::fs::write(&p, text).expect("writing config");
    p
}

/// Puts `n` keys into etcd through etcdctl; returns etcd's revision after.
pub fn fill_etcd(etcd: &Etcd, n: usize, tag: &str) -> i64 {
    for i in 0..n {
        let out = etcd
            .etcdctl()
            .args(["put", &format!("/registry/secrets/default/{tag}-{i}")])
            .arg(format!("value {i} {}", "x".repeat(100)))
            .output()
            .expect("etcdctl put");
        assert!(out.status.success(), "etcdctl put: {out:?}");
    }
    let out = etcd
        .etcdctl()
        .args(["endpoint", "status", "-w", "json"])
        .output()
        .expect("etcdctl endpoint status");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    v[0]["Status"]["header"]["revision"]
        .as_i64()
        .expect("revision")
}

/// `etcdctl snapshot status FILE -w json`
pub fn etcdctl_snapshot_status(file: &Path) -> serde_json::Value {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(file)
        .output()
        .expect("etcdctl snapshot status (install: apt-get install -y etcd-client)");
    assert!(out.status.success(), "etcdctl snapshot status: {out:?}");
    serde_json::from_slice(&out.stdout).expect("etcdctl json")
}

/// Hex SHA-256 of a file.
pub fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).expect("read")))
}
