//! Bodies of the fuzz targets, shared by `fuzz/` (cargo-fuzz, libFuzzer) and
//! the corpus replay test (`integration/tests/it/fuzz_corpus_replay.rs`), so the
//! two can never drift apart.
//!
//! ```text
//!   fuzz/fuzz_targets/<target>.rs ──┐
//!                                   ├──► rekey::fuzzing::<target>(&[u8])  (panics = bug)
//!   integration replay test ────────┘        │
//!       (every file of fuzz/corpus/<target>/) └──► the product's own parsers
//! ```
//!
//! Each function feeds arbitrary bytes to one parser of untrusted input and
//! checks what must hold whatever the bytes: no panic, errors that say
//! something, no secret material in `Debug` output or error text, and
//! round trips where the format has them. A panic (including a failed
//! assertion here) is a finding.

use std::{collections::BTreeMap, path::Path};

use secrecy::{ExposeSecret, SecretString};

use crate::{
    backup::{
        format::{HEADER_LEN, Header, PREAMBLE_LEN, parse_preamble},
        kek::Kek,
        stream::{self, DecryptOptions, EncryptOptions, Source},
    },
    config::Config,
    etcd::{
        encryption::{self, EncryptionConfiguration, GroupResource},
        values::{self, Format, Keyring},
    },
};

/// A fuzz target's body: panics on a finding.
pub type Body = fn(&[u8]);

/// Every target, by the name of its fuzz target and corpus directory.
pub const TARGETS: &[(&str, Body)] = &[
    ("config", config),
    ("encryption_config", encryption_config),
    ("etcd_values", etcd_values),
    ("backup_header", backup_header),
    ("backup_stream", backup_stream),
    ("api_request", api_request),
];

/// The fixed KEK the backup targets decrypt with (raw bytes; seeds are
/// encrypted under it).
pub const FUZZ_KEK: [u8; 32] = *b"rekey-fuzz-kek-0123456789abcdef!";

/// A second KEK, for re-wrapping.
const OTHER_KEK: [u8; 32] = [0x5a; 32];

/// The fixed EncryptionConfiguration the etcd value target judges with: every
/// provider type, keys of every length (the etcd test suite's keys).
pub const FUZZ_ENCRYPTION_CONFIG: &str = r#"apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources:
      - secrets
    providers:
      - aesgcm:
          keys:
            - name: k1
              secret: AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=
            - name: k2
              secret: AgICAgICAgICAgICAgICAg==
      - aescbc:
          keys:
            - name: cbc1
              secret: AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwM=
            - name: cbc2
              secret: BQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUF
      - secretbox:
          keys:
            - name: box1
              secret: BAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQ=
      - kms:
          apiVersion: v2
          name: vault
          endpoint: unix:///var/run/kms.sock
      - identity: {}
  - resources:
      - configmaps
    providers:
      - identity: {}
      - aesgcm:
          keys:
            - name: k1
              secret: AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=
"#;

/// Resources every parsed configuration is asked about.
const RESOURCES: &[&str] = &["secrets", "configmaps", "*.", "*.*", "deployments.apps"];

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// `rekey.toml`: [`Config::parse`]. The input is the file's text, optionally
/// followed by a NUL byte and `NAME=value` lines used as the environment.
pub fn config(data: &[u8]) {
    let (file, env_text) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let file = text(file);
    let env: BTreeMap<String, String> = text(env_text)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match Config::parse(&file, &env, Path::new("/etc/rekey")) {
        Ok(config) => {
            // The database URL (it holds a password) never shows in Debug.
            if let Some(url) = &config.database.url {
                let url = url.expose_secret();
                let shown = format!("{config:?}");
                assert!(
                    url.len() < 12 || !shown.contains(url),
                    "Config's Debug output shows the database URL"
                );
            }
            // What was accepted validates again.
            config.validate().expect("a parsed config validates again");
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(!shown.trim().is_empty(), "an empty config error");
        }
    }
}

/// The `EncryptionConfiguration` file: [`encryption::parse`]; a valid one is
/// also turned into keyrings and used on a few values, so every key that
/// validation accepts must really construct a cipher.
pub fn encryption_config(data: &[u8]) {
    let text = text(data);
    match encryption::parse(&text) {
        Ok(config) => {
            let shown = format!("{config:?}");
            for rule in &config.rules {
                for provider in &rule.providers {
                    for key in &provider.keys {
                        let secret = key.secret.expose_secret();
                        assert!(
                            secret.len() < 8 || !contains_secret(&shown, secret),
                            "EncryptionConfiguration's Debug output shows a key"
                        );
                    }
                }
            }
            exercise_keyrings(&config, data);
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error without findings");
            for e in &errors.0 {
                assert!(!e.to_string().trim().is_empty(), "an empty finding");
            }
        }
    }
}

fn exercise_keyrings(config: &EncryptionConfiguration, data: &[u8]) {
    for r in RESOURCES {
        let ring = Keyring::new(config, &GroupResource::parse(r));
        let _ = ring.write_label();
        let _ = ring.reads_plaintext();
        for t in config.transformers_for(&GroupResource::parse(r)) {
            let mut value = t.prefix().into_bytes();
            value.extend_from_slice(&data[..data.len().min(96)]);
            let _ = ring.judge(b"/registry/secrets/ns/name", &value, true);
            let _ = ring.judge(b"/registry/secrets/ns/name", &value, false);
        }
    }
}

fn contains_secret(haystack: &str, secret: &[u8]) -> bool {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    haystack.contains(&b64)
        || haystack.contains(&hex::encode(secret))
        || std::str::from_utf8(secret).is_ok_and(|s| haystack.contains(s))
}

thread_local! {
    static KEYRINGS: Vec<Keyring> = {
        let config = encryption::parse(FUZZ_ENCRYPTION_CONFIG).expect("the fuzz encryption config is valid");
        ["secrets", "configmaps", "pods"]
            .iter()
            .map(|r| Keyring::new(&config, &GroupResource::parse(r)))
            .collect()
    };
}

/// Stored etcd values: [`values::classify`], [`values::kubernetes_kind`] and
/// [`Keyring::judge`] (decryption with every provider type). The first byte
/// picks the resource and whether to open; the rest is the value, stored
/// under `/registry/secrets/default/fuzz`.
pub fn etcd_values(data: &[u8]) {
    let Some((&selector, value)) = data.split_first() else {
        return;
    };
    let format = values::classify(value);
    let _ = format.label();
    let _ = format.provider();
    let _ = values::kubernetes_kind(value);
    let etcd_key = b"/registry/secrets/default/fuzz";
    KEYRINGS.with(|rings| {
        let ring = &rings[usize::from(selector % 3)];
        let open = selector & 0x80 != 0;
        let verdict = ring.judge(etcd_key, value, open);
        assert!(
            !(verdict.verified && verdict.problem.is_some()),
            "a value both verified and unreadable: {verdict:?}"
        );
        assert!(
            !(verdict.verified && matches!(verdict.format, Format::Plaintext(_))),
            "a plaintext value counted as verified"
        );
        if !open {
            assert!(!verdict.verified, "verified without opening");
        }
        // Judging twice gives the same answer.
        assert_eq!(verdict, ring.judge(etcd_key, value, open));
    });
}

/// Backup headers: [`parse_preamble`], [`Header::parse`], [`Header::unwrap`]
/// with the fuzz KEK, re-wrapping, and [`Kek::parse`] of the same bytes as a
/// KEK file.
pub fn backup_header(data: &[u8]) {
    if let Ok(kek) = Kek::parse(data) {
        assert!(!format!("{kek:?}").contains(&hex::encode(data)));
    }
    if data.len() >= PREAMBLE_LEN {
        let mut pre = [0u8; PREAMBLE_LEN];
        pre.copy_from_slice(&data[..PREAMBLE_LEN]);
        let _ = parse_preamble(&pre);
    }
    if data.len() < HEADER_LEN {
        return;
    }
    let mut bytes = [0u8; HEADER_LEN];
    bytes.copy_from_slice(&data[..HEADER_LEN]);
    let Ok(header) = Header::parse(&bytes) else {
        return;
    };
    assert_eq!(
        header.encode(),
        bytes,
        "a parsed header encodes to other bytes"
    );
    let _ = format!("{header:?}");
    let kek = fuzz_kek();
    match header.unwrap(&kek) {
        Ok(_key) => {
            let _ = header.check_chunk_size();
            let other = Kek::parse(&OTHER_KEK).expect("32 raw bytes");
            let moved = header
                .rewrap(&kek, &other)
                .expect("an authentic header rewraps");
            assert!(
                moved.unwrap(&other).is_ok(),
                "a rewrapped header does not open"
            );
            assert!(
                moved.unwrap(&kek).is_err(),
                "the old KEK still opens a rewrapped header"
            );
            assert_eq!(moved.backup_id, header.backup_id);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

fn fuzz_kek() -> Kek {
    Kek::parse(&FUZZ_KEK).expect("32 raw bytes")
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
}

fn source(data: Vec<u8>) -> Source {
    Box::new(std::io::Cursor::new(data))
}

/// Backup objects: [`stream::decrypt`] with the fuzz KEK.
///
/// Input starting with the magic `REKEYBAK` is decrypted as a stored object
/// (the seeds are real backups under [`FUZZ_KEK`]): whatever it holds,
/// decryption ends with `Ok` or an error, never a panic or a hang, and never
/// writes more plaintext than it reports as authentic.
///
/// Any other input is a tamper test: `[mode][position: 2 bytes][plaintext…]`
/// is encrypted with 1 KiB chunks, must decrypt to itself, and must be
/// refused after one bit flip, truncation or extension chosen by the header
/// bytes.
pub fn backup_stream(data: &[u8]) {
    RUNTIME.with(|rt| rt.block_on(backup_stream_async(data)));
}

async fn backup_stream_async(data: &[u8]) {
    let kek = fuzz_kek();
    let progress = crate::backup::progress::Progress::hidden();
    if data.starts_with(b"REKEYBAK") {
        let mut out = Vec::new();
        match stream::decrypt(
            source(data.to_vec()),
            &mut out,
            &kek,
            &DecryptOptions::default(),
            &progress,
        )
        .await
        {
            Ok(d) => {
                assert_eq!(d.plaintext_bytes, out.len() as u64);
                assert_eq!(d.ciphertext_bytes, data.len() as u64);
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        return;
    }
    let Some((&[mode, hi, lo], plain)) = data.split_first_chunk::<3>() else {
        return;
    };
    let opts = EncryptOptions {
        chunk_size: 1024,
        backup_id: uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        hash: true,
    };
    let mut sealed = Vec::new();
    let enc = stream::encrypt(source(plain.to_vec()), &mut sealed, &kek, &opts, &progress)
        .await
        .expect("encrypting to memory cannot fail");
    assert_eq!(enc.ciphertext_bytes, sealed.len() as u64);
    let opts_dec = DecryptOptions {
        expect_id: Some(opts.backup_id),
        hash: true,
    };
    let mut back = Vec::new();
    let dec = stream::decrypt(
        source(sealed.clone()),
        &mut back,
        &kek,
        &opts_dec,
        &progress,
    )
    .await
    .expect("an intact backup decrypts");
    assert_eq!(back, plain, "the round trip changed the plaintext");
    assert_eq!(dec.sha256, enc.sha256);
    let pos = usize::from(u16::from_be_bytes([hi, lo])) % sealed.len();
    let mut bad = sealed.clone();
    match mode % 3 {
        0 => bad[pos] ^= 1 << (mode / 3 % 8),
        1 => bad.truncate(pos),
        _ => bad.extend_from_slice(&sealed[pos..]),
    }
    let mut out = Vec::new();
    let result = stream::decrypt(source(bad), &mut out, &kek, &opts_dec, &progress).await;
    assert!(
        result.is_err(),
        "a damaged backup decrypted (mode {mode}, position {pos})"
    );
}

/// The admin API's parsing of a request before any handler runs: the query
/// strings of `/v1/audit`, `/v1/credentials/{name}/rotate` and `/v1/backups`,
/// the "rotate now" JSON body with its `Content-Type`, `Authorization:
/// Bearer`, `x-request-id`, and the subject of a client certificate (DER, as
/// the TLS handshake hands it over). The input is up to four lines: URI,
/// Content-Type, Authorization (also tried as a request id), then the body;
/// the whole input is also tried as a certificate.
pub fn api_request(data: &[u8]) {
    use axum::{
        body::Bytes,
        extract::Query,
        http::{HeaderMap, HeaderValue, Uri, header},
    };

    use crate::api::{auth, extract, middleware, problem::HttpError, views};

    let mut parts = data.splitn(4, |&b| b == b'\n');
    let uri = parts.next().unwrap_or_default();
    let content_type = parts.next().unwrap_or_default();
    let authorization = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();

    if let Ok(uri) = Uri::try_from(uri) {
        if let Ok(Query(q)) = Query::<views::AuditQuery>::try_from_uri(&uri) {
            let _ = (q.actor, q.action, q.target, q.after, q.limit);
        }
        let _ = Query::<views::RotateQuery>::try_from_uri(&uri);
        let _ = Query::<views::BackupsQuery>::try_from_uri(&uri);
    }

    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    let body = Bytes::copy_from_slice(body);
    match extract::parse_body::<views::RotateRequest>(&headers, &body) {
        Ok(None) => assert!(
            body.iter().all(u8::is_ascii_whitespace),
            "a non-empty body read as no body"
        ),
        Ok(Some(request)) => {
            // What was accepted survives a round trip unchanged.
            let again: views::RotateRequest =
                serde_json::from_slice(&serde_json::to_vec(&request).expect("serialises"))
                    .expect("re-parses");
            assert_eq!(again.reason, request.reason);
        }
        Err(HttpError::BadRequest(m)) | Err(HttpError::UnsupportedMediaType(m)) => {
            assert!(!m.is_empty(), "an empty error message");
        }
        Err(other) => panic!("unexpected rejection of a body: {other:?}"),
    }

    if let Ok(text) = std::str::from_utf8(authorization) {
        if let Some(token) = auth::bearer_token(Some(text)) {
            let secret = token.expose_secret();
            assert!(!secret.is_empty() && secret.trim() == secret);
            // Debug shows the same redaction whatever the token.
            assert_eq!(
                format!("{token:?}"),
                format!("{:?}", SecretString::from("x".to_string())),
                "a bearer token shown by Debug"
            );
        }
        if middleware::valid_request_id(text) {
            assert!(text.len() <= 128 && !text.contains(['\r', '\n', ' ']));
        }
    }

    if let Some(identity) = auth::identity_from_der(data) {
        // A role is only ever read from a subject with exactly one CN.
        assert!(identity.common_name.is_none() || identity.common_names == 1);
        let _ = identity.subject;
    }

    api_input(uri, authorization, body.as_ref());
}

/// The checks of names, query strings, reasons and idempotency keys
/// (`api::input`) and the audit log's bounds: whatever is accepted obeys
/// the rules, whatever is shown or stored is bounded and has no control
/// characters.
fn api_input(target: &[u8], key: &[u8], text: &[u8]) {
    use crate::{api::input, store::audit};

    let target = String::from_utf8_lossy(target);
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    for segment in path.split('/') {
        let decoded = input::decode(segment, false);
        if let Ok(name) = input::check_name(&decoded) {
            assert!(!name.is_empty() && name.len() <= input::MAX_NAME);
            assert!(!name.chars().any(char::is_control), "{name:?}");
        }
        let shown = input::shown(&decoded);
        assert!(shown.len() <= audit::MAX_TARGET && !shown.chars().any(char::is_control));
    }
    if input::check_query(query).is_ok() {
        for pair in query.split('&') {
            let value = pair.split_once('=').map_or("", |(_, v)| v);
            let value = input::decode(value, true);
            let value = std::str::from_utf8(&value).expect("an accepted value is UTF-8");
            assert!(value.len() <= input::MAX_QUERY_VALUE);
            assert!(!value.chars().any(char::is_control));
        }
    }
    if let Ok(k) = input::idempotency_key(key) {
        assert!(k.len() <= input::MAX_IDEMPOTENCY_KEY && k.bytes().all(|b| b.is_ascii_graphic()));
    }
    let text = String::from_utf8_lossy(text);
    if input::check_reason(&text).is_ok() {
        assert!(text.len() <= input::MAX_REASON);
    }
    for max in [audit::MAX_ACTION, audit::MAX_TARGET, audit::MAX_REASON] {
        let b = audit::bounded(&text, max);
        assert!(b.len() <= max && !b.contains('\0'), "{max}: {b:?}");
    }
    let event = audit::NewEvent::new(text.as_ref(), "x", text.as_ref(), audit::Outcome::Denied);
    let details = audit::bounded_details(&serde_json::json!({ "error": text }));
    assert!(details.to_string().len() <= audit::MAX_DETAILS + 64);
    let b = event.bounded();
    assert!(b.actor.len() <= audit::MAX_ACTOR && b.target.len() <= audit::MAX_TARGET);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_takes_empty_and_small_inputs() {
        for (name, f) in TARGETS {
            for input in [
                &b""[..],
                b"\0",
                b"REKEYBAK",
                b"k8s:enc:aesgcm:v1:k1:",
                b"[database]",
            ] {
                f(input);
                let _ = name;
            }
        }
    }

    #[test]
    fn the_tamper_mode_round_trips_and_refuses_damage() {
        for mode in 0..6u8 {
            let mut input = vec![mode, 0x01, 0x23];
            input.extend((0..3000u32).map(|i| (i % 251) as u8));
            backup_stream(&input);
        }
    }

    #[test]
    fn the_fuzz_encryption_config_parses() {
        assert!(encryption::parse(FUZZ_ENCRYPTION_CONFIG).is_ok());
    }
}
