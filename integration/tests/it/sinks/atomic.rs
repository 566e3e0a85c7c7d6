//! Torn reads: readers load certificate and key in a tight loop while the
//! file sink is published hundreds of times (new keys every time, a bundle
//! republish now and then), starting from a directory the older sink wrote
//! with regular files. What the `..data` layout promises, checked:
//!
//! - no name a consumer opens (`tls.crt`, `tls.key`, `ca.crt`,
//!   `.rekey-version`) is ever missing, not even during the upgrade;
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
        atomic::{AtomicBool, Ordering},
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

fn must_read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{} missing or unreadable: {e}", path.display()))
}

#[derive(Debug, Default)]
struct TopLevel {
    reads: u64,
    consistent: u64,
    straddled: u64,
    torn_when_straddled: u64,
    versions: BTreeSet<String>,
}

/// Reads the top-level paths, as a consumer does, with the marker check.
fn top_level_reader(dir: PathBuf, stop: Arc<AtomicBool>) -> TopLevel {
    let mut r = TopLevel::default();
    while !stop.load(Ordering::Relaxed) {
        let v1 = must_read(&dir.join(".rekey-version"));
        let crt = must_read(&dir.join("tls.crt"));
        let key = must_read(&dir.join("tls.key"));
        let ca = must_read(&dir.join("ca.crt"));
        let v2 = must_read(&dir.join(".rekey-version"));
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
fn resolving_reader(dir: PathBuf, stop: Arc<AtomicBool>) -> Resolving {
    let mut r = Resolving::default();
    while !stop.load(Ordering::Relaxed) {
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
                // Only possible if at least two publishes removed the
                // directory while this reader was descheduled.
                let now = std::fs::read_link(dir.join("..data")).unwrap();
                assert_ne!(
                    now,
                    target,
                    "a file of the current data directory is missing: {:?} {:?}",
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
    let top = {
        let (dir, stop) = (dir.clone(), stop.clone());
        std::thread::spawn(move || top_level_reader(dir, stop))
    };
    let sink = FileSink::new(dir.clone());
    let bundle_both =
        TrustBundle::from_pem(&format!("{}{}", ca.cert_pem(), other.cert_pem())).unwrap();
    let mut resolving = None;
    let mut republished = 0;
    for version in 2..=ROTATIONS + 1 {
        let (m, not_after) = fixtures::tls_material(&ca, "web.torn.svc");
        sink.publish_blocking(&Publication {
            credential: "cert/torn/web",
            version,
            not_after,
            material: &m,
            adopt: false,
        })
        .unwrap();
        if resolving.is_none() {
            let (dir, stop) = (dir.clone(), stop.clone());
            resolving = Some(std::thread::spawn(move || resolving_reader(dir, stop)));
        }
        if version % 25 == 0 {
            let outcome = sink
                .publish_bundle_blocking(&BundleUpdate {
                    credential: "cert/torn/web",
                    version,
                    bundle: &bundle_both,
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
