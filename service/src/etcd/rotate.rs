//! `rekey etcd rotate-key`: the documented write-key rotation as files.
//!
//! Kubernetes' procedure ("Rotating a decryption key") in three
//! configurations, with the commands to run between them:
//!
//! ```text
//!   1-add-new-key.yaml     new key added SECOND: every API server can read it
//!   2-new-key-first.yaml   new key FIRST: new writes use it; then rewrite all values
//!                          and `rekey etcd verify` until no stale value remains
//!   3-remove-old-key.yaml  old key(s) removed
//! ```
//!
//! When the resource is not encrypted yet (identity or KMS writes), the new
//! provider (default `secretbox`) goes through the same three steps.
//! The new key is 32 random bytes, annotated `# rekey.io/created-at:` so
//! `--max-key-age` knows its age. Files are written mode 0600 in a 0700
//! directory: they hold every key of the configuration.

use std::{
    fmt::Write as _,
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;

use super::encryption::{
    self, ConfigKind, EncryptionConfiguration, GroupResource, Provider, ProviderKind,
};
use crate::secret::{ExposeSecret, SecretBytes, secret_bytes};

/// What [`rotate_key`] writes.
#[derive(Debug, Clone)]
pub struct RotateKeyOptions {
    /// The API server's current EncryptionConfiguration file (named in PLAN.md).
    pub encryption_config: PathBuf,
    /// Directory for the three configurations and PLAN.md (created; must not
    /// already hold them).
    pub out: PathBuf,
    /// Resource whose write key is rotated.
    pub resource: String,
    /// Name of the new key (non-empty, without `:` or whitespace).
    pub key_name: String,
    /// Provider for the new key when the resource is not encrypted yet with
    /// a local key (identity or kms writes).
    pub provider: ProviderKind,
    /// When the key is made (its `rekey.io/created-at` annotation).
    pub now: DateTime<Utc>,
}

/// What [`rotate_key`] wrote.
#[derive(Debug, Clone)]
pub struct RotateKeyReport {
    /// The directory.
    pub out: PathBuf,
    /// The files in it, in the order to use them (`PLAN.md` last).
    pub files: Vec<String>,
    /// `provider:name` of the new key.
    pub new_label: String,
}

/// Why a rotation plan could not be written.
#[derive(Debug, thiserror::Error)]
pub enum RotateKeyError {
    /// The current configuration could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The current configuration is invalid (with YAML paths and lines).
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The rotation cannot be planned from this configuration.
    #[error("{0}")]
    Plan(String),
    /// A step came out invalid (a bug in rekey).
    #[error("internal error: {file} is invalid: {message}")]
    Internal {
        /// The step's file name.
        file: String,
        /// What is wrong with it.
        message: String,
    },
    /// The files could not be written.
    #[error(transparent)]
    Write(std::io::Error),
}

impl RotateKeyError {
    /// True when the user's input is at fault (exit code 2).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Self::Internal { .. })
    }
}

/// The rotation, as file contents.
pub struct Plan {
    /// `(file name, YAML)` of the three steps.
    pub steps: Vec<(String, String)>,
    /// The procedure with commands.
    pub readme: String,
    /// `provider:name` of the new key.
    pub new_label: String,
}

/// Builds the rotation plan (pure apart from the key it is given).
pub fn plan(
    config: &EncryptionConfiguration,
    resource: &str,
    new_name: &str,
    new_secret: &SecretBytes,
    new_provider: ProviderKind,
    now: DateTime<Utc>,
    source: &Path,
) -> Result<Plan, String> {
    let gr = GroupResource::parse(resource);
    // The rule that supplies the write provider for the resource.
    let write_rule = config
        .rules
        .iter()
        .position(|r| r.resources.iter().any(|s| GroupResource::parse(s) == gr))
        .or_else(|| {
            let g = GroupResource {
                group: gr.group.clone(),
                resource: "*".into(),
            };
            config
                .rules
                .iter()
                .position(|r| r.resources.iter().any(|s| GroupResource::parse(s) == g))
        })
        .or_else(|| {
            config
                .rules
                .iter()
                .position(|r| r.resources.iter().any(|s| s == "*.*"))
        })
        .ok_or_else(|| {
            format!("no rule covers `{resource}`: add one to the configuration first")
        })?;
    let write = &config.rules[write_rule].providers[0];
    let keyed = matches!(
        write.kind,
        ProviderKind::Aescbc | ProviderKind::Aesgcm | ProviderKind::Secretbox
    );
    let provider = if keyed { write.kind } else { new_provider };
    if keyed && write.keys.iter().any(|k| k.name == new_name) {
        return Err(format!(
            "key name `{new_name}` is already used by this provider: pick another with --key-name"
        ));
    }
    let new_key = NewKey {
        provider,
        name: new_name.to_string(),
        secret_b64: zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD.encode(new_secret.expose_secret()),
        ),
        created: now,
    };
    let render = |step: Step| render(config, write_rule, keyed, &new_key, step);
    let steps = vec![
        ("1-add-new-key.yaml".to_string(), render(Step::AddSecond)),
        ("2-new-key-first.yaml".to_string(), render(Step::MoveFirst)),
        ("3-remove-old-key.yaml".to_string(), render(Step::RemoveOld)),
    ];
    let new_label = format!("{provider}:{new_name}");
    let old = if keyed {
        format!(
            "{} key(s) {}",
            write.kind,
            write
                .keys
                .iter()
                .map(|k| format!("`{}`", k.name))
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        format!("the `{}` provider", write.kind)
    };
    let readme = readme(source, resource, &new_label, &old, &gr);
    Ok(Plan {
        steps,
        readme,
        new_label,
    })
}

pub(super) struct NewKey {
    provider: ProviderKind,
    name: String,
    secret_b64: zeroize::Zeroizing<String>,
    created: DateTime<Utc>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    AddSecond,
    MoveFirst,
    RemoveOld,
}

pub(super) fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn render(
    config: &EncryptionConfiguration,
    write_rule: usize,
    keyed: bool,
    new: &NewKey,
    step: Step,
) -> String {
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Written by `rekey etcd rotate-key` ({}).",
        match step {
            Step::AddSecond => "step 1 of 3: new key added second",
            Step::MoveFirst => "step 2 of 3: new key first",
            Step::RemoveOld => "step 3 of 3: old key removed",
        }
    );
    match config.kind {
        ConfigKind::Current => {
            y.push_str("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n");
        }
        ConfigKind::Legacy => y.push_str("apiVersion: v1\nkind: EncryptionConfig\n"),
    }
    y.push_str("resources:\n");
    for (i, rule) in config.rules.iter().enumerate() {
        y.push_str("  - resources:\n");
        for r in &rule.resources {
            let _ = writeln!(y, "      - {}", q(r));
        }
        y.push_str("    providers:\n");
        if i != write_rule {
            for p in &rule.providers {
                provider_yaml(&mut y, p, None);
            }
            continue;
        }
        if keyed {
            for (j, p) in rule.providers.iter().enumerate() {
                if j == 0 {
                    provider_yaml(&mut y, p, Some((new, step)));
                } else {
                    provider_yaml(&mut y, p, None);
                }
            }
        } else {
            let new_provider = |y: &mut String| {
                let _ = writeln!(y, "      - {}:\n          keys:", new.provider);
                key_yaml(y, &new.name, &new.secret_b64, Some(new.created));
            };
            for (j, p) in rule.providers.iter().enumerate() {
                match (step, j) {
                    (Step::AddSecond, 1) => {
                        new_provider(&mut y);
                        provider_yaml(&mut y, p, None);
                    }
                    (Step::MoveFirst | Step::RemoveOld, 0) => {
                        new_provider(&mut y);
                        // identity stays readable after step 3 only if it was not the old writer
                        if step == Step::MoveFirst {
                            provider_yaml(&mut y, p, None);
                        }
                    }
                    _ => provider_yaml(&mut y, p, None),
                }
            }
            if step == Step::AddSecond && rule.providers.len() == 1 {
                new_provider(&mut y);
            }
        }
    }
    y
}

pub(super) fn key_yaml(
    y: &mut String,
    name: &str,
    secret_b64: &str,
    created: Option<DateTime<Utc>>,
) {
    if let Some(t) = created {
        let _ = writeln!(
            y,
            "            # {}: {}",
            encryption::CREATED_AT_ANNOTATION,
            t.format("%Y-%m-%dT%H:%M:%SZ")
        );
    }
    let _ = writeln!(
        y,
        "            - name: {}\n              secret: {}",
        q(name),
        q(secret_b64)
    );
}

pub(super) fn provider_yaml(y: &mut String, p: &Provider, new: Option<(&NewKey, Step)>) {
    match p.kind {
        ProviderKind::Identity => y.push_str("      - identity: {}\n"),
        ProviderKind::Kms => {
            let k = p.kms.as_ref().expect("kms provider has settings");
            let _ = writeln!(
                y,
                "      - kms:\n          apiVersion: {}\n          name: {}\n          endpoint: {}",
                k.api_version,
                q(&k.name),
                q(&k.endpoint)
            );
            if k.api_version == "v1"
                && let Some(c) = k.cachesize
            {
                let _ = writeln!(y, "          cachesize: {c}");
            }
            let _ = writeln!(y, "          timeout: {}ms", k.timeout_nanos / 1_000_000);
        }
        kind => {
            let _ = writeln!(y, "      - {kind}:\n          keys:");
            let old = |y: &mut String| {
                for k in &p.keys {
                    let secret =
                        base64::engine::general_purpose::STANDARD.encode(k.secret.expose_secret());
                    key_yaml(y, &k.name, &secret, k.created_at);
                }
            };
            match new {
                None => old(y),
                Some((n, step)) => {
                    let mine =
                        |y: &mut String| key_yaml(y, &n.name, &n.secret_b64, Some(n.created));
                    match step {
                        Step::AddSecond => {
                            let mut keys = p.keys.iter();
                            if let Some(first) = keys.next() {
                                let s = base64::engine::general_purpose::STANDARD
                                    .encode(first.secret.expose_secret());
                                key_yaml(y, &first.name, &s, first.created_at);
                            }
                            mine(y);
                            for k in keys {
                                let s = base64::engine::general_purpose::STANDARD
                                    .encode(k.secret.expose_secret());
                                key_yaml(y, &k.name, &s, k.created_at);
                            }
                        }
                        Step::MoveFirst => {
                            mine(y);
                            old(y);
                        }
                        Step::RemoveOld => mine(y),
                    }
                }
            }
        }
    }
}

fn readme(source: &Path, resource: &str, new_label: &str, old: &str, gr: &GroupResource) -> String {
    let kind = if gr.group.is_empty() {
        gr.resource.clone()
    } else {
        format!("{}.{}", gr.resource, gr.group)
    };
    format!(
        r#"# Rotating the {resource} write key

Generated by `rekey etcd rotate-key` from `{src}`.
New key: `{new_label}`. Replaced: {old}.
These files contain every key of the configuration: keep them mode 0600 and
delete them when the rotation is done.

Run each step on EVERY control-plane node before moving on to the next one.
Replace `/etc/kubernetes/enc/enc.yaml` with the path given to
`kube-apiserver --encryption-provider-config`.

## Step 1: new key added second (every API server can read it)

    install -m 600 1-add-new-key.yaml /etc/kubernetes/enc/enc.yaml
    # restart kube-apiserver on this node (static pod: move its manifest out
    # of /etc/kubernetes/manifests and back), or wait for the automatic reload
    # when --encryption-provider-config-automatic-reload is set

## Step 2: new key first (new writes use it)

    install -m 600 2-new-key-first.yaml /etc/kubernetes/enc/enc.yaml
    # restart kube-apiserver on every control-plane node

Then rewrite every value with the new key:

    kubectl get {kind} --all-namespaces -o json | kubectl replace -f -

and check that no value still needs the old key (repeat until `stale` is empty
and the exit code is 0):

    rekey etcd verify --encryption-config 2-new-key-first.yaml \
      --endpoints https://127.0.0.1:2379 --cacert ca.crt --cert client.crt --key client.key \
      --resource {resource} --json

## Step 3: old key removed

    install -m 600 3-remove-old-key.yaml /etc/kubernetes/enc/enc.yaml
    # restart kube-apiserver on every control-plane node
    rekey etcd verify --encryption-config 3-remove-old-key.yaml --resource {resource} ...

Only remove the old key once step 2's check shows no stale value: a value the
configuration cannot open makes its object unreadable.
"#,
        src = source.display()
    )
}

/// Writes the plan into `dir` (created 0700; files 0600, never overwritten).
pub fn write_plan(dir: &Path, plan: &Plan) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let mut files: Vec<(&str, &str)> = plan
        .steps
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    files.push(("PLAN.md", &plan.readme));
    for (name, text) in files {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join(name))
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("{}: {e}", dir.join(name).display()))
            })?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    Ok(())
}

/// Reads and validates the current EncryptionConfiguration. The text holds
/// the keys (base64): it is wiped once parsed.
pub fn load(path: &Path) -> Result<EncryptionConfiguration, RotateKeyError> {
    let text = fs::read_to_string(path)
        .map(zeroize::Zeroizing::new)
        .map_err(|source| RotateKeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    encryption::parse(&text).map_err(|e| RotateKeyError::Invalid {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Plans the rotation of `config` with a fresh random key and writes the
/// three configurations and PLAN.md into `opts.out`.
pub fn rotate_key(
    config: &EncryptionConfiguration,
    opts: &RotateKeyOptions,
) -> Result<RotateKeyReport, RotateKeyError> {
    let mut bytes = vec![0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = secret_bytes(bytes);
    let plan = plan(
        config,
        &opts.resource,
        &opts.key_name,
        &secret,
        opts.provider,
        opts.now,
        &opts.encryption_config,
    )
    .map_err(RotateKeyError::Plan)?;
    // The steps must themselves be valid configurations.
    for (file, text) in &plan.steps {
        encryption::parse(text).map_err(|e| RotateKeyError::Internal {
            file: file.clone(),
            message: e.to_string(),
        })?;
    }
    write_plan(&opts.out, &plan).map_err(RotateKeyError::Write)?;
    let mut files: Vec<String> = plan.steps.iter().map(|(n, _)| n.clone()).collect();
    files.push("PLAN.md".into());
    Ok(RotateKeyReport {
        out: opts.out.clone(),
        files,
        new_label: plan.new_label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";
    const K2: &str = "CAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAg=";

    fn labels(text: &str) -> Vec<String> {
        let c = encryption::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        c.transformers_for(&GroupResource::parse("secrets"))
            .iter()
            .map(|t| t.label())
            .collect()
    }

    fn run_plan(text: &str) -> Plan {
        let c = encryption::parse(text).unwrap();
        let secret = secret_bytes(vec![9u8; 32]);
        plan(
            &c,
            "secrets",
            "new",
            &secret,
            ProviderKind::Secretbox,
            "2026-01-01T00:00:00Z".parse().unwrap(),
            Path::new("enc.yaml"),
        )
        .unwrap()
    }

    #[test]
    fn keyed_rotation_follows_the_procedure() {
        let text = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - aesgcm:\n          keys:\n            - {{name: k1, secret: {K1}}}\n            - {{name: k0, secret: {K2}}}\n      - identity: {{}}\n  - resources: [configmaps]\n    providers:\n      - identity: {{}}\n"
        );
        let p = run_plan(&text);
        assert_eq!(p.new_label, "aesgcm:new");
        assert_eq!(
            labels(&p.steps[0].1),
            ["aesgcm:k1", "aesgcm:new", "aesgcm:k0", "identity"]
        );
        assert_eq!(
            labels(&p.steps[1].1),
            ["aesgcm:new", "aesgcm:k1", "aesgcm:k0", "identity"]
        );
        assert_eq!(labels(&p.steps[2].1), ["aesgcm:new", "identity"]);
        let c = encryption::parse(&p.steps[2].1).unwrap();
        let new = &c.rules[0].providers[0].keys[0];
        assert_eq!(
            new.created_at.unwrap().to_rfc3339(),
            "2026-01-01T00:00:00+00:00"
        );
        assert_eq!(new.secret.expose_secret(), &[9u8; 32][..]);
        // The other rule is untouched.
        assert_eq!(c.rules[1].resources, ["configmaps"]);
        assert!(
            p.readme
                .contains("kubectl get secrets --all-namespaces -o json | kubectl replace -f -")
        );
    }

    #[test]
    fn enabling_encryption_from_identity() {
        let text = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - identity: {}\n";
        let p = run_plan(text);
        assert_eq!(labels(&p.steps[0].1), ["identity", "secretbox:new"]);
        assert_eq!(labels(&p.steps[1].1), ["secretbox:new", "identity"]);
        assert_eq!(labels(&p.steps[2].1), ["secretbox:new"]);
    }

    #[test]
    fn refuses_uncovered_and_taken_names() {
        let text = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [configmaps]\n    providers:\n      - identity: {}\n";
        let c = encryption::parse(text).unwrap();
        let s = secret_bytes(vec![1u8; 32]);
        assert!(
            plan(
                &c,
                "secrets",
                "n",
                &s,
                ProviderKind::Secretbox,
                Utc::now(),
                Path::new("x")
            )
            .is_err()
        );
        let text = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - secretbox: {{keys: [{{name: nk, secret: {K1}}}]}}\n"
        );
        let c = encryption::parse(&text).unwrap();
        assert!(
            plan(
                &c,
                "secrets",
                "nk",
                &s,
                ProviderKind::Secretbox,
                Utc::now(),
                Path::new("x")
            )
            .is_err()
        );
    }
}
