//! `deploy/Containerfile` is multi-stage, distroless, non-root and binary
//! only; the release binary links nothing distroless `cc` lacks.

use std::process::Command;

use rekey_integration::deploy::{self, OVERLAYS, id, object, pod_spec, root, run_ok, tool};

use super::{RELEASE_BUILD, objects, strs};

/// Instructions of a Containerfile, continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (op, rest) = cur.trim().split_once(' ').unwrap_or((cur.trim(), ""));
        out.push((op.to_uppercase(), rest.trim().to_string()));
        cur.clear();
    }
    out
}

#[test]
fn the_containerfile_is_multi_stage_distroless_nonroot_and_binary_only() {
    let path = deploy::deploy_dir().join("Containerfile");
    let text = std::fs::read_to_string(&path).expect("deploy/Containerfile");
    let ins = instructions(&text);
    let stages: Vec<usize> = ins
        .iter()
        .enumerate()
        .filter(|(_, (op, _))| op == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let build_from = &ins[stages[0]].1;
    let (build_image, build_name) = build_from
        .split_once(" AS ")
        .or_else(|| build_from.split_once(" as "))
        .expect("the build stage is named");
    assert!(
        build_image.contains("rust:") && build_image.contains("bookworm"),
        "{build_image}"
    );
    let build_stage = &ins[stages[0]..stages[1]];
    assert!(
        build_stage
            .iter()
            .any(|(op, rest)| op == "RUN" && rest.contains(RELEASE_BUILD)),
        "the build stage runs `{RELEASE_BUILD}`"
    );
    let test_sh = std::fs::read_to_string(root().join("integration/test.sh")).expect("test.sh");
    assert!(
        test_sh.contains(RELEASE_BUILD),
        "integration/test.sh builds the image's binary the same way: {RELEASE_BUILD}"
    );
    // The runtime stage: distroless cc for Debian 12 (the build's glibc),
    // the nonroot variant, nothing run in it (there is no shell).
    let runtime = &ins[*stages.last().expect("stage")..];
    let image = &runtime[0].1;
    assert_eq!(image, "gcr.io/distroless/cc-debian12:nonroot");
    for (op, rest) in &runtime[1..] {
        assert!(
            ["COPY", "USER", "EXPOSE", "ENTRYPOINT", "CMD", "LABEL"].contains(&op.as_str()),
            "the runtime stage may not {op} {rest}"
        );
    }
    let copies: Vec<&String> = runtime
        .iter()
        .filter(|(op, _)| op == "COPY")
        .map(|(_, r)| r)
        .collect();
    assert_eq!(
        copies,
        [&format!(
            "--from={build_name} /out/rekey /usr/local/bin/rekey"
        )],
        "the binary only"
    );
    let user: Vec<&String> = runtime
        .iter()
        .filter(|(op, _)| op == "USER")
        .map(|(_, r)| r)
        .collect();
    assert_eq!(user.len(), 1);
    let (uid, gid) = user[0].split_once(':').expect("USER uid:gid");
    // Numeric, so runAsNonRoot can verify it, and the manifests' UID.
    for target in OVERLAYS {
        for w in objects(target).iter().filter(|o| pod_spec(o).is_some()) {
            let sc = &pod_spec(w).expect("pod")["securityContext"];
            assert_eq!(sc["runAsUser"].to_string(), uid, "{target}: {}", id(w));
            assert_eq!(sc["runAsGroup"].to_string(), gid, "{target}: {}", id(w));
        }
    }
    // Exec form (there is no shell for a shell form): the binary, and the
    // same arguments as the Deployment's.
    let argv = |op: &str| -> Vec<String> {
        let (_, rest) = runtime.iter().find(|(o, _)| o == op).expect(op);
        serde_json::from_str(rest).unwrap_or_else(|_| panic!("{op} is not in exec form: {rest}"))
    };
    assert_eq!(argv("ENTRYPOINT"), ["/usr/local/bin/rekey"]);
    let deployment = object(objects("overlays/production"), "Deployment", "rekey");
    assert_eq!(
        argv("CMD"),
        strs(&pod_spec(deployment).expect("pod")["containers"][0]["args"])
    );
    // The build context leaves the build output and local state out.
    let dockerignore =
        std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    for entry in ["target/", ".git/"] {
        assert!(
            dockerignore.lines().any(|l| l.trim() == entry),
            ".dockerignore: {entry}"
        );
    }
}

/// Shared libraries in gcr.io/distroless/cc-debian12 (Debian 12's libc6,
/// libgcc-s1, libgomp1, libstdc++6).
const DISTROLESS_CC_LIBS: &[&str] = &[
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "ld-linux-x86-64.so.2",
    "libgcc_s.so.1",
    "libstdc++.so.6",
    "libgomp.so.1",
];

/// Debian 12's glibc: the newest symbol version the image can satisfy.
const DISTROLESS_GLIBC: (u32, u32) = (2, 36);

#[test]
fn the_release_binary_links_only_what_distroless_cc_has() {
    let bin = root().join("target/release/rekey");
    assert!(
        bin.is_file(),
        "{} is missing: build the image's binary with `{RELEASE_BUILD}` (integration/test.sh does)",
        bin.display()
    );
    let readelf = tool("readelf", "apt-get install -y binutils");
    let dynamic = run_ok(Command::new(&readelf).args(["-d", "--wide"]).arg(&bin));
    let needed: Vec<&str> = dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split_once('[')?.1.split_once(']').map(|(n, _)| n))
        .collect();
    assert!(needed.contains(&"libc.so.6"), "a glibc binary: {needed:?}");
    for lib in &needed {
        assert!(
            DISTROLESS_CC_LIBS.contains(lib),
            "the release binary needs {lib}, which gcr.io/distroless/cc-debian12 lacks: {needed:?}"
        );
    }
    let headers = run_ok(Command::new(&readelf).args(["-l", "--wide"]).arg(&bin));
    assert!(
        headers.contains("[Requesting program interpreter: /lib64/ld-linux-x86-64.so.2]"),
        "{headers}"
    );
    let versions = run_ok(Command::new(&readelf).args(["-V", "--wide"]).arg(&bin));
    let newest = versions
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("GLIBC_2."))
        .filter_map(|m| m.split('.').next()?.parse::<u32>().ok())
        .max()
        .expect("GLIBC symbol versions");
    assert!(
        (2, newest) <= DISTROLESS_GLIBC,
        "the binary needs GLIBC_2.{newest}; Debian 12 has 2.{}",
        DISTROLESS_GLIBC.1
    );
}
