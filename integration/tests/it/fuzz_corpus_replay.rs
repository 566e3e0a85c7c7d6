//! Replays the committed fuzz corpora as ordinary tests (no cargo-fuzz, no
//! nightly): every file under `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` goes through the same function the fuzz
//! target calls ([`rekey::fuzzing`]), each under a time limit. A panic, a
//! failed invariant or a hang fails the test and names the file.

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

/// Longest one input may take (libFuzzer ran them with `-timeout=10`; debug
/// builds are slower, and the machine is shared).
const LIMIT: Duration = Duration::from_secs(20);

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("reading a corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `f(data)` on its own thread; `Err` says why it failed.
fn run_one(f: fn(&[u8]), data: Vec<u8>, limit: Duration) -> Result<Duration, String> {
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    std::thread::Builder::new()
        .name("fuzz-replay".into())
        .spawn(move || {
            let outcome = std::panic::catch_unwind(|| f(&data));
            let _ = tx.send(outcome.map_err(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic without a message".into())
            }));
        })
        .expect("spawning a replay thread");
    match rx.recv_timeout(limit) {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(message)) => Err(format!("panicked: {message}")),
        Err(_) => Err(format!("took longer than {limit:?} (a hang)")),
    }
}

#[test]
fn every_corpus_input_replays_without_panic_or_hang() {
    let dir = fuzz_dir();
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for (name, f) in rekey::fuzzing::TARGETS {
        let corpus = inputs(&dir.join("corpus").join(name));
        let regressions = inputs(&dir.join("regressions").join(name));
        assert!(
            corpus.len() >= 5,
            "fuzz/corpus/{name}/ holds {} inputs: the committed corpus is missing \
             (seed with fuzz/seed.sh, then `RUSTC_BOOTSTRAP=1 cargo fuzz run {name}`)",
            corpus.len()
        );
        let mut slowest = Duration::ZERO;
        for path in corpus.iter().chain(&regressions) {
            let data = std::fs::read(path).expect("reading a corpus file");
            match run_one(*f, data, LIMIT) {
                Ok(took) => slowest = slowest.max(took),
                Err(why) => failures.push(format!("{}: {why}", path.display())),
            }
        }
        summary.push(format!(
            "{name:<18} {:>5} corpus + {:>2} regression inputs, slowest {slowest:.2?}",
            corpus.len(),
            regressions.len()
        ));
    }
    println!("{}", summary.join("\n"));
    assert!(
        failures.is_empty(),
        "fuzz inputs failed:\n{}",
        failures.join("\n")
    );
}

/// The fuzzer and the replay run the same bodies: every target in
/// `rekey::fuzzing::TARGETS` has a fuzz target calling it, and every fuzz
/// target is replayed.
#[test]
fn fuzz_targets_and_replayed_bodies_match() {
    let dir = fuzz_dir();
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let mut declared: Vec<String> = inputs(&dir.join("fuzz_targets"))
        .iter()
        .map(|p| {
            let name = p.file_stem().expect("a name").to_string_lossy().to_string();
            let source = std::fs::read_to_string(p).expect("a fuzz target");
            assert!(
                source.contains(&format!("rekey::fuzzing::{name}(")),
                "{} does not call rekey::fuzzing::{name}",
                p.display()
            );
            assert!(
                manifest.contains(&format!("name = \"{name}\"")),
                "fuzz/Cargo.toml does not declare the target {name}"
            );
            name
        })
        .collect();
    declared.sort();
    let mut replayed: Vec<String> = rekey::fuzzing::TARGETS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    replayed.sort();
    assert_eq!(declared, replayed);
}

/// The replay can fail: a body that panics on one input is reported with
/// that input's file, and a body that never returns is reported as a hang.
#[test]
fn the_replay_reports_panics_and_hangs() {
    fn panics_on_x(data: &[u8]) {
        assert!(!data.contains(&b'X'), "found an X");
    }
    let limit = Duration::from_secs(5);
    assert!(run_one(panics_on_x, b"abc".to_vec(), limit).is_ok());
    let err = run_one(panics_on_x, b"aXc".to_vec(), limit).unwrap_err();
    assert!(err.contains("found an X"), "{err}");
    fn hangs(_: &[u8]) {
        std::thread::sleep(Duration::from_secs(3));
    }
    let err = run_one(hangs, Vec::new(), Duration::from_millis(300)).unwrap_err();
    assert!(err.contains("hang"), "{err}");
}
