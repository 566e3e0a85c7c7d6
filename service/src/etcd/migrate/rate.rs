//! `--max-rate`: at most N operations a second, shared by every task of a
//! migration (a start time is handed out per operation, evenly spaced).

use std::time::Duration;

use tokio::{sync::Mutex, time::Instant};

/// Spaces operations `1/N` seconds apart; no limit without a rate.
#[derive(Debug)]
pub struct RateLimit {
    period: Option<Duration>,
    next: Mutex<Option<Instant>>,
}

impl RateLimit {
    /// At most `per_second` operations a second (None: no limit).
    pub fn new(per_second: Option<f64>) -> Self {
        Self {
            period: per_second
                .filter(|r| r.is_finite() && *r > 0.0)
                .map(|r| Duration::from_secs_f64(1.0 / r)),
            next: Mutex::new(None),
        }
    }

    /// Waits for this operation's turn.
    pub async fn acquire(&self) {
        let Some(period) = self.period else {
            return;
        };
        let at = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let at = next.map_or(now, |n| n.max(now));
            *next = Some(at + period);
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn operations_are_spaced_evenly() {
        let limit = RateLimit::new(Some(10.0));
        let start = Instant::now();
        for _ in 0..21 {
            limit.acquire().await;
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1990) && took < Duration::from_millis(2100),
            "{took:?}"
        );
        let free = RateLimit::new(None);
        let start = Instant::now();
        for _ in 0..1000 {
            free.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
