//! Waiting for something observable instead of sleeping a fixed time.
//!
//! [`eventually`] polls a check with a short backoff until it succeeds or a
//! timeout passes, then fails naming what it waited for and the last value
//! it observed. A test waits on what the code offers: a database row, an
//! audit event, a file's version marker, a log line, a request the
//! Kubernetes stand-in answered. A test that asserts something did *not*
//! happen first waits for the event that would have made it happen (the
//! relist, the retry, the sweep), then asserts.
//!
//! ```ignore
//! eventually("the token to be revoked", Duration::from_secs(10), async || {
//!     check(state_of(&db, id).await, |s| s.as_deref() == Some("revoked"))
//! })
//! .await;
//! ```

use std::{
    fmt::Debug,
    time::{Duration, Instant},
};

/// The first pause between two checks; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(10);

/// The longest pause between two checks: short next to every timeout the
/// tests use, long enough not to load Postgres or the stand-in.
const MAX_PAUSE: Duration = Duration::from_millis(200);

/// Polls `condition` until it returns `Ok`, and returns that value.
///
/// `Err(observed)` means "not yet"; after `timeout` the last `observed` is
/// in the panic message with `what` (phrase it as what is awaited: "the
/// Secret to be deleted"). The condition runs at least once, and once more
/// at the deadline.
pub async fn eventually<T, O: Debug>(
    what: &str,
    timeout: Duration,
    mut condition: impl AsyncFnMut() -> Result<T, O>,
) -> T {
    let started = Instant::now();
    let mut pause = FIRST_PAUSE;
    loop {
        let observed = match condition().await {
            Ok(t) => return t,
            Err(o) => o,
        };
        let elapsed = started.elapsed();
        if elapsed >= timeout {
            panic!("timed out after {elapsed:.1?} waiting for {what}; last observed: {observed:?}");
        }
        tokio::time::sleep(pause.min(timeout - elapsed)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// `Ok(value)` if `done(&value)`, else `Err(value)`: the usual body of an
/// [`eventually`] condition, so the value is reported if it never comes.
pub fn check<V>(value: V, done: impl FnOnce(&V) -> bool) -> Result<V, V> {
    if done(&value) { Ok(value) } else { Err(value) }
}

/// Text shown as it is, not quoted and escaped, when it is the last
/// observed value of a failed wait: a server's log, say.
pub struct Text(pub String);

impl Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_value_once_the_condition_holds() {
        let mut calls = 0;
        let got = eventually("the third call", Duration::from_secs(5), async || {
            calls += 1;
            check(calls, |&n| n >= 3)
        })
        .await;
        assert_eq!((got, calls), (3, 3));
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for the answer; last observed: Some(41)")]
    async fn fails_naming_what_it_waited_for_and_the_last_value() {
        eventually("the answer", Duration::from_millis(50), async || {
            check(Some(41), |v| *v == Some(42))
        })
        .await;
    }

    #[tokio::test]
    async fn checks_once_more_at_the_deadline() {
        use futures::FutureExt;
        let started = Instant::now();
        let mut calls = 0;
        let waited = std::panic::AssertUnwindSafe(eventually(
            "never",
            Duration::from_millis(100),
            async || {
                calls += 1;
                Err::<(), _>(calls)
            },
        ))
        .catch_unwind()
        .await;
        let panic = waited.unwrap_err();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(message.contains("waiting for never"), "{message}");
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            message.ends_with(&format!("last observed: {calls}")),
            "{message}"
        );
    }
}
