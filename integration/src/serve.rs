//! Running `rekey serve` on a generated configuration against a fresh database.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    bin::{outcome, rekey, run},
    pg::{TestDb, fresh_db},
};

/// A scenario: a fresh database, a CA made by `rekey ca init`, a temp dir.
pub struct Scenario {
    /// The database.
    pub db: TestDb,
    /// Temp directory holding the CA, configs, sinks and logs.
    pub dir: tempfile::TempDir,
}

/// A running `rekey serve`; killed on drop.
pub struct Server {
    /// The process.
    pub child: Child,
    /// Its stderr log file.
    pub log: PathBuf,
}

impl Scenario {
    /// A fresh database and a CA in `<dir>/ca`.
    pub async fn new() -> Self {
        let db = fresh_db().await;
        let dir = tempfile::Builder::new()
            .prefix("rekey-test-")
            .tempdir()
            .expect("temp dir");
        let out = run(rekey()
            .args(["ca", "init", "--out"])
            .arg(dir.path().join("ca")));
        let (code, _, err) = outcome(&out);
        assert_eq!(code, 0, "rekey ca init failed: {err}");
        Self { db, dir }
    }

    /// A path inside the scenario's directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The common head of a config: database, issuer, engine tuning.
    pub fn config_head(&self, engine: &str) -> String {
        format!(
            "[database]\nurl = \"{}\"\n\n[issuer]\nca_cert = \"{}\"\nca_key = \"{}\"\n\n[engine]\n{engine}\n",
            self.db.url,
            self.path("ca/ca.crt").display(),
            self.path("ca/ca.key").display(),
        )
    }

    /// Writes a config file and returns its path.
    pub fn write_config(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        let mut f = std::fs::File::create(&p).expect("config file");
        f.write_all(text.as_bytes()).expect("write config");
        p
    }

    /// Starts `rekey serve --config <config>` with extra environment.
    pub fn serve(&self, config: &Path, env: &[(&str, &str)]) -> Server {
        let n = std::fs::read_dir(self.dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        let log = self.path(&format!("serve-{n}.log"));
        let mut cmd = rekey();
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .env("REKEY_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawning rekey serve");
        Server { child, log }
    }
}

impl Server {
    /// Kills with SIGKILL (no chance to clean up) and reaps.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit code.
    pub fn terminate(&mut self, patience: Duration) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
        None
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs `openssl` with arguments; returns (exit code, stdout+stderr).
pub fn openssl(args: &[&str]) -> (i32, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed (apt-get install -y openssl)");
    let (code, o, e) = outcome(&out);
    (code, format!("{o}{e}"))
}

/// Waits until `f` returns `Some`, polling every 100 ms, up to `patience`.
pub fn wait_for<T>(patience: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(t) = f() {
            return Some(t);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A consistent snapshot of a file sink: the marker read before and after the files.
#[derive(Debug, Clone)]
pub struct SinkSnapshot {
    /// Version id in `.rekey-version`.
    pub version: i64,
    /// `tls.crt`.
    pub cert: String,
    /// `tls.key`.
    pub key: String,
    /// `ca.crt`.
    pub ca: String,
    /// Mode bits of `tls.key`.
    pub key_mode: u32,
}

/// Reads a file sink consistently, or None if it is mid-update or empty.
pub fn read_sink(dir: &Path) -> Option<SinkSnapshot> {
    use std::os::unix::fs::PermissionsExt;
    let marker = || {
        std::fs::read_to_string(dir.join(".rekey-version"))
            .ok()?
            .trim()
            .parse::<i64>()
            .ok()
    };
    let v1 = marker()?;
    let cert = std::fs::read_to_string(dir.join("tls.crt")).ok()?;
    let key = std::fs::read_to_string(dir.join("tls.key")).ok()?;
    let ca = std::fs::read_to_string(dir.join("ca.crt")).ok()?;
    let key_mode = std::fs::metadata(dir.join("tls.key"))
        .ok()?
        .permissions()
        .mode()
        & 0o777;
    let v2 = marker()?;
    (v1 == v2).then_some(SinkSnapshot {
        version: v1,
        cert,
        key,
        ca,
        key_mode,
    })
}

/// Checks a published certificate with openssl: chains to `ca.crt`, its key
/// matches `tls.key`. Returns the leaf's (not_before, not_after) as unix seconds.
pub fn verify_with_openssl(snap: &SinkSnapshot, scratch: &Path) -> Result<(i64, i64), String> {
    std::fs::create_dir_all(scratch).map_err(|e| e.to_string())?;
    let crt = scratch.join("tls.crt");
    let key = scratch.join("tls.key");
    let ca = scratch.join("ca.crt");
    std::fs::write(&crt, &snap.cert).map_err(|e| e.to_string())?;
    std::fs::write(&key, &snap.key).map_err(|e| e.to_string())?;
    std::fs::write(&ca, &snap.ca).map_err(|e| e.to_string())?;
    let s = |p: &Path| p.display().to_string();
    let (code, out) = openssl(&["verify", "-CAfile", &s(&ca), &s(&crt)]);
    if code != 0 {
        return Err(format!("openssl verify: {out}"));
    }
    let (_, cert_pub) = openssl(&["x509", "-in", &s(&crt), "-noout", "-pubkey"]);
    let (code, key_pub) = openssl(&["pkey", "-in", &s(&key), "-pubout"]);
    if code != 0 || cert_pub.trim() != key_pub.trim() {
        return Err(format!(
            "tls.key does not match tls.crt:\n{cert_pub}\n{key_pub}"
        ));
    }
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(snap.cert.as_bytes()).map_err(|e| e.to_string())?;
    let x = pem.parse_x509().map_err(|e| e.to_string())?;
    Ok((
        x.validity().not_before.timestamp(),
        x.validity().not_after.timestamp(),
    ))
}
