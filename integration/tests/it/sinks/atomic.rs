//! Torn reads: readers load certificate and key in a tight loop while the
//! file sink is published hundreds of times (new keys every time, a bundle
//! republish now and then), starting from a directory the older sink wrote
//! with regular files. What the `..data` layout promises, checked:
//!
//! - no name a consumer opens (`tls.crt`, `tls.key`, `ca.crt`,
//!   `.rekey-version`) is ever missing, not even during the upgrade;
//!   one exception is inherent in the layout (the kubelet's has it too):
//!   a lookup that resolved `..data` and then stalled while two more
//!   publishes ran (the second removes the directory it resolved). The
//!   writer counts publishes started and finished, so a missing name is
//!   excused only when at least two publishes started after the last one
//!   that had finished before the read began; anything else fails;
//! - a reader that resolves `..data` once and reads inside that directory
//!   never sees a key beside another version's certificate;
//! - a reader that reads the top-level paths and checks `.rekey-version`
//!   before and after never sees a mismatched pair when the marker did not
//!   change.
//!
//! Two separate `open`s of top-level paths can straddle a swap whatever
//! the layout; the test counts how often that happened and how many of
//! those pairs really were mismatched (so it proves it looked).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use chrono::{TimeDelta, Utc};
use rekey::{
    issue::{CertAuthority, KeyType, TrustBundle},
    sink::{BundleOutcome, BundleUpdate, Material, Publication, file::FileSink},
};
use rekey_integration::kube::fixtures;
use secrecy::ExposeSecret;

/// Whether `key_pem` is the private key of the first certificate in `crt_pem`.
fn pair_matches(crt_pem: &[u8], key_pem: &[u8]) -> bool {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(crt_pem) else {
        return false;
    };
    let Ok(cert) = pem.parse_x509() else {
        return false;
    };
    let Ok(key) = rcgen::KeyPair::from_pem(&String::from_utf8_lossy(key_pem)) else {
        return false;
    };
    cert.public_key().subject_public_key.data.as_ref() == rcgen::PublicKeyData::der_bytes(&key)
}

/// Publishes (certificate or bundle) the writer started and finished.
#[derive(Debug, Default)]
struct Publishes {
    started: AtomicU64,
    finished: AtomicU64,
}

impl Publishes {
    /// Runs one publish, counted.
    fn run<T>(&self, publish: impl FnOnce() -> T) -> T {
        self.started.fetch_add(1, Ordering::SeqCst);
        let out = publish();
        self.finished.fetch_add(1, Ordering::SeqCst);
        out
    }

    /// Taken before a read begins.
    fn before_read(&self) -> u64 {
        self.finished.load(Ordering::SeqCst)
    }

    /// Whether a name missing now can only be a lookup that stalled across
    /// two publishes: a directory current when the read began is removed
    /// by the second publish after the one that replaced it, and neither
    /// had finished when the read began.
    fn two_started_since(&self, before: u64) -> bool {
        self.started.load(Ordering::SeqCst) >= before + 2
    }
}

/// Reads `path`; `None` when it is missing because the lookup stalled
/// across two publishes (see [`Publishes::two_started_since`]).
fn must_read(path: &Path, publishes: &Publishes, before: u64) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound && publishes.two_started_since(before) =>
        {
            None
        }
        Err(e) => panic!(
            "{} missing or unreadable with at most one publish since the read began: {e}",
            path.display()
        ),
    }
}

#[derive(Debug, Default)]
struct TopLevel {
    reads: u64,
    consistent: u64,
    straddled: u64,
    torn_when_straddled: u64,
    stalled: u64,
    versions: BTreeSet<String>,
}

/// Reads the top-level paths, as a consumer does, with the marker check.
fn top_level_reader(dir: PathBuf, stop: Arc<AtomicBool>, publishes: Arc<Publishes>) -> TopLevel {
    let mut r = TopLevel::default();
    while !stop.load(Ordering::Relaxed) {
        let before = publishes.before_read();
        let read = |name: &str| must_read(&dir.join(name), &publishes, before);
        let (Some(v1), Some(crt), Some(key), Some(ca), Some(v2)) = (
            read(".rekey-version"),
            read("tls.crt"),
            read("tls.key"),
            read("ca.crt"),
            read(".rekey-version"),
        ) else {
            r.stalled += 1;
            continue;
        };
        assert!(ca.starts_with(b"-----BEGIN"), "ca.crt is a bundle");
        r.reads += 1;
        if v1 == v2 {
            r.consistent += 1;
            assert!(
                pair_matches(&crt, &key),
                "a mismatched certificate and key under one version marker ({})",
                String::from_utf8_lossy(&v1).trim()
            );
            r.versions
                .insert(String::from_utf8_lossy(&v1).trim().to_string());
        } else {
            r.straddled += 1;
            if !pair_matches(&crt, &key) {
                r.torn_when_straddled += 1;
            }
        }
    }
    r
}

#[derive(Debug, Default)]
struct Resolving {
    reads: u64,
    retried: u64,
    data_dirs: BTreeSet<String>,
}

/// Resolves `..data` once per read and reads inside that directory.
fn resolving_reader(dir: PathBuf, stop: Arc<AtomicBool>, publishes: Arc<Publishes>) -> Resolving {
    let mut r = Resolving::default();
    while !stop.load(Ordering::Relaxed) {
        let before = publishes.before_read();
        let target = std::fs::read_link(dir.join("..data"))
            .expect("..data is always there once the sink is upgraded");
        let data = dir.join(&target);
        let files = (
            std::fs::read(data.join("tls.crt")),
            std::fs::read(data.join("tls.key")),
        );
        let (crt, key) = match files {
            (Ok(c), Ok(k)) => (c, k),
            (a, b) => {
                // Only possible if two more publishes ran while this reader
                // was descheduled: the second removes the directory.
                assert!(
                    publishes.two_started_since(before),
                    "a file of {} is missing with at most one publish since: {:?} {:?}",
                    target.display(),
                    a.err(),
                    b.err()
                );
                r.retried += 1;
                continue;
            }
        };
        r.reads += 1;
        r.data_dirs.insert(target.to_string_lossy().into_owned());
        assert!(
            pair_matches(&crt, &key),
            "a mismatched pair inside {}",
            target.display()
        );
    }
    r
}

#[test]
fn readers_never_see_a_torn_pair_or_a_missing_file_across_hundreds_of_rotations() {
    const ROTATIONS: i64 = 300;
    let ca = fixtures::test_ca();
    let (other, _) = CertAuthority::generate(
        "next CA",
        KeyType::EcdsaP256,
        TimeDelta::days(1),
        Utc::now(),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("web");
    std::fs::create_dir(&dir).unwrap();
    // The older sink's layout: regular files.
    let (first, _) = fixtures::tls_material(&ca, "web.torn.svc");
    let Material::Certificate {
        chain_pem,
        key_pem,
        ca_pem,
    } = &first
    else {
        unreachable!()
    };
    std::fs::write(dir.join("tls.crt"), chain_pem).unwrap();
    std::fs::write(dir.join("tls.key"), key_pem.expose_secret()).unwrap();
    std::fs::write(dir.join("ca.crt"), ca_pem).unwrap();
    std::fs::write(dir.join(".rekey-version"), "1\n").unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let publishes = Arc::new(Publishes::default());
    let top = {
        let (dir, stop) = (dir.clone(), stop.clone());
        let publishes = publishes.clone();
        std::thread::spawn(move || top_level_reader(dir, stop, publishes))
    };
    let sink = FileSink::new(dir.clone());
    let bundle_both =
        TrustBundle::from_pem(&format!("{}{}", ca.cert_pem(), other.cert_pem())).unwrap();
    let mut resolving = None;
    let mut republished = 0;
    for version in 2..=ROTATIONS + 1 {
        let (m, not_after) = fixtures::tls_material(&ca, "web.torn.svc");
        publishes
            .run(|| {
                sink.publish_blocking(&Publication {
                    credential: "cert/torn/web",
                    version,
                    number: version,
                    not_after,
                    material: &m,
                    adopt: false,
                })
            })
            .unwrap();
        if resolving.is_none() {
            let (dir, stop) = (dir.clone(), stop.clone());
            let publishes = publishes.clone();
            resolving = Some(std::thread::spawn(move || {
                resolving_reader(dir, stop, publishes)
            }));
        }
        if version % 25 == 0 {
            let outcome = publishes
                .run(|| {
                    sink.publish_bundle_blocking(&BundleUpdate {
                        credential: "cert/torn/web",
                        version,
                        bundle: &bundle_both,
                    })
                })
                .unwrap();
            assert_eq!(outcome, BundleOutcome::Published);
            republished += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let top = top.join().expect("the top-level reader");
    let resolving = resolving.unwrap().join().expect("the resolving reader");
    println!(
        "{ROTATIONS} rotations + {republished} bundle republishes; top-level reader: {top:?}; \
         resolving reader: {} reads over {} data directories, {} retries",
        resolving.reads,
        resolving.data_dirs.len(),
        resolving.retried
    );
    // A lookup stalled across two publishes is rare, not the rule.
    assert!(top.stalled * 100 < top.reads, "{top:?}");
    // It looked: thousands of reads over many versions.
    assert!(
        top.consistent > ROTATIONS as u64 && top.versions.len() >= 10,
        "{top:?}"
    );
    assert!(
        resolving.reads > ROTATIONS as u64 && resolving.data_dirs.len() >= 10,
        "{} reads, {} directories",
        resolving.reads,
        resolving.data_dirs.len()
    );
    // The end state: the last version, its bundle, two data directories.
    assert_eq!(
        sink.published_version_blocking().unwrap(),
        Some(ROTATIONS + 1)
    );
    let dirs = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("..") && n != "..data"
        })
        .count();
    assert_eq!(dirs, 2, "the current and the previous data directory");
}
