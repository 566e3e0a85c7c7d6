//! `rekey token list | revoke ID | create`: bootstrap tokens from the command line.
//!
//! The operations are `k8s::bootstrap` ([`admin::list`], [`bootstrap::revoke`],
//! [`admin::create_new`] and [`bootstrap::record_created`]); this file checks
//! the flags and prints.

use std::process::ExitCode;

use anyhow::Context;
use chrono::Utc;
use clap::Subcommand;
use secrecy::ExposeSecret;

use super::{db::DbArgs, kube::KubeArgs};
use crate::{
    error::BadInput,
    k8s::bootstrap::{
        self, RevokeOutcome,
        admin::{self, TokenListing},
        model,
    },
    units::HumanDuration,
};

/// `rekey token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// List tracked bootstrap tokens and the nodes that joined with them.
    List {
        /// Machine-readable output: `{"tokens": [...]}`.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke a bootstrap token now: delete its Secret and record why.
    Revoke {
        /// Token id (the 6 characters before the dot).
        id: String,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        kube: KubeArgs,
    },
    /// Create a bootstrap token as `kubeadm token create` does; prints it once.
    Create {
        /// Lifetime; `0` for a token that never expires.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// Extra groups the token authenticates as (each `system:bootstrappers:...`).
        #[arg(long, value_delimiter = ',', default_value = model::DEFAULT_GROUP)]
        groups: Vec<String>,
        /// Usages: `signing`, `authentication`.
        #[arg(long, value_delimiter = ',', default_value = "signing,authentication")]
        usages: Vec<String>,
        /// A human description stored with the token.
        #[arg(long)]
        description: Option<String>,
        /// Keep the token after nodes join with it (label rekey.io/bootstrap-policy=keep-until-expiry).
        #[arg(long)]
        keep_until_expiry: bool,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        kube: KubeArgs,
    },
}

fn check_id(id: &str) -> anyhow::Result<()> {
    if model::valid_id(id) {
        Ok(())
    } else {
        Err(BadInput::msg(format!(
            "`{id}` is not a bootstrap token id ([a-z0-9]{{6}}, the part before the dot)"
        ))
        .into())
    }
}

/// Runs `rekey token ...`.
pub async fn run(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::List { json, db: dbargs } => {
            let store = dbargs.connect().await?;
            let listing = admin::list(&store).await?;
            if json {
                // Through `Value`: its objects keep keys sorted, as this
                // document always had them.
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::to_value(&listing)?)?
                );
            } else {
                print_table(&listing);
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke {
            id,
            db: dbargs,
            kube,
        } => {
            check_id(&id)?;
            let config = dbargs.load_config()?;
            let store = dbargs.connect().await?;
            let client = kube.client(config.as_ref()).await?;
            let btc = config
                .as_ref()
                .and_then(|c| c.bootstrap_tokens.clone())
                .unwrap_or_default();
            let actor = format!("cli/{}", super::output::whoami());
            match bootstrap::revoke(&store, &client, &btc, &id, "manual", None, &actor).await? {
                RevokeOutcome::Revoked => println!(
                    "bootstrap token {id} revoked (secret kube-system/bootstrap-token-{id} deleted)"
                ),
                RevokeOutcome::NotLive(state) => {
                    println!("bootstrap token {id} is already {state}; nothing to do")
                }
                RevokeOutcome::Unknown => {
                    return Err(BadInput::msg(format!(
                        "no bootstrap token `{id}`: not tracked in Postgres and no secret kube-system/bootstrap-token-{id}"
                    ))
                    .into());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Create {
            ttl,
            groups,
            usages,
            description,
            keep_until_expiry,
            db: dbargs,
            kube,
        } => {
            let ttl = if ttl.trim() == "0" {
                None
            } else {
                let d: HumanDuration = ttl
                    .parse()
                    .map_err(|e| BadInput::msg(format!("--ttl `{ttl}`: {e}")))?;
                Some(d.chrono())
            };
            for g in &groups {
                if !model::valid_group(g) {
                    return Err(BadInput::msg(format!(
                        "--groups: `{g}` is not allowed: bootstrap token groups must look like system:bootstrappers:<name>"
                    ))
                    .into());
                }
            }
            for u in &usages {
                if !matches!(u.as_str(), "signing" | "authentication") {
                    return Err(BadInput::msg(format!(
                        "--usages: `{u}` is not one of signing, authentication"
                    ))
                    .into());
                }
            }
            let config = dbargs.load_config()?;
            let store = if dbargs.config.is_some() || dbargs.database_url.is_some() {
                Some(dbargs.connect().await?)
            } else {
                None
            };
            let client = kube.client(config.as_ref()).await?;
            let btc = config
                .as_ref()
                .and_then(|c| c.bootstrap_tokens.clone())
                .unwrap_or_default();
            let spec = model::NewTokenSpec {
                ttl,
                usages,
                groups,
                description,
                policy: keep_until_expiry.then_some(model::Policy::KeepUntilExpiry),
            };
            let created = admin::create_new(&client, &spec, Utc::now())
                .await
                .context("creating the bootstrap token")?;
            let id = &created.id;
            // The Secret exists: print the token now, whatever happens next.
            println!("{id}.{}", created.secret.expose_secret());
            if let Some(store) = &store
                && let Err(e) = bootstrap::record_created(
                    store,
                    &btc,
                    &created.object,
                    &format!("cli/{}", super::output::whoami()),
                )
                .await
            {
                eprintln!(
                    "warning: token {id} created but not recorded in Postgres ({e}); the bootstrap watcher will find it"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn fmt_time(t: Option<chrono::DateTime<Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "never".into())
}

fn print_table(listing: &TokenListing) {
    if listing.tokens.is_empty() {
        println!("no bootstrap tokens tracked");
        return;
    }
    println!(
        "{:<8} {:<9} {:<18} {:<21} {:<21} {:>5}  NOTE",
        "ID", "STATE", "POLICY", "CREATED", "EXPIRES", "JOINS"
    );
    for listed in &listing.tokens {
        let t = &listed.token;
        let nodes: Vec<&str> = listed.joins.iter().map(|j| j.node_name.as_str()).collect();
        let note = match (&t.revoked_reason, &t.revoked_node) {
            (Some(r), Some(n)) => format!("{r}: {n}"),
            (Some(r), None) => r.clone(),
            _ if !nodes.is_empty() => format!("joined: {}", nodes.join(", ")),
            _ => String::new(),
        };
        println!(
            "{:<8} {:<9} {:<18} {:<21} {:<21} {:>5}  {note}",
            t.id,
            t.state,
            t.policy,
            fmt_time(t.created),
            fmt_time(t.expiration),
            nodes.len()
        );
    }
}
