//! `rekey etcd verify | rotate-key`: flags, their defaults from `[etcd]`,
//! and the report, around [`etcd::verify`](crate::etcd::verify) and
//! [`etcd::rotate`](crate::etcd::rotate).
//!
//! Exit codes: 0 clean; 1 an error finding, or a plaintext or undecryptable
//! value (or etcd/the database failed); 2 bad input (flags, an unreadable or
//! invalid EncryptionConfiguration, with the YAML path and line).

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use chrono::Utc;
use clap::{Args, Subcommand};

use super::{db::DbArgs, etcd_flags::DEFAULT_ENDPOINT};
use crate::{
    error::BadInput,
    etcd::{
        self, EtcdConfig,
        db::Trigger,
        encryption::ProviderKind,
        report::Report,
        rotate::{self, RotateKeyError, RotateKeyOptions},
        scan::DEFAULT_MAX_LISTED,
        verify::{VerifyOptions, verify_and_record},
    },
    units::HumanDuration,
};

/// `rekey etcd ...`
#[derive(Debug, Subcommand)]
pub enum EtcdCommand {
    /// Check the EncryptionConfiguration and what etcd really stores.
    Verify(VerifyArgs),
    /// Write the configurations and commands of a write-key rotation.
    RotateKey(RotateKeyArgs),
    /// Rewrite objects stored under an old key, through the Kubernetes API.
    ///
    /// Every object not stored under the current write key is read and
    /// written back unchanged (throttled, resumable, proven by a re-scan).
    Migrate(super::etcd_migrate::MigrateArgs),
}

/// `rekey etcd verify`
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The API server's EncryptionConfiguration file (`--encryption-provider-config`).
    /// Default: `etcd.encryption_config` of `--config`.
    #[arg(long, value_name = "FILE")]
    pub encryption_config: Option<PathBuf>,
    /// etcd client URLs, comma-separated. Default: `etcd.endpoints` of
    /// `--config`, else http://127.0.0.1:2379.
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// CA certificate that signed etcd's serving certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate for etcd's client-certificate auth (PEM).
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Key of the client certificate (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Key prefix to scan (default `/registry/secrets/`).
    #[arg(long, value_name = "PREFIX")]
    pub etcd_prefix: Option<String>,
    /// Resource whose encryption rules apply, e.g. `configmaps` or
    /// `deployments.apps`. Alone, scans `/registry/<resource>/`.
    #[arg(long)]
    pub resource: Option<String>,
    /// Decrypt only N values chosen at random (0: classify only). Default: all.
    #[arg(long, value_name = "N")]
    pub sample: Option<u64>,
    /// A write key older than this is an error (e.g. `90d`).
    #[arg(long, value_name = "DURATION")]
    pub max_key_age: Option<HumanDuration>,
    /// Keys listed per category (plaintext, stale, undecryptable); counts are always exact.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_LISTED)]
    pub max_listed: usize,
    /// Print the report as JSON (DESIGN.md shape).
    #[arg(long)]
    pub json: bool,
    /// Where to record the check (`etcd_checks`); without a database nothing is recorded.
    #[command(flatten)]
    pub db: DbArgs,
}

/// `rekey etcd rotate-key`
#[derive(Debug, Args)]
pub struct RotateKeyArgs {
    /// The API server's current EncryptionConfiguration file.
    #[arg(long, value_name = "FILE")]
    pub encryption_config: PathBuf,
    /// Directory for the three configurations and PLAN.md (created; must not
    /// already hold them). With `--retire`: write the new configuration
    /// there instead of replacing `--encryption-config`.
    #[arg(long, value_name = "DIR", required_unless_present = "retire")]
    pub out: Option<PathBuf>,
    /// Remove the key with this name, only when no value stored in etcd and
    /// no retained backup needs it (needs the database and etcd).
    #[arg(long, value_name = "KEYNAME", conflicts_with_all = ["key_name", "provider"])]
    pub retire: Option<String>,
    /// etcd client URLs, comma-separated (with `--retire`). Default:
    /// `etcd.endpoints` of `--config`, else http://127.0.0.1:2379.
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// CA certificate that signed etcd's serving certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate for etcd's client-certificate auth (PEM).
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Key of the client certificate (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// The database (with `--retire`: which retained backups need the key).
    #[command(flatten)]
    pub db: DbArgs,
    /// Resource whose write key is rotated.
    #[arg(long, default_value = "secrets")]
    pub resource: String,
    /// Name of the new key (default `key-<UTC timestamp>`).
    #[arg(long)]
    pub key_name: Option<String>,
    /// Provider for the new key when the resource is not encrypted yet with
    /// a local key (identity or kms writes): `secretbox`, `aesgcm` or `aescbc`.
    #[arg(long)]
    pub provider: Option<String>,
}

/// Runs `rekey etcd ...`.
pub async fn run(cmd: EtcdCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EtcdCommand::Verify(args) => verify(args).await,
        EtcdCommand::RotateKey(args) => match &args.retire {
            Some(name) => {
                super::etcd_retire::run(super::etcd_retire::RetireArgs {
                    name,
                    encryption_config: &args.encryption_config,
                    out: args.out.as_ref(),
                    endpoints: &args.endpoints,
                    cacert: args.cacert.as_ref(),
                    cert_key: (args.cert.as_ref(), args.key.as_ref()),
                    db: &args.db,
                })
                .await
            }
            None => rotate_key(args),
        },
        EtcdCommand::Migrate(args) => super::etcd_migrate::run(args).await,
    }
}

fn options(args: &VerifyArgs, config: Option<&EtcdConfig>) -> anyhow::Result<VerifyOptions> {
    let from = config.cloned().unwrap_or_default();
    let encryption_config = args
        .encryption_config
        .clone()
        .or(from.encryption_config.clone())
        .ok_or_else(|| {
            BadInput::msg(
                "--encryption-config FILE is required (or etcd.encryption_config in --config)",
            )
        })?;
    let endpoints = if !args.endpoints.is_empty() {
        args.endpoints.clone()
    } else if !from.endpoints.is_empty() {
        from.endpoints.clone()
    } else {
        vec![DEFAULT_ENDPOINT.to_string()]
    };
    for e in &endpoints {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(BadInput::msg(format!(
                "--endpoints: `{e}` is not an http:// or https:// URL"
            ))
            .into());
        }
    }
    let (client_cert, client_key) = match (&args.cert, &args.key) {
        (Some(c), Some(k)) => (Some(c.clone()), Some(k.clone())),
        _ => (from.client_cert.clone(), from.client_key.clone()),
    };
    let etcd = EtcdConfig {
        endpoints,
        ca_cert: args.cacert.clone().or(from.ca_cert.clone()),
        client_cert,
        client_key,
        ..from.clone()
    };
    let resource = args.resource.clone().or(from.resource.clone());
    let prefix = match (&args.etcd_prefix, &args.resource, &from.prefix) {
        (Some(p), _, _) => p.clone(),
        (None, Some(r), _) => format!(
            "/registry/{}/",
            etcd::encryption::GroupResource::parse(r).resource
        ),
        (None, None, Some(p)) => p.clone(),
        (None, None, None) => etcd::DEFAULT_PREFIX.to_string(),
    };
    if !prefix.starts_with('/') {
        return Err(BadInput::msg(format!("--etcd-prefix: `{prefix}` must start with `/`")).into());
    }
    if let Some(r) = &resource
        && (r.is_empty() || r.chars().any(|c| c.is_uppercase() || c.is_whitespace()))
    {
        return Err(BadInput::msg(format!(
            "--resource: `{r}` is not a resource name (lower case, e.g. `secrets` or `deployments.apps`)"
        ))
        .into());
    }
    Ok(VerifyOptions {
        encryption_config,
        etcd,
        prefix,
        resource,
        sample: args.sample.or(from.sample),
        max_key_age: args.max_key_age.or(from.max_key_age),
        max_listed: args.max_listed,
    })
}

async fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let config = args.db.load_config()?;
    let opts = options(&args, config.as_ref().and_then(|c| c.etcd.as_ref()))?;
    let wants_db =
        args.db.database_url.is_some() || config.as_ref().is_some_and(|c| c.database.url.is_some());
    let store = if wants_db {
        Some(
            args.db
                .connect()
                .await
                .context("connecting to the database")?,
        )
    } else {
        None
    };
    let (report, id) = verify_and_record(&opts, store.as_ref(), Trigger::Cli)
        .await
        .map_err(|e| {
            if e.is_bad_input() {
                anyhow::Error::new(BadInput::new(e))
            } else {
                anyhow::Error::new(e)
            }
        })?;
    print(&report, args.json)?;
    if let Some(id) = id
        && !args.json
    {
        println!("recorded in Postgres as etcd check {id}");
    }
    match report.exit_code {
        0 => Ok(ExitCode::SUCCESS),
        1 => Ok(ExitCode::from(1)),
        _ => {
            let lines: Vec<String> = report
                .config
                .findings
                .iter()
                .map(|f| {
                    let mut s = format!("{}: {}", f.path.as_deref().unwrap_or("(file)"), f.message);
                    if let Some(l) = f.line {
                        s.push_str(&format!(" (line {l})"));
                    }
                    s
                })
                .collect();
            Err(BadInput::msg(format!(
                "{}: invalid EncryptionConfiguration:\n  {}",
                report.config.path,
                lines.join("\n  ")
            ))
            .into())
        }
    }
}

fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else if report.exit_code != 2 {
        print!("{}", report.human());
    }
    Ok(())
}

fn rotate_error(e: RotateKeyError) -> anyhow::Error {
    match e {
        e @ RotateKeyError::Read { .. } => BadInput::msg(format!("--encryption-config {e}")).into(),
        e if e.is_bad_input() => BadInput::new(e).into(),
        e => e.into(),
    }
}

/// Runs `rekey etcd rotate-key`.
fn rotate_key(args: RotateKeyArgs) -> anyhow::Result<ExitCode> {
    let config = rotate::load(&args.encryption_config).map_err(rotate_error)?;
    let provider = match args.provider.as_deref().unwrap_or("secretbox") {
        "secretbox" => ProviderKind::Secretbox,
        "aesgcm" => ProviderKind::Aesgcm,
        "aescbc" => ProviderKind::Aescbc,
        other => {
            return Err(BadInput::msg(format!(
                "--provider: `{other}` is not one of secretbox, aesgcm, aescbc"
            ))
            .into());
        }
    };
    let now = Utc::now();
    let key_name = args
        .key_name
        .clone()
        .unwrap_or_else(|| format!("key-{}", now.format("%Y%m%d%H%M%S")));
    if key_name.is_empty() || key_name.contains(':') || key_name.chars().any(char::is_whitespace) {
        return Err(BadInput::msg(format!(
            "--key-name: `{key_name}` must be non-empty, without `:` or spaces"
        ))
        .into());
    }
    let Some(out) = args.out else {
        return Err(BadInput::msg("--out DIR is required").into());
    };
    let opts = RotateKeyOptions {
        encryption_config: args.encryption_config,
        out,
        resource: args.resource,
        key_name,
        provider,
        now,
    };
    let report = rotate::rotate_key(&config, &opts).map_err(rotate_error)?;
    println!(
        "wrote {}: {} (new key {})",
        report.out.display(),
        report.files.join(", "),
        report.new_label
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        cmd: EtcdCommand,
    }

    fn args(line: &str) -> VerifyArgs {
        let argv = std::iter::once("t").chain(line.split_whitespace());
        match T::try_parse_from(argv).unwrap().cmd {
            EtcdCommand::Verify(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults_and_overrides() {
        let o = options(&args("verify --encryption-config /e.yaml"), None).unwrap();
        assert_eq!(o.etcd.endpoints, [DEFAULT_ENDPOINT]);
        assert_eq!(o.prefix, "/registry/secrets/");
        assert_eq!(o.resource_name(), "secrets");
        let o = options(
            &args("verify --encryption-config /e.yaml --endpoints https://a:2379,https://b:2379 --resource deployments.apps"),
            None,
        )
        .unwrap();
        assert_eq!(o.etcd.endpoints.len(), 2);
        assert_eq!(o.prefix, "/registry/deployments/");
        assert_eq!(o.resource_name(), "deployments.apps");
        let o = options(
            &args("verify --encryption-config /e.yaml --etcd-prefix /custom/configmaps/"),
            None,
        )
        .unwrap();
        assert_eq!(o.resource_name(), "configmaps");
        let from = EtcdConfig {
            endpoints: vec!["https://10.0.0.1:2379".into()],
            encryption_config: Some("/etc/enc.yaml".into()),
            max_key_age: Some("90d".parse().unwrap()),
            ..Default::default()
        };
        let o = options(&args("verify"), Some(&from)).unwrap();
        assert_eq!(o.encryption_config, PathBuf::from("/etc/enc.yaml"));
        assert_eq!(o.etcd.endpoints, ["https://10.0.0.1:2379"]);
        assert!(o.max_key_age.is_some());
    }

    #[test]
    fn bad_flags_are_bad_input() {
        for line in [
            "verify",
            "verify --encryption-config /e --endpoints 10.0.0.1:2379",
            "verify --encryption-config /e --etcd-prefix registry",
            "verify --encryption-config /e --resource Secrets",
        ] {
            let e = options(&args(line), None).unwrap_err();
            assert_eq!(crate::error::exit_code(&e), 2, "{line}: {e}");
        }
    }
}
