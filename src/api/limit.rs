//! The proactive request pace (`api.rate_limit`): a token bucket shared by every request.
//! Receives "I want to send" from the client; answers once a token is free. Owns the bucket:
//! a small burst, then one request per `per / requests`, so a backlog of thousands of files
//! drains at a steady pace instead of in bursts that earn 429s.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::RateLimit;

/// At most this many requests go out back to back after a quiet spell.
const MAX_BURST: f64 = 10.0;

pub struct Pace {
    interval: Duration,
    burst: f64,
    /// Tokens available at `at`; negative when requests have reserved future tokens.
    state: Mutex<(f64, Instant)>,
}

impl Pace {
    pub fn new(limit: RateLimit) -> Pace {
        let interval = limit.per / limit.requests;
        let burst = f64::from(limit.requests).clamp(1.0, MAX_BURST);
        Pace {
            interval,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Waits for this request's turn; `false` when shutting down first.
    pub async fn acquire(&self, cancel: &CancellationToken) -> bool {
        let ready_at = {
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let now = Instant::now();
            let (tokens, at) = *state;
            let refilled = (tokens
                + now.duration_since(at).as_secs_f64() / self.interval.as_secs_f64())
            .min(self.burst);
            // Taking the token now (even into debt) reserves a place in line: waiters are
            // served in the order they came, each at its own time.
            *state = (refilled - 1.0, now);
            if refilled >= 1.0 {
                return true;
            }
            now + self.interval.mul_f64(1.0 - refilled)
        };
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep_until(ready_at) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_one_request_per_interval() {
        let pace = Pace::new(RateLimit {
            requests: 600,
            per: Duration::from_secs(60),
        });
        let cancel = CancellationToken::new();
        let started = Instant::now();
        for _ in 0..10 {
            assert!(pace.acquire(&cancel).await);
        }
        assert!(
            started.elapsed() < Duration::from_millis(1),
            "the burst waits"
        );
        for _ in 0..20 {
            assert!(pace.acquire(&cancel).await);
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(1990) && elapsed <= Duration::from_millis(2010),
            "20 more requests at 10/s took {elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_releases_a_waiting_request() {
        let pace = Pace::new(RateLimit {
            requests: 1,
            per: Duration::from_secs(3600),
        });
        let cancel = CancellationToken::new();
        assert!(pace.acquire(&cancel).await);
        cancel.cancel();
        assert!(!pace.acquire(&cancel).await);
    }
}
