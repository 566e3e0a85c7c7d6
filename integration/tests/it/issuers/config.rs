//! Issuer configuration on bad input: exit 2 naming the issuer and the
//! field, and nothing already published changes (issue 12, "Bad input").

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use rekey::issue::{CertAuthority, KeyType};
use rekey_integration::{
    bin::{outcome, rekey, run},
    serve::{Scenario, read_sink, wait_for},
};

fn issuer(name: &str, cert: &str, key: &str) -> String {
    format!("[[issuer]]\nname = \"{name}\"\nca_cert = \"{cert}\"\nca_key = \"{key}\"\n\n")
}

fn cert(name: &str, issuer: &str, dir: &str) -> String {
    format!(
        "[[certificate]]\nname = \"{name}\"\nissuer = \"{issuer}\"\ndns_names = [\"web.default.svc\"]\n\
         lifetime = \"24h\"\nsink = {{ kind = \"file\", dir = \"{dir}\" }}\n\n"
    )
}

/// A self-signed certificate that is not a usable CA (OpenSSL, with the
/// given extensions), in `dir/<name>.crt` and `.key`.
fn openssl_cert(dir: &std::path::Path, name: &str, exts: &[&str]) -> (String, String) {
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let mut args: Vec<String> = [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=not a CA",
        "-days",
        "30",
        "-keyout",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(key.display().to_string());
    args.push("-out".into());
    args.push(crt.display().to_string());
    for e in exts {
        args.push("-addext".into());
        args.push(e.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out) = rekey_integration::serve::openssl(&args);
    assert_eq!(code, 0, "openssl req: {out}");
    (crt.display().to_string(), key.display().to_string())
}

#[tokio::test]
async fn bad_issuers_exit_2_naming_issuer_and_field_and_change_nothing() {
    let s = Scenario::new().await;
    let ca = (
        s.path("ca/ca.crt").display().to_string(),
        s.path("ca/ca.key").display().to_string(),
    );
    let web = s.path("web").display().to_string();
    let head = format!("[database]\nurl = \"{}\"\n\n", s.db.url);

    // A good configuration publishes first: what the refused ones must leave alone.
    let good = format!(
        "{head}{}{}",
        issuer("cluster", &ca.0, &ca.1),
        cert("cert/default/web", "cluster", &web)
    );
    let path = s.write_config("good.toml", &good);
    let mut server = s.serve(&path, &[]);
    let before = wait_for(Duration::from_secs(60), || read_sink(&s.path("web")))
        .unwrap_or_else(|| panic!("not published:\n{}", server.log()));
    assert_eq!(
        server.terminate(Duration::from_secs(20)),
        Some(0),
        "{}",
        server.log()
    );
    let files = |dir: &str| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = walk(std::path::Path::new(dir));
        v.sort();
        v
    };
    let published = files(&web);

    let scratch = s.path("bad");
    std::fs::create_dir_all(&scratch).unwrap();
    let leaf = openssl_cert(
        &scratch,
        "leaf",
        &[
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature",
        ],
    );
    let no_sign = openssl_cert(
        &scratch,
        "nosign",
        &[
            "basicConstraints=critical,CA:TRUE",
            "keyUsage=critical,digitalSignature",
        ],
    );
    let now = Utc::now();
    let (expired, expired_key) = CertAuthority::generate(
        "expired CA",
        KeyType::EcdsaP256,
        TimeDelta::days(1),
        now - TimeDelta::days(10),
    )
    .unwrap();
    expired
        .write_files(&expired_key, &scratch.join("expired"), false)
        .unwrap();
    let exp = (
        scratch.join("expired/ca.crt").display().to_string(),
        scratch.join("expired/ca.key").display().to_string(),
    );
    let (other, other_key) =
        CertAuthority::generate("other CA", KeyType::EcdsaP256, TimeDelta::days(30), now).unwrap();
    other
        .write_files(&other_key, &scratch.join("other"), false)
        .unwrap();
    let other_key = scratch.join("other/ca.key").display().to_string();

    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "not a CA",
            format!(
                "{head}{}{}",
                issuer("cluster", &leaf.0, &leaf.1),
                cert("cert/default/web", "cluster", &web)
            ),
            vec!["issuer[cluster].ca_cert", "CA"],
        ),
        (
            "no keyCertSign",
            format!(
                "{head}{}{}",
                issuer("cluster", &no_sign.0, &no_sign.1),
                cert("cert/default/web", "cluster", &web)
            ),
            vec!["issuer[cluster].ca_cert", "keyCertSign"],
        ),
        (
            "key does not match",
            format!(
                "{head}{}{}",
                issuer("cluster", &ca.0, &other_key),
                cert("cert/default/web", "cluster", &web)
            ),
            vec!["issuer[cluster].ca_key", "does not match"],
        ),
        (
            "expired",
            format!(
                "{head}{}{}",
                issuer("cluster", &exp.0, &exp.1),
                cert("cert/default/web", "cluster", &web)
            ),
            vec!["issuer[cluster].ca_cert", "expired"],
        ),
        (
            "old [issuer] table is `default`",
            format!(
                "{head}[issuer]\nca_cert = \"{}\"\nca_key = \"{}\"\n\n{}",
                leaf.0,
                leaf.1,
                cert("cert/default/web", "default", &web)
            ),
            vec!["issuer[default].ca_cert"],
        ),
        (
            "unknown issuer",
            format!(
                "{head}{}{}",
                issuer("cluster", &ca.0, &ca.1),
                cert("cert/default/web", "clustr", &web)
            ),
            vec!["certificate[0].issuer", "clustr"],
        ),
        (
            "no issuer field means `default`, and there is none",
            format!(
                "{head}{}{}",
                issuer("cluster", &ca.0, &ca.1),
                cert("cert/default/web", "cluster", &web).replace("issuer = \"cluster\"\n", "")
            ),
            vec!["certificate[0].issuer", "default"],
        ),
        (
            "duplicate name",
            format!(
                "{head}{}{}{}",
                issuer("cluster", &ca.0, &ca.1),
                issuer("cluster", &ca.0, &ca.1),
                cert("cert/default/web", "cluster", &web)
            ),
            vec!["issuer[1].name", "duplicate"],
        ),
        (
            "unnamed [[issuer]]",
            format!(
                "{head}[[issuer]]\nca_cert = \"{}\"\nca_key = \"{}\"\n\n{}",
                ca.0,
                ca.1,
                cert("cert/default/web", "cluster", &web)
            ),
            vec!["issuer[0].name"],
        ),
        (
            "kubernetes-csr without signer_name",
            format!(
                "{head}{}[[issuer]]\nname = \"clients\"\nkind = \"kubernetes-csr\"\n\n{}",
                issuer("cluster", &ca.0, &ca.1),
                cert("cert/default/web", "cluster", &web)
            ),
            vec!["issuer[1].signer_name"],
        ),
        (
            "kubernetes-csr with a CA key",
            format!(
                "{head}{}[[issuer]]\nname = \"clients\"\nkind = \"kubernetes-csr\"\nsigner_name = \"example.com/clients\"\nca_key = \"{}\"\n\n{}",
                issuer("cluster", &ca.0, &ca.1),
                ca.1,
                cert("cert/default/web", "cluster", &web)
            ),
            vec!["issuer[1].ca_key", "cluster's to rotate"],
        ),
        (
            "policy glob",
            format!(
                "{head}[[issuer]]\nname = \"cluster\"\nca_cert = \"{}\"\nca_key = \"{}\"\nallowed_dns_names = [\"*.{{ns}}.svc\"]\n\n{}",
                ca.0,
                ca.1,
                cert("cert/default/web", "cluster", &web)
            ),
            vec!["issuer[0].allowed_dns_names[0]"],
        ),
        (
            "unknown field",
            format!(
                "{head}[[issuer]]\nname = \"cluster\"\nca_cert = \"{}\"\nca_key = \"{}\"\ncolour = \"red\"\n\n{}",
                ca.0,
                ca.1,
                cert("cert/default/web", "cluster", &web)
            ),
            vec!["issuer[0]", "colour"],
        ),
    ];
    for (i, (what, text, needles)) in cases.iter().enumerate() {
        let path = s.write_config(&format!("bad-{i}.toml"), text);
        let (code, _, err) = outcome(&run(rekey().arg("serve").arg("--config").arg(&path)));
        assert_eq!(code, 2, "{what}: exit {code}: {err}");
        for n in needles {
            assert!(
                err.contains(n),
                "{what}: stderr does not mention `{n}`: {err}"
            );
        }
    }
    // Nothing published changed, byte for byte.
    assert_eq!(files(&web), published);
    assert_eq!(
        read_sink(&s.path("web")).map(|s| s.version),
        Some(before.version)
    );
}

fn walk(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            out.extend(walk(&p));
        } else if meta.file_type().is_symlink() {
            out.push((
                p.display().to_string(),
                std::fs::read_link(&p)
                    .unwrap()
                    .display()
                    .to_string()
                    .into_bytes(),
            ));
        } else {
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    out
}
