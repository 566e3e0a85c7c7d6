//! Running the real `rekey` binary.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

/// The `rekey` binary under test: `REKEY_BIN`, else the one built next to
/// this test executable (`target/<profile>/rekey`).
pub fn rekey_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("REKEY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("test executable is in target/<profile>/deps");
    let bin = profile_dir.join("rekey");
    assert!(
        bin.is_file(),
        "{} does not exist: build it first with `cargo build -p rekey --bins` (the test script does), or set REKEY_BIN",
        bin.display()
    );
    bin
}

/// A `rekey` command with a clean environment for rekey's own variables.
pub fn rekey() -> Command {
    let mut c = Command::new(rekey_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("REKEY_") || k == "DATABASE_URL" || k == "KUBECONFIG" {
            c.env_remove(k);
        }
    }
    c.env("REKEY_LOG", "warn");
    c
}

/// Runs a command to completion, capturing output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Exit code, stdout and stderr of a finished command, as text.
pub fn outcome(out: &Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
