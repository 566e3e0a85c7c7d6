//! `rekey dev` serves the admin API with certificates it generates, and the
//! instructions it prints work as printed.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::{Duration, Instant},
};

use rekey_integration::{
    bin::{outcome, rekey, run},
    wait::eventually,
};

#[tokio::test]
async fn dev_prints_working_instructions_for_the_admin_api() {
    let state = tempfile::Builder::new()
        .prefix("rekey-test-dev-api-")
        .tempdir_in("/tmp")
        .unwrap();
    let port = rekey::devdb::free_port().unwrap();
    let stderr_file = tempfile::NamedTempFile::new().unwrap();
    let mut child = rekey()
        .env_remove("REKEY_LOG")
        .arg("dev")
        .arg("--state-dir")
        .arg(state.path())
        .arg("--api-listen")
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr_file.reopen().unwrap()))
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut printed = String::new();
    let exports = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no API instructions printed:\n{printed}"));
        printed.push_str(&line);
        printed.push('\n');
        if let Some(rest) = line.trim().strip_prefix("export ") {
            break rest.to_string();
        }
    };
    assert!(printed.contains("curl --cacert"), "{printed}");
    // Wait for the demo credential to be issued, then rotate it with exactly the printed settings.
    let mut cmd = rekey();
    for kv in exports.split_whitespace() {
        let (k, v) = kv.split_once('=').unwrap();
        cmd.env(k, v);
    }
    eventually(
        "cert/dev/web valid in `rekey status --json` (code, stdout, stderr)",
        Duration::from_secs(30),
        async || {
            let mut status = rekey();
            for kv in exports.split_whitespace() {
                let (k, v) = kv.split_once('=').unwrap();
                status.env(k, v);
            }
            let out = run(status.args(["status", "--json"]));
            let (code, stdout, stderr) = outcome(&out);
            if code == 0 && stdout.contains("cert/dev/web") && stdout.contains("\"valid\"") {
                Ok(())
            } else {
                Err((code, stdout, stderr))
            }
        },
    )
    .await;
    let out = run(cmd.args(["rotate", "cert/dev/web", "--wait", "--reason", "dev check"]));
    let (code, stdout, stderr) = outcome(&out);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let exit = child.wait().unwrap();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("succeeded"), "{stdout}");
    // Stopped cleanly and quietly: "stopped." on stdout, nothing on stderr at
    // the default log level (no warnings about connections Postgres closed).
    assert!(exit.success(), "{exit:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !printed.ends_with("stopped.\n") {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no `stopped.` printed:\n{printed}"));
        printed.push_str(&line);
        printed.push('\n');
    }
    let err = std::fs::read_to_string(stderr_file.path()).unwrap();
    assert_eq!(err, "", "rekey dev wrote on stderr");
    // The key file is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(state.path().join("api/operator.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}
