//! Consumer reload: pod-template annotation patches, rate-limited.

use std::time::{Duration, Instant};

use rekey::k8s::reload::{RESTARTED_AT, Reloader};
use rekey_integration::kube::{KubeStandIn, fixtures};

#[tokio::test]
async fn workloads_are_rolled() {
    let k = KubeStandIn::start();
    k.add_namespace("web");
    for kind in ["Deployment", "StatefulSet", "DaemonSet"] {
        k.put(fixtures::workload(kind, "web", "app")).unwrap();
    }
    let r = Reloader::new(k.client().await, 600, 10);
    r.restart(&[
        "deployment/web/app".into(),
        "statefulset/web/app".into(),
        "daemonset/web/app".into(),
    ])
    .await
    .unwrap();
    for kind in ["Deployment", "StatefulSet", "DaemonSet"] {
        let o = k.get(kind, "web", "app").unwrap();
        let at = o["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT]
            .as_str()
            .unwrap();
        chrono::DateTime::parse_from_rfc3339(at).unwrap();
        assert_eq!(
            o["metadata"]["generation"], 2,
            "{kind}: the pod template changed"
        );
        assert_eq!(
            o["spec"]["template"]["metadata"]["labels"]["app"], "app",
            "{kind}: the rest is kept"
        );
    }
    assert!(k.denied().is_empty(), "{:?}", k.denied());
    // A missing workload fails (not retryable) but the others are still restarted.
    let e = r
        .restart(&["deployment/web/missing".into(), "deployment/web/app".into()])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(404), "{e}");
    assert_eq!(
        k.get("Deployment", "web", "app").unwrap()["metadata"]["generation"],
        3
    );
}

#[tokio::test]
async fn restarts_are_rate_limited_across_clones() {
    let k = KubeStandIn::start();
    k.add_namespace("web");
    for i in 0..4 {
        k.put(fixtures::workload("Deployment", "web", &format!("d{i}")))
            .unwrap();
    }
    // 120 a minute (one every 0.5 s) with a burst of 2, shared by two clones.
    let r = Reloader::new(k.client().await, 120, 2);
    let r2 = r.clone();
    let first: Vec<String> = vec!["deployment/web/d0".into(), "deployment/web/d1".into()];
    let second: Vec<String> = vec!["deployment/web/d2".into(), "deployment/web/d3".into()];
    let start = Instant::now();
    let (a, b) = tokio::join!(r.restart(&first), r2.restart(&second));
    a.unwrap();
    b.unwrap();
    // Two at once, then the other two 0.5 s apart: at least 1 s in all.
    assert!(
        start.elapsed() >= Duration::from_millis(950),
        "{:?}",
        start.elapsed()
    );
    let patches = k
        .requests()
        .into_iter()
        .filter(|r| r.verb == "patch")
        .count();
    assert_eq!(patches, 4);
}
