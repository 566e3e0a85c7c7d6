//! Benchmark: `rekey backup encrypt`/`decrypt` of a 1 GiB stream, side by side
//! with its baselines measured in the same run.
//!
//! ```sh
//! cargo build --release -p rekey --bins
//! cargo bench -p rekey-integration --bench backup_stream
//! ```
//!
//! Baselines: `openssl speed -evp aes-256-gcm -bytes 16384 -seconds 3` (one
//! core, the hardware's AES-GCM rate), and `age` encrypting the same file to an
//! X25519 recipient. Also measured in-process: the bulk AES-256-GCM of the
//! `aes-gcm` crate and of `aws-lc-rs` (one thread, 1 MiB chunks), which is how
//! the bulk cipher was chosen. Files live on tmpfs (`/dev/shm`); peak RSS is
//! that of the measured process (getrusage of a helper's only child).
//! Targets: ≥ 80% of openssl's one-core rate, ≥ 1.5× age, peak RSS < 64 MiB.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

const GIB: u64 = 1 << 30;
const REPEATS: usize = 5;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--measure-child") {
        return measure_child(&args[i + 1..]);
    }
    run()
}

/// Helper mode: runs the command, then prints its peak RSS (KiB) on stderr.
fn measure_child(cmd: &[String]) -> ExitCode {
    let status = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdout(Stdio::null())
        .status()
        .expect("spawning the measured command");
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage");
    eprintln!("maxrss_kib={}", usage.max_rss());
    if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

struct Measured {
    seconds: f64,
    rss_kib: u64,
}

/// Runs `cmd` through the helper `REPEATS` times; returns the fastest run and the largest RSS.
fn measure(cmd: &[&str]) -> Measured {
    let me = std::env::current_exe().expect("current_exe");
    let mut best = f64::MAX;
    let mut rss = 0;
    for _ in 0..REPEATS {
        let start = Instant::now();
        let out = Command::new(&me)
            .arg("--measure-child")
            .args(cmd)
            .env("REKEY_LOG", "warn")
            .output()
            .expect("running the helper");
        let secs = start.elapsed().as_secs_f64();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{cmd:?} failed: {err}");
        let kib: u64 = err
            .lines()
            .find_map(|l| l.strip_prefix("maxrss_kib="))
            .and_then(|v| v.trim().parse().ok())
            .expect("maxrss line");
        best = best.min(secs);
        rss = rss.max(kib);
    }
    Measured {
        seconds: best,
        rss_kib: rss,
    }
}

fn rekey_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("REKEY_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = root.join("target/release/rekey");
    assert!(
        bin.is_file(),
        "{} is missing: build it first with `cargo build --release -p rekey --bins`",
        bin.display()
    );
    bin
}

fn need(tool: &str, package: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "`{tool}` is missing: apt-get install -y {package}");
}

/// `openssl speed -evp aes-256-gcm -bytes 16384 -seconds 3`, in bytes per second.
fn openssl_rate() -> f64 {
    let out = Command::new("openssl")
        .args([
            "speed",
            "-evp",
            "aes-256-gcm",
            "-bytes",
            "16384",
            "-seconds",
            "3",
        ])
        .stderr(Stdio::null())
        .output()
        .expect("openssl speed");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rfind(|l| l.to_ascii_lowercase().starts_with("aes-256-gcm"))
        .unwrap_or_else(|| panic!("no result line in openssl output:\n{text}"));
    let k = line
        .split_whitespace()
        .last()
        .and_then(|v| v.strip_suffix('k'))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("cannot parse `{line}`"));
    k * 1000.0
}

/// Single-thread in-process AES-256-GCM sealing of `total` bytes in 1 MiB chunks.
fn in_process_rates(total: usize) -> (f64, f64) {
    let chunk = 1 << 20;
    let mut buf = vec![7u8; chunk];
    let key = [9u8; 32];

    let lc = aws_lc_rs::aead::LessSafeKey::new(
        aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &key).expect("key"),
    );
    let start = Instant::now();
    for i in 0..total / chunk {
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let tag = lc
            .seal_in_place_separate_tag(
                aws_lc_rs::aead::Nonce::assume_unique_for_key(n),
                aws_lc_rs::aead::Aad::from(b"aad"),
                &mut buf,
            )
            .expect("seal");
        let _ = std::hint::black_box(tag);
    }
    let aws = total as f64 / start.elapsed().as_secs_f64();

    use aes_gcm::{AeadInOut, Aes256Gcm, KeyInit};
    let rc = Aes256Gcm::new_from_slice(&key).expect("key");
    let start = Instant::now();
    for i in 0..total / chunk {
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let tag = rc
            .encrypt_inout_detached(&n.into(), b"aad", buf.as_mut_slice().into())
            .expect("seal");
        let _ = std::hint::black_box(tag);
    }
    let rust = total as f64 / start.elapsed().as_secs_f64();
    (rust, aws)
}

fn write_input(path: &Path, size: u64) {
    use std::io::Write;
    let mut f =
        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).expect("create"));
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..size / block.len() as u64 {
        for w in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block).expect("write");
    }
    f.flush().expect("flush");
}

fn gbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

fn run() -> ExitCode {
    let rekey = rekey_bin();
    need("openssl", "openssl");
    need("age", "age");
    need("age-keygen", "age");
    let dir = tempfile::Builder::new()
        .prefix("rekey-bench-")
        .tempdir_in("/dev/shm")
        .expect("a temp dir on tmpfs (/dev/shm)");
    let d = dir.path();
    let plain = d.join("plain");
    let enc = d.join("plain.rkb");
    let restored = d.join("restored");
    let age_out = d.join("plain.age");
    let kek = d.join("kek");
    let identity = d.join("age.key");
    std::fs::write(&kek, [0x5au8; 32]).expect("kek");
    let keygen = Command::new("age-keygen")
        .arg("-o")
        .arg(&identity)
        .output()
        .expect("age-keygen");
    assert!(keygen.status.success(), "{keygen:?}");
    let recipient = std::fs::read_to_string(&identity)
        .expect("identity")
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(str::to_string))
        .expect("public key line");

    println!(
        "rekey backup stream benchmark — {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    println!(
        "input: 1 GiB on tmpfs ({}), best of {REPEATS} runs each",
        d.display()
    );
    write_input(&plain, GIB);

    let (rust_gcm, aws_gcm) = in_process_rates(256 << 20);
    let openssl = openssl_rate();

    let s = |p: &Path| p.to_str().expect("utf-8").to_string();
    let r = s(&rekey);
    let k = s(&kek);
    let enc_file = measure(&[
        &r,
        "backup",
        "encrypt",
        "--kek-file",
        &k,
        "--in",
        &s(&plain),
        "--out",
        &s(&enc),
        "--force",
    ]);
    let enc_null = measure(&[
        &r,
        "backup",
        "encrypt",
        "--kek-file",
        &k,
        "--in",
        &s(&plain),
        "--out",
        "/dev/null",
    ]);
    let dec_file = measure(&[
        &r,
        "backup",
        "decrypt",
        "--kek-file",
        &k,
        "--from",
        &s(&enc),
        "--out",
        &s(&restored),
        "--force",
    ]);
    let dec_null = measure(&[
        &r,
        "backup",
        "decrypt",
        "--kek-file",
        &k,
        "--from",
        &s(&enc),
        "--out",
        "/dev/null",
    ]);
    let same = Command::new("cmp")
        .arg(&plain)
        .arg(&restored)
        .status()
        .is_ok_and(|st| st.success());
    assert!(same, "the decrypted file differs from the input");
    std::fs::remove_file(&restored).expect("rm");
    let age_file = measure(&["age", "-r", &recipient, "-o", &s(&age_out), &s(&plain)]);
    let age_null = measure(&["age", "-r", &recipient, "-o", "/dev/null", &s(&plain)]);
    let age_dec = measure(&[
        "age",
        "-d",
        "-i",
        &s(&identity),
        "-o",
        "/dev/null",
        &s(&age_out),
    ]);
    let age_dec_file = measure(&[
        "age",
        "-d",
        "-i",
        &s(&identity),
        "-o",
        &s(&restored),
        &s(&age_out),
    ]);
    // The ceiling of any file-to-file figure: a plain copy, no crypto.
    let copy = measure(&[
        "dd",
        "bs=1M",
        &format!("if={}", s(&plain)),
        &format!("of={}", s(&restored)),
    ]);

    let openssl_g = openssl / 1e9;
    println!();
    println!("baselines");
    println!("  openssl speed -evp aes-256-gcm, 16 KiB, 1 core   {openssl_g:6.2} GB/s");
    println!(
        "  aes-gcm crate, 1 thread, 1 MiB chunks (in-process) {:6.2} GB/s",
        rust_gcm / 1e9
    );
    println!(
        "  aws-lc-rs AES-256-GCM, 1 thread (in-process)       {:6.2} GB/s  <- bulk cipher used",
        aws_gcm / 1e9
    );
    println!();
    println!(
        "{:<34} {:>8} {:>10} {:>9} {:>10}  targets: >=0.80x openssl, >=1.5x age, RSS < 64 MiB",
        "figure", "GB/s", "vs openssl", "vs age", "peak RSS"
    );
    let mut all_met = true;
    let copy_g = gbps(GIB, copy.seconds);
    let mut row = |name: &str, m: &Measured, age: &Measured, to_file: bool| {
        let rate = gbps(GIB, m.seconds);
        let vs_openssl = rate / openssl_g;
        let vs_age = rate / gbps(GIB, age.seconds);
        let rss_mib = m.rss_kib as f64 / 1024.0;
        let met = vs_openssl >= 0.8 && vs_age >= 1.5 && rss_mib < 64.0;
        all_met &= met;
        let note = if to_file {
            format!(" ({:.2}x a plain tmpfs copy)", rate / copy_g)
        } else {
            String::new()
        };
        println!(
            "{:<34} {:>8.2} {:>9.2}x {:>8.2}x {:>7.1} MiB  {}{note}",
            name,
            rate,
            vs_openssl,
            vs_age,
            rss_mib,
            if met { "met" } else { "NOT met" }
        );
    };
    row(
        "rekey encrypt  file -> tmpfs file",
        &enc_file,
        &age_file,
        true,
    );
    row(
        "rekey encrypt  file -> /dev/null",
        &enc_null,
        &age_null,
        false,
    );
    row(
        "rekey decrypt  tmpfs file -> file",
        &dec_file,
        &age_dec_file,
        true,
    );
    row(
        "rekey decrypt  file -> /dev/null",
        &dec_null,
        &age_dec,
        false,
    );
    for (name, m) in [
        ("age encrypt    file -> tmpfs file", &age_file),
        ("age encrypt    file -> /dev/null", &age_null),
        ("age decrypt    file -> tmpfs file", &age_dec_file),
        ("age decrypt    file -> /dev/null", &age_dec),
        ("plain copy     dd bs=1M, tmpfs", &copy),
    ] {
        println!(
            "{:<34} {:>8.2} {:>9.2}x {:>9} {:>7.1} MiB",
            name,
            gbps(GIB, m.seconds),
            gbps(GIB, m.seconds) / openssl_g,
            "-",
            m.rss_kib as f64 / 1024.0
        );
    }
    println!();
    println!(
        "{}",
        if all_met {
            "all targets met"
        } else {
            "some targets NOT met (see above)"
        }
    );
    drop(dir);
    std::thread::sleep(Duration::from_millis(10));
    ExitCode::SUCCESS
}
