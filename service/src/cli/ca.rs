//! `rekey ca init`

use std::{path::PathBuf, process::ExitCode};

use clap::Subcommand;

use crate::{
    error::BadInputExt,
    issue::KeyType,
    issue::{CertAuthority, IssueError},
    units::HumanDuration,
};

/// `rekey ca ...`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a CA for the internal issuer: writes DIR/ca.crt and DIR/ca.key (mode 0600).
    Init {
        /// Directory to write `ca.crt` and `ca.key` into.
        #[arg(long)]
        out: PathBuf,
        /// Subject common name of the CA.
        #[arg(long, default_value = "rekey CA")]
        common_name: String,
        /// Validity of the CA certificate.
        #[arg(long, default_value = "3650d")]
        validity: HumanDuration,
        /// Key type: ecdsa-p256, ecdsa-p384, ed25519, rsa-2048, rsa-3072, rsa-4096.
        #[arg(long, default_value = "ecdsa-p256", value_parser = parse_key_type)]
        key: KeyType,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

fn parse_key_type(s: &str) -> Result<KeyType, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
        format!(
            "unknown key type `{s}` (ecdsa-p256, ecdsa-p384, ed25519, rsa-2048, rsa-3072, rsa-4096)"
        )
    })
}

/// Runs `rekey ca ...`.
pub fn run(cmd: CaCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CaCommand::Init {
            out,
            common_name,
            validity,
            key,
            force,
        } => {
            let (ca, key_pem) =
                CertAuthority::generate(&common_name, key, validity.chrono(), chrono::Utc::now())?;
            match ca.write_files(&key_pem, &out, force) {
                Err(e @ IssueError::Exists(_)) => Err(e).bad_input()?,
                other => other?,
            }
            println!(
                "wrote {} and {} (the key mode 0600)",
                out.join("ca.crt").display(),
                out.join("ca.key").display()
            );
            println!(
                "subject: CN={common_name}, valid until {}",
                ca.not_after().format("%Y-%m-%d %H:%M:%S UTC")
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
