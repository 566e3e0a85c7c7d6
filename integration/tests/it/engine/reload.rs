//! `rekey serve` follows its configuration file (issue 13, item 5): a
//! credential added, changed and removed takes effect without a restart; a
//! file swapped in through a ConfigMap-style `..data` symlink counts; SIGHUP
//! reloads at once; a broken file is refused with the start-up error text,
//! counted, and the running configuration stays; restart-only sections are
//! named.

use std::{path::Path, time::Duration};

use rekey_integration::{
    bin::{outcome, rekey, run},
    serve::{Scenario, read_sink, wait_for},
};

fn cert(name: &str, dns: &str, dir: &Path) -> String {
    format!(
        "[[certificate]]\nname = \"{name}\"\ndns_names = [\"{dns}\"]\nlifetime = \"24h\"\n\
         sink = {{ kind = \"file\", dir = \"{}\" }}\n\n",
        dir.display()
    )
}

fn sans(pem: &str) -> Vec<String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let x = p.parse_x509().unwrap();
    x.subject_alternative_name()
        .unwrap()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .map(|g| g.to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Writes `text` as a ConfigMap volume does: a new `..<n>` directory, the
/// `..data` symlink swapped by rename; `rekey.toml` links into `..data`.
fn publish(dir: &Path, n: u32, text: &str) {
    let version = dir.join(format!("..v{n}"));
    std::fs::create_dir_all(&version).unwrap();
    std::fs::write(version.join("rekey.toml"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..v{n}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join("rekey.toml");
    if !link.exists() {
        std::os::unix::fs::symlink("..data/rekey.toml", &link).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_configuration_file_is_followed_live() {
    let s = Scenario::new().await;
    let metrics_port = rekey::devdb::free_port().unwrap();
    let head = format!(
        "{}\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\n",
        s.config_head("max_jitter = \"0s\"")
    );
    let (a, b) = (s.path("sinks/a"), s.path("sinks/b"));
    let cm = s.path("configmap");
    std::fs::create_dir_all(&cm).unwrap();
    publish(&cm, 1, &format!("{head}{}", cert("cert/a", "a.test", &a)));
    let config = cm.join("rekey.toml");
    let server = s.serve(&config, &[]);
    let first = wait_for(Duration::from_secs(60), || read_sink(&a))
        .unwrap_or_else(|| panic!("cert/a not published:\n{}", server.log()));
    let log = || server.log();

    // Added: published without a restart.
    publish(
        &cm,
        2,
        &format!(
            "{head}{}{}",
            cert("cert/a", "a.test", &a),
            cert("cert/b", "b.test", &b)
        ),
    );
    wait_for(Duration::from_secs(30), || read_sink(&b))
        .unwrap_or_else(|| panic!("cert/b was not added live:\n{}", log()));

    // Changed: re-issued with the new name at once.
    publish(
        &cm,
        3,
        &format!(
            "{head}{}{}",
            cert("cert/a", "a2.test", &a),
            cert("cert/b", "b.test", &b)
        ),
    );
    let changed = wait_for(Duration::from_secs(30), || {
        read_sink(&a).filter(|x| x.version != first.version)
    })
    .unwrap_or_else(|| panic!("cert/a was not re-issued:\n{}", log()));
    assert_eq!(sans(&changed.cert), ["DNSName(a2.test)"]);

    // Removed: no longer tracked.
    publish(&cm, 4, &format!("{head}{}", cert("cert/a", "a2.test", &a)));
    let listed = |name: &str| {
        let (_, out, _) = outcome(&run(rekey()
            .args(["status", "--json", "--database-url"])
            .arg(&s.db.url)));
        out.contains(&format!("\"{name}\""))
    };
    wait_for(Duration::from_secs(30), || {
        (!listed("cert/b")).then_some(())
    })
    .unwrap_or_else(|| panic!("cert/b was not removed:\n{}", log()));
    assert!(listed("cert/a"));

    // Broken: refused with the start-up text, counted, the running one stays.
    let before = read_sink(&a).unwrap().version;
    publish(
        &cm,
        5,
        &format!("{head}[[certificate]]\nname = \"cert/a\"\nlifetime = \"soon\"\n"),
    );
    let (_, _, startup_err) = outcome(&run(rekey().args(["serve", "--config"]).arg(&config)));
    let startup_err = startup_err
        .trim_start_matches("error: ")
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(startup_err.contains("lifetime"), "{startup_err}");
    wait_for(Duration::from_secs(30), || {
        log().contains("configuration refused").then_some(())
    })
    .unwrap_or_else(|| panic!("the broken file was not refused:\n{}", log()));
    assert!(
        log().contains(&startup_err),
        "the same text as at start-up ({startup_err}):\n{}",
        log()
    );
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "rekey_config_reload_failures_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rekey_config_last_reload_success_timestamp_seconds"),
        "{metrics}"
    );
    assert_eq!(read_sink(&a).unwrap().version, before, "nothing changed");
    assert!(server.child.id() > 0 && listed("cert/a"));

    // A restart-only section changed: applied credentials, the rest named.
    publish(
        &cm,
        6,
        &format!(
            "{}{}",
            head.replace(
                "max_jitter = \"0s\"",
                "max_jitter = \"0s\"\nconcurrency = 7"
            ),
            cert("cert/a", "a2.test", &a)
        ),
    );
    wait_for(Duration::from_secs(30), || {
        log()
            .contains("take effect only at a restart")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no restart notice:\n{}", log()));
    assert!(log().contains("engine"), "{}", log());

    // SIGHUP reloads at once, even an unchanged file.
    let reloads = log().matches("configuration reloaded").count();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for(Duration::from_secs(10), || {
        (log().matches("configuration reloaded").count() > reloads).then_some(())
    })
    .unwrap_or_else(|| panic!("SIGHUP did not reload:\n{}", log()));
    assert!(
        log().contains("reason=SIGHUP") || log().contains("reason=\"SIGHUP\""),
        "{}",
        log()
    );
}
