//! Reading `rekey.toml`: parsing (strict: unknown fields are errors),
//! environment overrides, relative paths, `database.url_file`, and the
//! position (field path and line) of every error.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use secrecy::SecretString;

use super::{
    Config,
    env::{apply_env, database_url},
    error::ConfigError,
};
use crate::sink::SinkSpec;

/// Longest `database.url_file` read: a URL is short, and a path like
/// `/dev/zero` must not make `parse` read forever.
pub const MAX_URL_FILE: u64 = 64 * 1024;

/// Reads `database.url_file` (at most [`MAX_URL_FILE`] bytes) into a wiped buffer.
fn read_url_file(file: &Path) -> Result<zeroize::Zeroizing<String>, ConfigError> {
    use std::io::Read;
    let fail = |m: String| ConfigError::new("database.url_file", m);
    let mut text = zeroize::Zeroizing::new(String::new());
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_URL_FILE + 1).read_to_string(&mut text))
        .map_err(|e| fail(format!("cannot read {}: {e}", file.display())))?;
    if text.len() as u64 > MAX_URL_FILE {
        return Err(fail(format!(
            "{} is larger than {} KiB: not a database URL",
            file.display(),
            MAX_URL_FILE / 1024
        )));
    }
    Ok(text)
}

impl Config {
    /// Reads, overrides from the process environment, and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_path_buf()),
            path: "(file)".into(),
            message: format!("cannot read: {e}"),
            line: None,
        })?;
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &env, base).map_err(|mut e| {
            e.file = Some(path.to_path_buf());
            e
        })
    }

    /// Parses `text`, applies overrides from `env`, resolves relative paths
    /// against `base`, and validates.
    pub fn parse(
        text: &str,
        env: &BTreeMap<String, String>,
        base: &Path,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map(|s| line_of(text, s.start));
            ConfigError {
                file: None,
                path: "(syntax)".into(),
                message: e.message().trim().to_string(),
                line,
            }
        })?;
        apply_env(&mut table, env)?;
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let path = display_path(e.path());
                let line = find_line(text, e.path());
                let message = e.into_inner().message().trim().to_string();
                ConfigError {
                    file: None,
                    path,
                    message,
                    line,
                }
            })?;
        if let Some(url) = database_url(env) {
            config.database.url = Some(url);
        }
        config.resolve_paths(base);
        if config.database.url.is_none()
            && let Some(file) = &config.database.url_file
        {
            // The URL holds a password: the file's text is wiped once copied.
            let url = read_url_file(file)?;
            config.database.url = Some(SecretString::from(url.trim().to_string()));
        }
        config.validate().map_err(|mut e| {
            e.line = e.line.or_else(|| find_line_str(text, &e.path));
            e
        })?;
        Ok(config)
    }

    /// Makes relative paths in the file relative to the file's directory.
    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        if let Some(section) = &mut self.issuer {
            for i in section.entries_mut() {
                for p in [&mut i.ca_cert, &mut i.ca_key, &mut i.ca_bundle]
                    .into_iter()
                    .flatten()
                {
                    fix(p);
                }
            }
        }
        for c in &mut self.certificates {
            // `issuer = "default"` is the same as no issuer: stored alike,
            // so writing it out re-issues nothing.
            if c.issuer.as_deref() == Some(crate::issue::DEFAULT_ISSUER) {
                c.issuer = None;
            }
            match &mut c.sink {
                SinkSpec::File { dir } => fix(dir),
                SinkSpec::Kubeconfig { path, .. } => fix(path),
                SinkSpec::KubernetesSecret { .. } => {}
            }
        }
        for b in &mut self.bundles {
            if let crate::sink::trust::BundleSinkSpec::File { path } = &mut b.sink {
                fix(path);
            }
        }
        for t in &mut self.tokens {
            if let SinkSpec::File { dir } = &mut t.sink {
                fix(dir);
            }
        }
        for s in &mut self.scans {
            fix(&mut s.dir);
        }
        if let Some(p) = &mut self.database.url_file {
            fix(p);
        }
        if let Some(b) = &mut self.backup {
            fix(&mut b.kek_file);
        }
        if let Some(e) = &mut self.etcd {
            for p in [
                &mut e.ca_cert,
                &mut e.client_cert,
                &mut e.client_key,
                &mut e.encryption_config,
            ]
            .into_iter()
            .flatten()
            {
                fix(p);
            }
        }
        if let Some(k) = &mut self.kubernetes
            && let Some(p) = &mut k.kubeconfig
        {
            fix(p);
        }
        if let Some(a) = &mut self.api {
            a.resolve_paths(base);
        }
    }
}

fn display_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    if out.is_empty() {
        "(top level)".into()
    } else {
        out
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

fn find_line(text: &str, path: &serde_path_to_error::Path) -> Option<usize> {
    find_line_str(text, &display_path(path))
}

/// Best-effort line of a field path like `certificate[1].sink.dir` in the
/// source: finds the n-th `[[certificate]]` header, then the first key below it.
fn find_line_str(text: &str, path: &str) -> Option<usize> {
    let mut parts = path.split('.');
    let first = parts.next()?;
    let (section, index) = match first.split_once('[') {
        Some((s, rest)) => (s, rest.trim_end_matches(']').parse::<usize>().ok()),
        None => (first, None),
    };
    let keys: Vec<&str> = parts.collect();
    let lines: Vec<&str> = text.lines().collect();
    let start = match index {
        Some(n) => {
            let header = format!("[[{section}]]");
            lines
                .iter()
                .enumerate()
                .filter(|(_, l)| l.trim() == header)
                .nth(n)?
                .0
        }
        None if !keys.is_empty() => {
            let header = format!("[{section}]");
            lines.iter().position(|l| l.trim() == header)?
        }
        None => {
            return lines
                .iter()
                .position(|l| key_of(l) == Some(section))
                .map(|i| i + 1);
        }
    };
    let key = keys.first().map(|k| k.split('[').next().unwrap_or(k));
    let Some(key) = key else {
        return Some(start + 1);
    };
    lines
        .iter()
        .enumerate()
        .skip(start + 1)
        .take_while(|(_, l)| !l.trim_start().starts_with('['))
        .find(|(_, l)| key_of(l) == Some(key))
        .map(|(i, _)| i + 1)
        .or(Some(start + 1))
}

fn key_of(line: &str) -> Option<&str> {
    let (k, _) = line.split_once('=')?;
    Some(k.trim().trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::KeyType;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, &BTreeMap::new(), Path::new("/etc/rekey"))
    }

    const GOOD: &str = r#"
[database]
url = "postgres://rekey@localhost/rekey"

[issuer]
ca_cert = "ca/ca.crt"
ca_key = "/etc/rekey/ca/ca.key"

[[certificate]]
name = "cert/default/web-tls"
dns_names = ["web.default.svc"]
ip_addresses = ["10.0.0.1"]
lifetime = "24h"
renew_fraction = 0.66
schedule = "0 0 3 * * *"
sink = { kind = "file", dir = "web" }

[[token]]
name = "sa-token/ci/deployer"
namespace = "ci"
service_account = "deployer"
audiences = ["https://kubernetes.default.svc"]
lifetime = "1h"
sink = { kind = "kubernetes-secret", namespace = "ci", name = "deployer-token" }
"#;

    #[test]
    fn parses_the_design_example() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.certificates.len(), 1);
        assert_eq!(c.certificates[0].key, KeyType::EcdsaP256);
        assert_eq!(
            c.issuers()[0].ca_cert,
            Some(PathBuf::from("/etc/rekey/ca/ca.crt"))
        );
        assert_eq!(c.issuers()[0].name(), "default");
        assert_eq!(
            c.certificates[0].sink,
            SinkSpec::File {
                dir: "/etc/rekey/web".into()
            }
        );
        assert_eq!(c.tokens[0].lifetime.get().as_secs(), 3600);
    }

    fn err_of(text: &str) -> ConfigError {
        parse(text).unwrap_err()
    }

    #[test]
    fn unknown_field_names_it() {
        let e = err_of(&GOOD.replace("lifetime = \"24h\"", "lifetime = \"24h\"\ncolour = \"red\""));
        assert_eq!(e.path, "certificate[0].colour", "{e}");
        assert!(e.message.contains("colour"), "{e}");
        assert_eq!(e.line, Some(14), "{e}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (
                "lifetime = \"24h\"",
                "lifetime = \"24x\"",
                "certificate[0].lifetime",
            ),
            (
                "renew_fraction = 0.66",
                "renew_fraction = 1.5",
                "certificate[0].renew_fraction",
            ),
            (
                "schedule = \"0 0 3 * * *\"",
                "schedule = \"61 * * * *\"",
                "certificate[0].schedule",
            ),
            (
                "ip_addresses = [\"10.0.0.1\"]",
                "ip_addresses = [\"10.0.0.300\"]",
                "certificate[0].ip_addresses[0]",
            ),
            (
                "dns_names = [\"web.default.svc\"]",
                "dns_names = [\"web..svc\"]",
                "certificate[0].dns_names[0]",
            ),
            (
                "lifetime = \"1h\"",
                "lifetime = \"5m\"",
                "token[0].lifetime",
            ),
            ("kind = \"file\"", "kind = \"ftp\"", "certificate[0].sink"),
        ];
        for (from, to, path) in cases {
            let e = err_of(&GOOD.replace(from, to));
            assert!(e.path.starts_with(path), "{to}: {e}");
            assert!(e.line.is_some(), "{to}: no line in {e}");
        }
        let e = err_of(&GOOD.replace("renew_fraction = 0.66", "key = \"rsa-1024\""));
        assert_eq!(e.path, "certificate[0].key");
        assert!(e.message.contains("rsa-1024"), "{e}");
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = err_of("[database]\nurl = \n");
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn env_overrides() {
        let mut env = BTreeMap::new();
        env.insert(
            "DATABASE_URL".to_string(),
            "postgres://other/db".to_string(),
        );
        env.insert("REKEY_ENGINE_CONCURRENCY".to_string(), "3".to_string());
        env.insert("REKEY_ISSUER_CA_KEY".to_string(), "/x/ca.key".to_string());
        let c = Config::parse(GOOD, &env, Path::new("/")).unwrap();
        assert_eq!(c.database.url().unwrap(), "postgres://other/db");
        assert_eq!(c.engine.concurrency, 3);
        assert_eq!(c.issuers()[0].ca_key, Some(PathBuf::from("/x/ca.key")));

        let mut env = BTreeMap::new();
        env.insert("REKEY_ENGINE_COLOUR".to_string(), "3".to_string());
        let e = Config::parse(GOOD, &env, Path::new("/")).unwrap_err();
        assert!(e.message.contains("colour"), "{e}");
        let mut env = BTreeMap::new();
        env.insert("REKEY_NOPE_X".to_string(), "3".to_string());
        assert!(Config::parse(GOOD, &env, Path::new("/")).is_err());
    }

    #[test]
    fn database_url_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("url"), "postgres://from-file/db\n").unwrap();
        let c = Config::parse(
            "[database]\nurl_file = \"url\"\n",
            &BTreeMap::new(),
            dir.path(),
        )
        .unwrap();
        assert_eq!(c.database.url().unwrap(), "postgres://from-file/db");
        let e = Config::parse(
            "[database]\nurl_file = \"nope\"\n",
            &BTreeMap::new(),
            dir.path(),
        )
        .unwrap_err();
        assert_eq!(e.path, "database.url_file");
        // An endless file is refused after a bounded read, not read forever.
        let e = Config::parse(
            "[database]\nurl_file = \"/dev/zero\"\n",
            &BTreeMap::new(),
            dir.path(),
        )
        .unwrap_err();
        assert_eq!(e.path, "database.url_file");
        assert!(e.message.contains("larger than"), "{e}");
    }

    #[test]
    fn duplicates_are_rejected() {
        let text = format!(
            "{GOOD}\n[[certificate]]\nname = \"cert/default/web-tls\"\ndns_names=[\"a\"]\nlifetime=\"1h\"\nsink={{kind=\"file\", dir=\"x\"}}\n"
        );
        let e = err_of(&text);
        assert_eq!(e.path, "certificate[1].name");
        assert!(e.message.contains("duplicate"));
    }

    const ISSUERS: &str = r#"
[[issuer]]
name = "cluster"
ca_cert = "ca/ca.crt"
ca_key = "ca/ca.key"
allowed_namespaces = ["shop", "team-*"]
allowed_dns_names = ["*.{namespace}.svc"]

[[issuer]]
name = "apiserver-clients"
kind = "kubernetes-csr"
signer_name = "kubernetes.io/kube-apiserver-client"

[[certificate]]
name = "cert/shop/web"
issuer = "cluster"
dns_names = ["web.shop.svc"]
lifetime = "24h"
sink = { kind = "file", dir = "web" }

[[certificate]]
name = "cert/ci/deployer"
issuer = "apiserver-clients"
common_name = "deployer"
usages = ["client"]
lifetime = "1h"
sink = { kind = "file", dir = "deployer" }
"#;

    #[test]
    fn named_issuers_and_their_certificates() {
        let c = parse(ISSUERS).unwrap();
        let issuers = c.issuers();
        assert_eq!(issuers.len(), 2);
        assert_eq!(
            issuers[0].ca_key,
            Some(PathBuf::from("/etc/rekey/ca/ca.key"))
        );
        assert_eq!(c.certificates[1].issuer_name(), "apiserver-clients");
        assert!(
            c.needs_kubernetes(),
            "a kubernetes-csr issuer needs the API"
        );
        // `issuer = "default"` is stored as no issuer.
        let c = parse(&GOOD.replace(
            "lifetime = \"24h\"",
            "lifetime = \"24h\"\nissuer = \"default\"",
        ))
        .unwrap();
        assert_eq!(c.certificates[0].issuer, None);
    }

    #[test]
    fn issuer_mistakes_name_the_field() {
        let cases = [
            (
                ISSUERS.replace("issuer = \"cluster\"", "issuer = \"nope\""),
                "certificate[0].issuer",
                "no issuer named `nope`",
            ),
            (
                ISSUERS.replace("issuer = \"cluster\"\n", ""),
                "certificate[0].issuer",
                "no issuer named `default`",
            ),
            (
                ISSUERS.replace("usages = [\"client\"]", "usages = [\"server\", \"client\"]"),
                "certificate[1].usages",
                "client certificates only",
            ),
            (
                ISSUERS.replace("lifetime = \"1h\"", "lifetime = \"5m\""),
                "certificate[1].lifetime",
                "10m",
            ),
            (
                ISSUERS.replace("signer_name = \"kubernetes.io/kube-apiserver-client\"", ""),
                "issuer[1].signer_name",
                "missing",
            ),
            (
                ISSUERS.replace("name = \"apiserver-clients\"", "name = \"cluster\""),
                "issuer[1].name",
                "duplicate",
            ),
            (
                ISSUERS.replace("name = \"cert/shop/web\"", "name = \"ca/cluster\""),
                "certificate[0].name",
                "CA certificates",
            ),
        ];
        for (text, path, message) in cases {
            let e = err_of(&text);
            assert_eq!(e.path, path, "{e}");
            assert!(e.message.contains(message), "{e}");
            assert!(e.line.is_some(), "{e}");
        }
        let e = err_of(
            "[[certificate]]\nname = \"cert/a\"\ndns_names = [\"a\"]\nlifetime = \"1h\"\nsink = { kind = \"file\", dir = \"a\" }\n",
        );
        assert_eq!(e.path, "certificate[0].issuer");
        assert!(e.message.contains("rekey ca init"), "{e}");
    }

    #[test]
    fn secrets_do_not_print() {
        let c = parse(GOOD).unwrap();
        assert!(!format!("{c:?}").contains("rekey@localhost"));
        assert!(
            !serde_json::to_string(&c)
                .unwrap()
                .contains("rekey@localhost")
        );
    }
}
