//! `rekey backup encrypt` / `decrypt` through the real binary, on local files:
//! round trips at every size class, and every kind of damage rejected with a
//! message saying which, exit code 2 and no output file left behind.

use std::path::{Path, PathBuf};

use super::util::{kek_file, ls, pattern, rekey_json, rekey_ok, rekey_run};

const MIB: usize = 1 << 20;
/// The chunk size of the damage tests (small, so objects are small).
const C: usize = 1024;
const HEADER: usize = 107;
const RECORD: usize = C + 20;

struct Case {
    dir: tempfile::TempDir,
    kek: PathBuf,
}

impl Case {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let kek = kek_file(dir.path(), "kek");
        Self { dir, kek }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn s(p: &Path) -> &str {
        p.to_str().expect("utf-8 path")
    }

    /// Encrypts `data` with `chunk`; returns the ciphertext.
    fn encrypt(&self, data: &[u8], chunk: &str, name: &str) -> Vec<u8> {
        let plain = self.path(&format!("{name}.plain"));
        std::fs::write(&plain, data).expect("write");
        let out = self.path(name);
        let report = rekey_json(
            &[
                "backup",
                "encrypt",
                "--kek-file",
                Self::s(&self.kek),
                "--in",
                Self::s(&plain),
                "--out",
                Self::s(&out),
                "--chunk-size",
                chunk,
                "--force",
            ],
            &[],
        );
        assert_eq!(report["plaintext_bytes"], data.len());
        std::fs::remove_file(&plain).expect("rm");
        std::fs::read(&out).expect("read ciphertext")
    }

    /// Decrypts `ciphertext` to a file; on failure returns (exit code, stderr)
    /// after checking nothing was left in the output directory.
    fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, (i32, String)> {
        let src = self.path("in.rkb");
        std::fs::write(&src, ciphertext).expect("write");
        let outdir = self.path("out");
        std::fs::create_dir_all(&outdir).expect("mkdir");
        let out = outdir.join("restored");
        let (code, stdout, stderr) = rekey_run(
            &[
                "backup",
                "decrypt",
                "--kek-file",
                Self::s(&self.kek),
                "--from",
                Self::s(&src),
                "--out",
                Self::s(&out),
            ],
            &[],
        );
        if code == 0 {
            let data = std::fs::read(&out).expect("read plaintext");
            std::fs::remove_file(&out).expect("rm");
            return Ok(data);
        }
        assert!(
            ls(&outdir).is_empty(),
            "a failed decrypt left {:?} behind (stderr: {stderr})",
            ls(&outdir)
        );
        assert!(stdout.is_empty(), "{stdout}");
        Err((code, stderr))
    }

    fn expect_rejected(&self, ciphertext: &[u8], class: &str, what: &str) {
        match self.decrypt(ciphertext) {
            Ok(_) => panic!("{what}: accepted"),
            Err((code, stderr)) => {
                assert_eq!(code, 2, "{what}: exit code ({stderr})");
                assert!(
                    stderr.contains(class),
                    "{what}: expected `{class}` in: {stderr}"
                );
                assert!(
                    stderr.contains("no output file was written"),
                    "{what}: {stderr}"
                );
            }
        }
    }
}

#[test]
fn round_trips_at_every_size_class() {
    let case = Case::new();
    for size in [0, 1, MIB - 1, MIB, MIB + 1, 3 * MIB + 7, 100 * MIB] {
        let data = pattern(size, size as u64 + 1);
        let ct = case.encrypt(&data, "1MiB", "rt.rkb");
        let chunks = if size == 0 { 1 } else { size.div_ceil(MIB) };
        assert_eq!(ct.len(), HEADER + chunks * 20 + size, "size {size}");
        let back = case
            .decrypt(&ct)
            .unwrap_or_else(|e| panic!("size {size}: {e:?}"));
        assert!(back == data, "size {size}: plaintext differs");
    }
}

#[test]
fn a_flipped_byte_in_every_position_class_is_rejected() {
    let case = Case::new();
    let data = pattern(3 * C + 7, 7);
    let ct = case.encrypt(&data, "1KiB", "f.rkb");
    assert_eq!(ct.len(), HEADER + 3 * RECORD + 7 + 20);
    let chunk = |i: usize| HEADER + i * RECORD;
    let last = chunk(3);
    let positions = [
        (0, "magic", "not a rekey backup"),
        (9, "format version", "unsupported backup format version"),
        (11, "header length", "tampered"),
        (20, "backup id", "tampered"),
        (30, "chunk size", "tampered"),
        (35, "nonce prefix", "tampered"),
        (42, "KEK id", "tampered"),
        (50, "wrap nonce", "tampered"),
        (70, "wrapped data key", "tampered"),
        (100, "wrap tag", "tampered"),
        (chunk(0) + 2, "chunk 0 length", "tampered"),
        (chunk(0) + 4 + 10, "chunk 0 body", "tampered"),
        (chunk(0) + 4 + C + 3, "chunk 0 tag", "tampered"),
        (chunk(1) + 4 + 500, "chunk 1 body", "tampered"),
        (chunk(1) + 4 + C + 15, "chunk 1 tag", "tampered"),
        (chunk(2) + 4 + C - 1, "chunk 2 body", "tampered"),
        (last + 3, "last chunk length", "tampered"),
        (last + 4 + 2, "last chunk body", "tampered"),
        (last + 4 + 7 + 8, "last chunk tag", "tampered"),
    ];
    for (at, what, class) in positions {
        let mut bad = ct.clone();
        bad[at] ^= 0x01;
        case.expect_rejected(&bad, class, what);
    }
    assert_eq!(case.decrypt(&ct).expect("the original still opens"), data);
}

#[test]
fn truncation_at_and_between_chunk_boundaries_is_rejected() {
    let case = Case::new();
    let data = pattern(3 * C + 7, 9);
    let ct = case.encrypt(&data, "1KiB", "t.rkb");
    let mut cuts = vec![
        (0, "empty"),
        (5, "inside the magic"),
        (HEADER - 1, "inside the header"),
        (HEADER, "right after the header"),
    ];
    for k in 1..=3 {
        let b = HEADER + k * RECORD;
        cuts.push((b, "at a chunk boundary"));
        cuts.push((b - 1, "one byte before a boundary"));
        cuts.push((b + 2, "inside a length field"));
        cuts.push((b - RECORD / 2, "in the middle of a chunk"));
    }
    cuts.push((ct.len() - 1, "one byte short"));
    for (at, what) in cuts {
        case.expect_rejected(&ct[..at], "truncated", &format!("cut at {at} ({what})"));
    }
}

#[test]
fn swapped_spliced_and_extended_objects_are_rejected() {
    let case = Case::new();
    let data = pattern(3 * C + 7, 11);
    let ct = case.encrypt(&data, "1KiB", "a.rkb");
    let other = case.encrypt(&data, "1KiB", "b.rkb");
    let range = |i: usize| HEADER + i * RECORD..HEADER + (i + 1) * RECORD;
    let mut swapped = ct.clone();
    swapped[range(0)].copy_from_slice(&ct[range(1)]);
    swapped[range(1)].copy_from_slice(&ct[range(0)]);
    case.expect_rejected(&swapped, "tampered", "chunks 0 and 1 swapped");
    let mut spliced = ct.clone();
    spliced[range(2)].copy_from_slice(&other[range(2)]);
    case.expect_rejected(&spliced, "tampered", "chunk 2 from another backup");
    let mut extended = ct.clone();
    extended.extend_from_slice(&other[range(0)]);
    case.expect_rejected(&extended, "tampered", "a chunk appended");
}

#[test]
fn a_wrong_key_is_named() {
    let case = Case::new();
    let ct = case.encrypt(b"secret etcd data", "1KiB", "w.rkb");
    let src = case.path("w.rkb");
    let other = kek_file(case.dir.path(), "other");
    let out = case.path("restored");
    let (code, _, err) = rekey_run(
        &[
            "backup",
            "decrypt",
            "--kek-file",
            Case::s(&other),
            "--from",
            Case::s(&src),
            "--out",
            Case::s(&out),
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("wrong key"), "{err}");
    assert!(!out.exists());
    assert!(!ct.is_empty());
}

#[test]
fn a_cut_stream_to_stdout_says_so() {
    let case = Case::new();
    let data = pattern(5 * C, 13);
    let ct = case.encrypt(&data, "1KiB", "s.rkb");
    let cut = case.path("cut.rkb");
    std::fs::write(&cut, &ct[..HEADER + 3 * RECORD + 10]).expect("write");
    let output = rekey_integration::bin::run(rekey_integration::bin::rekey().args([
        "backup",
        "decrypt",
        "--kek-file",
        Case::s(&case.kek),
        "--from",
        Case::s(&cut),
        "--out",
        "-",
    ]));
    let (code, _, err) = rekey_integration::bin::outcome(&output);
    let out = output.stdout;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("INCOMPLETE") && err.contains("cut off"),
        "{err}"
    );
    assert!(err.contains("truncated"), "{err}");
    // Only authenticated chunks reached stdout.
    assert_eq!(out.len(), 3 * C);
    assert!(out == data[..3 * C]);
}

#[test]
fn stdin_to_stdout_round_trip() {
    use std::io::Write;
    let case = Case::new();
    let data = pattern(2 * MIB + 5, 17);
    let mut enc = rekey_integration::bin::rekey();
    enc.args(["backup", "encrypt", "--kek-file", Case::s(&case.kek)])
        .args(["--in", "-", "--out", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = enc.spawn().expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let feed = data.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&feed).expect("feed"));
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer");
    assert!(out.status.success(), "{out:?}");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(report.contains("encrypted"), "{report}");
    let back = case.decrypt(&out.stdout).expect("decrypt");
    assert!(back == data);
}

#[test]
fn bad_input_is_named_with_exit_code_2() {
    let case = Case::new();
    let plain = case.path("p");
    std::fs::write(&plain, b"x").expect("write");
    let bad_kek = case.path("bad-kek");
    std::fs::write(&bad_kek, b"not a key\n").expect("write");
    let existing = case.path("exists");
    std::fs::write(&existing, b"keep me").expect("write");
    let p = Case::s(&plain);
    let k = Case::s(&case.kek);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--kek-file", Case::s(&bad_kek), "--in", p, "--out", "x"],
            "expected 32 random bytes",
        ),
        (
            vec!["--kek-file", "/nonexistent/kek", "--in", p, "--out", "x"],
            "cannot read",
        ),
        (vec!["--in", p, "--out", "x"], "no key-encryption key"),
        (
            vec![
                "--kek-file",
                k,
                "--in",
                p,
                "--out",
                "x",
                "--chunk-size",
                "100",
            ],
            "outside 1KiB..64MiB",
        ),
        (
            vec!["--kek-file", k, "--in", p, "--out", "ftp://host/x"],
            "unsupported scheme",
        ),
        (
            vec!["--kek-file", k, "--in", "/nonexistent/in", "--out", "x"],
            "not found",
        ),
        (
            vec!["--kek-file", k, "--in", p, "--out", Case::s(&existing)],
            "--force",
        ),
    ];
    for (args, expected) in cases {
        let mut full = vec!["backup", "encrypt"];
        full.extend(args.iter());
        let (code, _, err) = rekey_run(&full, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains(expected),
            "{args:?}: expected `{expected}` in {err}"
        );
    }
    assert_eq!(std::fs::read(&existing).expect("read"), b"keep me");
    // A KEK given as base64 works the same as raw.
    let raw = std::fs::read(&case.kek).expect("read");
    let b64 = case.path("kek.b64");
    std::fs::write(&b64, format!("{}\n", base64_encode(&raw))).expect("write");
    let ct = case.path("b.rkb");
    rekey_ok(
        &[
            "backup",
            "encrypt",
            "--kek-file",
            Case::s(&b64),
            "--in",
            p,
            "--out",
            Case::s(&ct),
        ],
        &[],
    );
    assert_eq!(
        case.decrypt(&std::fs::read(&ct).expect("read"))
            .expect("raw key opens"),
        b"x"
    );
}

fn base64_encode(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[test]
fn progress_is_drawn_on_a_terminal_only() {
    let case = Case::new();
    let plain = case.path("big");
    std::fs::write(&plain, pattern(64 * MIB, 3)).expect("write");
    let out = case.path("big.rkb");
    let cmd = format!(
        "{} backup encrypt --kek-file {} --in {} --out {} --force",
        rekey_integration::bin::rekey_bin().display(),
        case.kek.display(),
        plain.display(),
        out.display()
    );
    // Under a pseudo-terminal (util-linux `script`), with --json: no bar.
    let tty_json = std::process::Command::new("script")
        .args(["-qec", &format!("{cmd} --json"), "/dev/null"])
        .env("REKEY_LOG", "warn")
        .output()
        .expect("script (util-linux) runs the command under a pseudo-terminal");
    let text = String::from_utf8_lossy(&tty_json.stdout);
    assert!(tty_json.status.success(), "{text}");
    assert!(!text.contains("ETA"), "a bar was drawn with --json: {text}");
    // Under a pseudo-terminal without --json: a bar with throughput and ETA.
    let tty = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("REKEY_LOG", "warn")
        .output()
        .expect("script");
    let text = String::from_utf8_lossy(&tty.stdout);
    assert!(tty.status.success(), "{text}");
    assert!(
        text.contains("ETA") && text.contains("/s"),
        "no progress bar on a terminal: {text}"
    );
    // Not a terminal: no bar either.
    let (code, stdout, stderr) = rekey_run(
        &[
            "backup",
            "encrypt",
            "--kek-file",
            Case::s(&case.kek),
            "--in",
            Case::s(&plain),
            "--out",
            Case::s(&out),
            "--force",
        ],
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !stderr.contains("ETA") && !stdout.contains("ETA"),
        "{stderr}"
    );
}
