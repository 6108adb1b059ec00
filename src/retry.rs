//! Retry pacing, and the only module that knows the `backoff` crate.
//! Receives "that failed" from callers and answers how long to wait before the next attempt:
//! exponential, jittered, starting near one second and capped at five minutes.

use std::time::Duration;

use backoff::backoff::Backoff as _;

pub const INITIAL: Duration = Duration::from_secs(1);
pub const MAX: Duration = Duration::from_secs(300);
/// Answers that are not the API's are retried this long, then the request fails: unlike an
/// outage, a server that keeps answering with something else may never stop.
pub const STRANGE_ANSWERS_FOR: Duration = Duration::from_secs(15 * 60);

/// One retry schedule: each `next_delay` is about twice the last, with ±25 % jitter so that
/// many files failing together do not retry in lockstep.
pub struct Backoff(backoff::ExponentialBackoff);

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff(
            backoff::ExponentialBackoffBuilder::new()
                .with_initial_interval(initial)
                .with_max_interval(max)
                .with_multiplier(2.0)
                .with_randomization_factor(0.25)
                // Transient failures end (outages do); never give up on them by the clock.
                .with_max_elapsed_time(None)
                .build(),
        )
    }

    /// A schedule that gives up once `elapsed` has passed since it was made.
    pub fn giving_up_after(initial: Duration, max: Duration, elapsed: Duration) -> Backoff {
        let mut backoff = Backoff::new(initial, max);
        backoff.0.max_elapsed_time = Some(elapsed);
        backoff
    }

    pub fn next_delay(&mut self) -> Duration {
        self.0.next_backoff().unwrap_or(self.0.max_interval)
    }

    /// The next delay, or `None` once a schedule made by `giving_up_after` has run out.
    pub fn next_delay_or_give_up(&mut self) -> Option<Duration> {
        self.0.next_backoff()
    }

    /// Continues a schedule whose last delay was `last` (saved before a restart): the next
    /// delay is the one that would have followed it.
    pub fn resume_after(&mut self, last: Duration) {
        self.0.current_interval = last
            .mul_f64(self.0.multiplier)
            .clamp(self.0.initial_interval, self.0.max_interval);
    }

    pub fn reset(&mut self) {
        self.0.reset();
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(INITIAL, MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_under_the_cap() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        assert!(
            delays[0] >= Duration::from_millis(750) && delays[0] <= Duration::from_millis(1250)
        );
        assert!(delays[3] > delays[0]);
        assert!(
            delays.iter().all(|d| *d <= Duration::from_secs(10)),
            "{delays:?}"
        );
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(1250));
    }

    #[test]
    fn a_bounded_schedule_gives_up_once_its_time_has_passed() {
        let mut backoff = Backoff::giving_up_after(
            Duration::from_millis(1),
            Duration::from_millis(2),
            Duration::from_millis(30),
        );
        assert!(backoff.next_delay_or_give_up().is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(backoff.next_delay_or_give_up(), None);
    }

    #[test]
    fn a_resumed_schedule_continues_where_it_was() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        backoff.resume_after(Duration::from_secs(60));
        let next = backoff.next_delay();
        assert!(
            next >= Duration::from_secs(90) && next <= Duration::from_secs(150),
            "{next:?}"
        );
        backoff.resume_after(Duration::from_secs(299));
        assert!(backoff.next_delay() <= Duration::from_secs(375));
    }
}
