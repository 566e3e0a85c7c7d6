//! 100k values scanned without memory growing with their number: the peak
//! RSS of `rekey etcd verify` over 100k values stays near its peak over 10k.
//! (Not a timing test: only memory is compared, within one run.)

use std::{path::Path, process::Command};

use rekey_integration::{
    bin::{outcome, rekey_bin, run},
    etcd::Etcd,
    k8s_values::{encode, load},
};
use serde_json::{Value, json};

const GCM1: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

/// Peak RSS in KiB of `rekey etcd verify` (GNU time's `%M`), and its report.
fn peak_rss(etcd: &Etcd, config: &Path, prefix: &str, dir: &Path) -> (u64, Value) {
    let time = Path::new("/usr/bin/time");
    assert!(
        time.is_file(),
        "/usr/bin/time is missing: `apt-get install -y time` (integration/test.sh does)"
    );
    let rss_file = dir.join("rss");
    let mut cmd = Command::new(time);
    cmd.arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss_file)
        .arg(rekey_bin())
        .args(["etcd", "verify", "--json", "--encryption-config"])
        .arg(config)
        .args(["--endpoints", &etcd.endpoint, "--etcd-prefix", prefix])
        .env("REKEY_LOG", "warn");
    let (code, out, err) = outcome(&run(&mut cmd));
    assert_eq!(code, 0, "{err}\n{}", &out[..out.len().min(3000)]);
    let rss: u64 = std::fs::read_to_string(&rss_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (rss, serde_json::from_str(&out).unwrap())
}

async fn load_namespace(etcd: &Etcd, ns: &str, n: usize) {
    let reqs: Vec<Value> = (0..n)
        .map(|i| {
            json!({"etcd_key": format!("/registry/secrets/{ns}/s{i:06}"), "format": "aesgcm",
                   "key_name": "k1", "secret": GCM1, "name": format!("s{i:06}"),
                   "namespace": ns, "filler": 200})
        })
        .collect();
    let values = encode(&reqs);
    let kvs = reqs
        .iter()
        .zip(values)
        .map(|(r, v)| (r["etcd_key"].as_str().unwrap().to_string(), v))
        .collect();
    let client = rekey::etcd::client::connect(&etcd.config()).await.unwrap();
    load(&client, kvs).await;
}

#[tokio::test]
async fn peak_memory_does_not_grow_with_the_number_of_values() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("enc.yaml");
    std::fs::write(
        &config,
        format!("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - aesgcm:\n          keys:\n            - {{name: k1, secret: {GCM1}}}\n"),
    )
    .unwrap();
    load_namespace(&etcd, "small", 10_000).await;
    load_namespace(&etcd, "big", 90_000).await;

    let (rss_10k, r10) = peak_rss(&etcd, &config, "/registry/secrets/small/", dir.path());
    let (rss_100k, r100) = peak_rss(&etcd, &config, "/registry/secrets/", dir.path());
    assert_eq!(r10["scan"]["total"], 10_000);
    assert_eq!(r10["scan"]["verified"], 10_000);
    assert_eq!(r100["scan"]["total"], 100_000);
    assert_eq!(r100["scan"]["verified"], 100_000);
    eprintln!("peak RSS: 10k values {rss_10k} KiB, 100k values {rss_100k} KiB");
    // Ten times the values: at most a quarter more memory (plus 4 MiB of
    // allocator slack), where anything holding the values would need ~10x.
    assert!(
        rss_100k <= rss_10k + rss_10k / 4 + 4096,
        "peak RSS grew with the number of values: {rss_10k} KiB for 10k, {rss_100k} KiB for 100k"
    );
}
