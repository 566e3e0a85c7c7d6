//! A real S3-compatible endpoint on loopback: `moto_server` from the test venv.
//!
//! `integration/test.sh` installs `moto[server]` into `target/pyenv` (from
//! `integration/requirements.txt`). The harness looks there first, then on
//! `PATH`; without it the test fails with the command that installs it.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use object_store::{ObjectStore, aws::AmazonS3Builder};

/// Access key moto accepts (any value works; these are the conventional ones).
pub const ACCESS_KEY: &str = "testing";
/// Secret key moto accepts.
pub const SECRET_KEY: &str = "testing";
/// Region used for every request.
pub const REGION: &str = "us-east-1";

/// A running moto server with one bucket; killed on drop.
pub struct S3 {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    /// The bucket created at start.
    pub bucket: String,
    port: u16,
    _dir: tempfile::TempDir,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ is inside the workspace")
        .to_path_buf()
}

fn moto_binary() -> PathBuf {
    let venv = workspace_root().join("target/pyenv/bin/moto_server");
    if venv.is_file() {
        return venv;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("moto_server");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "moto_server (an S3-compatible test endpoint) is not installed: run integration/test.sh, \
         or `python3 -m venv target/pyenv && target/pyenv/bin/pip install -r integration/requirements.txt`"
    );
}

impl S3 {
    /// Starts moto on a free loopback port and creates the bucket `rekey-test`.
    pub fn start() -> Self {
        let bin = moto_binary();
        let dir = tempfile::Builder::new()
            .prefix("rekey-test-s3-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let port = rekey::devdb::free_port().expect("free port");
        let log = std::fs::File::create(dir.path().join("moto.log")).expect("log file");
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let me = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: "rekey-test".into(),
            port,
            _dir: dir,
        };
        me.wait_ready();
        me.create_bucket(&me.bucket.clone());
        me
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(status) = self.request("GET", "/moto-api/")
                && status < 500
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not start on port {}: {}",
                self.port,
                std::fs::read_to_string(self._dir.path().join("moto.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A bare HTTP/1.1 request to moto; returns the status code.
    fn request(&self, method: &str, path: &str) -> std::io::Result<u16> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        resp.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad HTTP response: {resp:.200}")))
    }

    /// Creates a bucket (object_store cannot).
    pub fn create_bucket(&self, name: &str) {
        let status = self
            .request("PUT", &format!("/{name}"))
            .expect("creating the bucket");
        assert!(status < 300, "creating bucket {name}: HTTP {status}");
    }

    /// `s3://BUCKET/PREFIX`
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{}", self.bucket, prefix.trim_start_matches('/'))
    }

    /// `[backup]` lines that point at this endpoint.
    pub fn config_lines(&self) -> String {
        format!(
            "s3_endpoint = \"{}\"\ns3_region = \"{REGION}\"\ns3_path_style = true\n\
             s3_access_key_id = \"{ACCESS_KEY}\"\ns3_secret_access_key = \"{SECRET_KEY}\"\n",
            self.endpoint
        )
    }

    /// `AWS_*` variables that point a process at this endpoint.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", REGION.into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false".into()),
        ]
    }

    /// An object_store client for the bucket.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .with_virtual_hosted_style_request(false)
                .with_bucket_name(&self.bucket)
                .with_region(REGION)
                .with_access_key_id(ACCESS_KEY)
                .with_secret_access_key(SECRET_KEY)
                .build()
                .expect("S3 client"),
        )
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
