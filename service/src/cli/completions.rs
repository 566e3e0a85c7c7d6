//! `rekey completions bash|zsh|fish`: the shell completion script for every
//! command and flag, generated from the clap tree (clap_complete).

use std::{io::Write, process::ExitCode};

use clap::{Args, ValueEnum};

/// Print a shell completion script (bash, zsh, fish)
///
/// Install it once:
///   bash  source <(rekey completions bash)   in ~/.bashrc
///         (or: rekey completions bash > /etc/bash_completion.d/rekey)
///   zsh   rekey completions zsh > "${fpath[1]}/_rekey"   then start a new shell
///   fish  rekey completions fish > ~/.config/fish/completions/rekey.fish
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct CompletionsArgs {
    /// The shell the script is for.
    #[arg(value_enum)]
    shell: Shell,
}

/// The shells with a completion script.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Shell {
    /// GNU bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

/// The completion script for `shell` of `cmd` (the whole command tree), for
/// the binary named `rekey`.
fn script(shell: Shell, mut cmd: clap::Command) -> Vec<u8> {
    let mut out = Vec::new();
    match shell {
        Shell::Bash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "rekey", &mut out)
        }
        Shell::Zsh => {
            clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, "rekey", &mut out)
        }
        Shell::Fish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, "rekey", &mut out)
        }
    }
    out
}

/// Runs `rekey completions SHELL` for `cmd`, the whole command tree (passed
/// in by `cli/mod.rs`, which owns it).
pub fn run(args: CompletionsArgs, cmd: clap::Command) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(&script(args.shell, cmd))
        .and_then(|()| stdout.flush())
    {
        // `rekey completions bash | head` is not an error.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("writing the completion script"))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_script_names_every_subcommand() {
        let cmd = super::super::Cli::command();
        let names: Vec<&str> = cmd.get_subcommands().map(|c| c.get_name()).collect();
        assert!(names.contains(&"completions") && names.contains(&"backup"));
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = String::from_utf8(script(shell, cmd.clone())).expect("utf-8");
            for name in &names {
                assert!(text.contains(name), "{shell:?}: {name} missing");
            }
        }
    }
}
