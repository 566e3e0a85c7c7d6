//! `rekey ca init`, `rekey ca rotate`, `rekey ca status`.
//!
//! `rotate` and `status` work on the database (`--config`: the issuers are
//! the configuration's; the request is recorded and the serving replicas
//! carry it out) or through a server's admin API (`--server`).

use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use chrono::Utc;
use clap::Subcommand;

use super::{
    client::{ApiClient, ClientArgs},
    db::DbArgs,
    output::{print_json, relative},
};
use crate::{
    error::{BadInput, BadInputExt},
    issue::{CaMaterial, CertAuthority, IssueError, KeyType},
    rotate::ca_rotation::{
        self,
        follow::Follower,
        request::{
            self, RequestError, Requester, RotateAnswer, RotateOptions, RotationView, StatusDoc,
        },
    },
    secret::SecretString,
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
    /// Rotate an issuer's CA without a failed handshake: trust both, switch signing,
    /// re-issue every leaf, retire the old CA (carried out by `rekey serve`).
    Rotate(RotateArgs),
    /// Every issuer's CA, trust bundle and CA rotation.
    Status(StatusArgs),
}

/// `rekey ca rotate`
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// The issuer (`[[issuer]] name`; `default` for `[issuer]`).
    pub issuer: String,
    /// How long consumers get to reload, before signing switches and before
    /// the old CA leaves the bundles.
    #[arg(long, default_value = "5m")]
    pub overlap: HumanDuration,
    /// The CA to rotate to (PEM; with --new-ca-key). Default: a new CA like the current one.
    #[arg(long, requires = "new_ca_key")]
    pub new_ca_cert: Option<PathBuf>,
    /// The private key of --new-ca-cert (PEM).
    #[arg(long, requires = "new_ca_cert")]
    pub new_ca_key: Option<PathBuf>,
    /// Re-issues per second (0: as fast as the engine goes).
    #[arg(long, default_value_t = ca_rotation::DEFAULT_MAX_RATE)]
    pub max_rate: f64,
    /// Abort the running rotation (only before re-issuing has started).
    #[arg(long, conflicts_with_all = ["new_ca_cert", "new_ca_key"])]
    pub abort: bool,
    /// Machine-readable output (`{"created", "rotation": {...}}`).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbArgs,
    /// Ask a running server's admin API (`--server URL`) instead of the database.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `rekey ca status`
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Only this issuer.
    pub issuer: Option<String>,
    /// Machine-readable output (`{"issuers": [...]}`).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbArgs,
    /// Ask a running server's admin API (`--server URL`) instead of the database.
    #[command(flatten)]
    pub client: ClientArgs,
}

fn parse_key_type(s: &str) -> Result<KeyType, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
        format!(
            "unknown key type `{s}` (ecdsa-p256, ecdsa-p384, ed25519, rsa-2048, rsa-3072, rsa-4096)"
        )
    })
}

/// Runs `rekey ca ...`.
pub async fn run(cmd: CaCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CaCommand::Rotate(args) => rotate(args).await,
        CaCommand::Status(args) => status(args).await,
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

fn bad(e: RequestError) -> anyhow::Error {
    if e.is_bad_input() {
        anyhow::Error::new(BadInput::new(e))
    } else {
        anyhow::Error::new(e)
    }
}

/// The issuers of `--config` (checked as `rekey serve` checks them),
/// following their rotations in the database.
async fn follower(db: &DbArgs) -> anyhow::Result<Arc<Follower>> {
    let config = db.load_config()?.ok_or_else(|| {
        BadInput::msg("the issuers are in the configuration: pass --config FILE (or --server URL)")
    })?;
    let kube = if config.needs_kubernetes() {
        Some(
            crate::k8s::wiring::Kube::connect(config.kubernetes.as_ref())
                .await
                .bad_input()?,
        )
    } else {
        None
    };
    let issuers = crate::runtime::issuers::load_issuers(&config, kube.as_ref(), Utc::now()).await?;
    let store = db.connect().await?;
    Ok(Follower::new(store, Arc::new(issuers)))
}

fn read_new_ca(args: &RotateArgs) -> anyhow::Result<Option<CaMaterial>> {
    let (Some(cert), Some(key)) = (&args.new_ca_cert, &args.new_ca_key) else {
        return Ok(None);
    };
    let read = |flag: &str, p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|e| {
            BadInput::msg(format!(
                "issuer[{}].{flag}: cannot read {}: {e}",
                args.issuer,
                p.display()
            ))
        })
    };
    Ok(Some(CaMaterial {
        cert_pem: read("new_ca_cert", cert)?,
        key_pem: SecretString::from(read("new_ca_key", key)?),
    }))
}

async fn rotate(args: RotateArgs) -> anyhow::Result<ExitCode> {
    if args.max_rate < 0.0 || !args.max_rate.is_finite() {
        return Err(BadInput::msg("--max-rate: must be 0 (no limit) or more").into());
    }
    let new_ca = read_new_ca(&args)?;
    let answer = if args.client.server.is_some() {
        let api = ApiClient::new(&args.client, Duration::from_secs(60))?;
        let mut body = serde_json::json!({
            "overlap": args.overlap.to_string(),
            "max_rate": args.max_rate,
            "abort": args.abort,
        });
        if let Some(ca) = &new_ca {
            use secrecy::ExposeSecret;
            body["new_ca_cert"] = ca.cert_pem.clone().into();
            body["new_ca_key"] = ca.key_pem.expose_secret().to_string().into();
        }
        api.rotate_issuer(&args.issuer, &body).await?
    } else {
        let follower = follower(&args.db).await?;
        let issuer = request::rotatable(follower.issuers(), &args.issuer).map_err(bad)?;
        let actor = format!("cli/{}", super::output::whoami());
        let who = Requester {
            actor: &actor,
            trigger: "cli",
            ticket: None,
        };
        let store = args.db.connect().await?;
        if args.abort {
            let r = request::abort(&store, issuer, who).await.map_err(bad)?;
            RotateAnswer {
                created: false,
                rotation: RotationView::from(&r),
            }
        } else {
            let opts = RotateOptions {
                overlap: args.overlap.get(),
                max_rate: args.max_rate,
                new_ca,
            };
            let (r, created) = request::start(&store, issuer, &opts, who)
                .await
                .map_err(bad)?;
            RotateAnswer {
                created,
                rotation: RotationView::from(&r),
            }
        }
    };
    if args.json {
        print_json(&answer, false)?;
        return Ok(ExitCode::SUCCESS);
    }
    let r = &answer.rotation;
    let what = if args.abort {
        "aborted: the old CA alone is trusted again once every sink holds its bundle"
    } else if answer.created {
        "started"
    } else {
        "already running (this request joined it)"
    };
    println!("CA rotation {} of issuer {}: {what}", r.id, args.issuer);
    println!(
        "phase: {}; follow it with `rekey ca status {}`",
        r.phase, args.issuer
    );
    Ok(ExitCode::SUCCESS)
}

async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let doc: StatusDoc = if args.client.server.is_some() {
        let api = ApiClient::new(&args.client, Duration::from_secs(30))?;
        match &args.issuer {
            Some(name) => StatusDoc {
                issuers: vec![api.issuer(name).await?],
            },
            None => api.issuers().await?,
        }
    } else {
        let follower = follower(&args.db).await?;
        let store = args.db.connect().await?;
        request::status(&follower, &store, args.issuer.as_deref())
            .await
            .map_err(bad)?
    };
    if args.json {
        print_json(&doc, false)?;
        return Ok(ExitCode::SUCCESS);
    }
    let now = Utc::now();
    println!(
        "{:<20} {:<15} {:<14} {:<22} {:<7} ROTATION",
        "ISSUER", "KIND", "CA", "NOT AFTER", "BUNDLE"
    );
    for i in &doc.issuers {
        let (fp, not_after) = match &i.ca {
            Some(ca) => (
                format!("{}…", &ca.fingerprint[..12.min(ca.fingerprint.len())]),
                ca.not_after.clone(),
            ),
            None => ("-".into(), "-".into()),
        };
        let rotation = match &i.rotation {
            None => "-".to_string(),
            Some(r) => {
                let started = chrono::DateTime::parse_from_rfc3339(&r.started_at)
                    .ok()
                    .map(|t| t.with_timezone(&Utc));
                let mut s = format!("{} (started {})", r.phase, relative(started, now));
                if let Some(rem) = r.remaining {
                    s.push_str(&format!(", {} re-issued, {rem} remaining", r.reissued));
                }
                if r.finished_at.is_none()
                    && let Some(w) = &r.waiting_for
                {
                    s.push_str(&format!("; waiting: {w}"));
                }
                s
            }
        };
        println!(
            "{:<20} {:<15} {:<14} {:<22} {:<7} {rotation}",
            i.name,
            i.kind,
            fp,
            not_after,
            format!(
                "{} CA{}",
                i.bundle.len(),
                if i.bundle.len() == 1 { "" } else { "s" }
            ),
        );
    }
    Ok(ExitCode::SUCCESS)
}
