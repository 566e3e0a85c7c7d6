//! `rekey completions bash|zsh|fish`: each script names every command and
//! subcommand `rekey --help` lists, and bash's script loads and completes.

use std::process::Command;

use rekey_integration::bin::{outcome, rekey, rekey_bin, run};

/// The commands a help text lists under `Commands:` (without `help`).
fn commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // A long description wraps onto lines indented further.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect()
}

fn stdout_of(args: &[&str]) -> String {
    let (code, out, err) = outcome(&run(rekey().args(args)));
    assert_eq!(code, 0, "rekey {args:?}: {err}");
    out
}

#[test]
fn every_script_names_every_command() {
    let top = commands(&stdout_of(&["--help"]));
    assert!(
        top.len() >= 10 && top.iter().any(|c| c == "completions"),
        "{top:?}"
    );
    let mut all = top.clone();
    for group in ["ca", "token", "etcd", "backup"] {
        let sub = commands(&stdout_of(&[group, "--help"]));
        assert!(!sub.is_empty(), "rekey {group} lists no subcommands");
        all.extend(sub);
    }
    for shell in ["bash", "zsh", "fish"] {
        let script = stdout_of(&["completions", shell]);
        for c in &all {
            assert!(script.contains(c.as_str()), "{shell}: `{c}` missing");
        }
    }
    // Only the three shells.
    let (code, _, err) = outcome(&run(rekey().args(["completions", "tcsh"])));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bash") && err.contains("fish"), "{err}");
}

/// Runs bash with the completion script loaded and `rekey` on PATH.
fn bash(script: &str) -> String {
    let bin_dir = rekey_bin().parent().expect("bin dir").to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-c", script])
        .env("PATH", path)
        .env_remove("REKEY_LOG")
        .output()
        .expect("bash (apt-get install -y bash)");
    assert!(
        out.status.success(),
        "bash -c {script:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bash_script_loads_and_completes() {
    let registered = bash("source <(rekey completions bash) && complete -p rekey");
    assert!(registered.contains("_rekey rekey"), "{registered}");
    // What bash offers after `rekey ba<TAB>` and `rekey backup r<TAB>`.
    let offered = |line: &str| {
        bash(&format!(
            "source <(rekey completions bash)\n\
             COMP_WORDS=({line}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}\n\
             _rekey rekey \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
             printf '%s\\n' \"${{COMPREPLY[@]}}\""
        ))
    };
    let first = offered("rekey ba");
    assert_eq!(
        first.split_whitespace().collect::<Vec<_>>(),
        ["backup"],
        "{first}"
    );
    let mut second: Vec<String> = offered("rekey backup r")
        .split_whitespace()
        .map(String::from)
        .collect();
    second.sort();
    assert_eq!(second, ["rewrap", "run"]);
}
