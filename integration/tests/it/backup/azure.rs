//! `az://` through a real Azure Blob Storage emulator (Azurite, installed into
//! `target/node` by `integration/test.sh`): a multipart (block list) upload by
//! `backup encrypt`, a download by `backup decrypt`, an in-place `rewrap`.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::util::{kek_file, pattern, rekey_ok, rekey_run};
use base64::Engine;

/// Azurite's well-known development account and key.
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

struct Azurite {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn azurite_bin() -> PathBuf {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/node/node_modules/.bin/azurite-blob");
    assert!(
        p.is_file(),
        "Azurite (Azure Blob Storage emulator) is missing: run integration/test.sh, or \
         `npm install --prefix target/node azurite@3` (needs `apt-get install -y npm`)"
    );
    p
}

impl Azurite {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = rekey::devdb::free_port().expect("port");
        let child = Command::new(azurite_bin())
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(dir.path())
            .args(["--silent", "--skipApiVersionCheck"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting azurite-blob");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "Azurite did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    /// Creates a container with a SharedKey-signed request (object_store cannot).
    fn create_container(&self, name: &str) {
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let version = "2021-08-06";
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(KEY)
            .expect("key");
        let mac = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key),
            to_sign.as_bytes(),
        );
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.as_ref());
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        write!(
            s,
            "PUT /{ACCOUNT}/{name}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
             x-ms-date: {date}\r\nx-ms-version: {version}\r\n\
             Authorization: SharedKey {ACCOUNT}:{sig}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("request");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("response");
        assert!(resp.starts_with("HTTP/1.1 201"), "create container: {resp}");
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
            (
                "AZURITE_BLOB_STORAGE_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
        ]
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn encrypt_to_az_decrypt_and_rewrap_there() {
    let az = Azurite::start();
    az.create_container("backups");
    let env = az.env();
    let dir = tempfile::tempdir().expect("tempdir");
    let old = kek_file(dir.path(), "old");
    let new = kek_file(dir.path(), "new");
    let plain = dir.path().join("plain");
    // Larger than one upload part (8 MiB): a multipart (block list) upload.
    let data = pattern(20 * 1024 * 1024 + 3, 21);
    std::fs::write(&plain, &data).expect("write");
    let url = "az://backups/etcd/snap.rkb";
    rekey_ok(
        &[
            "backup",
            "encrypt",
            "--kek-file",
            s(&old),
            "--in",
            s(&plain),
            "--out",
            url,
        ],
        &env,
    );
    let out = dir.path().join("restored");
    rekey_ok(
        &[
            "backup",
            "decrypt",
            "--kek-file",
            s(&old),
            "--from",
            url,
            "--out",
            s(&out),
        ],
        &env,
    );
    assert!(std::fs::read(&out).expect("read") == data);

    rekey_ok(
        &[
            "backup",
            "rewrap",
            "--old-kek",
            s(&old),
            "--new-kek",
            s(&new),
            "--from",
            url,
        ],
        &env,
    );
    std::fs::remove_file(&out).expect("rm");
    let (code, _, err) = rekey_run(
        &[
            "backup",
            "decrypt",
            "--kek-file",
            s(&old),
            "--from",
            url,
            "--out",
            s(&out),
        ],
        &env,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("wrong key"), "{err}");
    rekey_ok(
        &[
            "backup",
            "decrypt",
            "--kek-file",
            s(&new),
            "--from",
            url,
            "--out",
            s(&out),
        ],
        &env,
    );
    assert!(std::fs::read(&out).expect("read") == data);

    // A missing object is named, exit 2.
    let (code, _, err) = rekey_run(
        &[
            "backup",
            "decrypt",
            "--kek-file",
            s(&new),
            "--from",
            "az://backups/etcd/none.rkb",
            "--out",
            s(&dir.path().join("x")),
        ],
        &env,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not found"), "{err}");
}
