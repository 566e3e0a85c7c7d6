//! Named crash points for the crash-safety tests.
//!
//! Each step of the rotation state machine, of bootstrap-token revocation
//! and of a backup upload calls [`point`] with its name. In debug builds, a
//! process started with `REKEY_CRASH_AT=<name>` (or `<name>@<n>` for the n-th
//! time the point is reached) aborts there — a crash, not a clean error — so
//! a test can restart it and check that the system converges. Release builds
//! compile every point to nothing: the `fail` registry is never consulted.

/// Every crash point, in the order a rotation, a revocation or a backup reaches them.
pub const POINTS: &[(&str, &str)] = &[
    (
        "engine-after-claim",
        "rotation: credentials claimed (leased), nothing else done",
    ),
    (
        "engine-after-issue",
        "rotation: new key and certificate generated in memory",
    ),
    (
        "engine-after-open",
        "rotation: attempt and pending version recorded, before publishing",
    ),
    (
        "sink-mid-publish",
        "rotation: file sink's new data directory written, ..data not yet swapped",
    ),
    (
        "engine-after-publish",
        "rotation: published to the sink, before the database commit",
    ),
    (
        "engine-after-commit",
        "rotation: committed, before consumers are told",
    ),
    (
        "retire-after-revoke",
        "retire: bound token's Secret deleted, version not yet marked revoked",
    ),
    (
        "bootstrap-after-join",
        "revocation: join recorded, token not yet claimed",
    ),
    (
        "bootstrap-after-claim",
        "revocation: token claimed (revoking), Secret not yet deleted",
    ),
    (
        "bootstrap-after-delete",
        "revocation: Secret deleted, row not yet marked revoked",
    ),
    (
        "backup-mid-stream",
        "backup: part of the encrypted stream uploaded",
    ),
    (
        "backup-before-record",
        "backup: object complete, not yet recorded as completed",
    ),
    (
        "ca-after-trust",
        "CA rotation: every sink holds the old+new bundle, re-issuing not yet started",
    ),
    (
        "ca-mid-reissue",
        "CA rotation: the new CA signs, some leaves marked for re-issue",
    ),
    (
        "ca-after-narrow",
        "CA rotation: bundles narrowed to the new CA, not yet published",
    ),
    (
        "ca-mid-promote",
        "CA rotation: the new CA's key in place of the old, its certificate not yet",
    ),
    (
        "etcd-migrate-mid-batch",
        "etcd migrate: half of a page's objects rewritten, its progress not yet saved",
    ),
];

/// Marks a crash point.
#[inline(always)]
pub fn point(name: &'static str) {
    #[cfg(debug_assertions)]
    fail::fail_point!(name);
    #[cfg(not(debug_assertions))]
    let _ = name;
}

/// Arms the crash point named by `REKEY_CRASH_AT` (debug builds only).
///
/// `announce` is called with the point's name just before the process
/// aborts (the binary prints it: tests read it on stderr). An unknown point
/// or a bad specification is an error naming it.
pub fn arm_from_env(announce: fn(&str)) -> Result<(), String> {
    #[cfg(debug_assertions)]
    if let Ok(spec) = std::env::var("REKEY_CRASH_AT") {
        let (name, nth) = match spec.split_once('@') {
            Some((n, k)) => (n.to_string(), k.parse::<usize>().unwrap_or(1)),
            None => (spec.clone(), 1),
        };
        if !POINTS.iter().any(|(p, _)| *p == name) {
            return Err(format!("REKEY_CRASH_AT: unknown crash point `{name}`"));
        }
        let hits = std::sync::atomic::AtomicUsize::new(0);
        let label = name.clone();
        fail::cfg_callback(name, move || {
            if hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == nth {
                announce(&label);
                std::process::abort();
            }
        })
        .map_err(|e| format!("REKEY_CRASH_AT: {e}"))?;
    }
    #[cfg(not(debug_assertions))]
    let _ = announce;
    Ok(())
}
