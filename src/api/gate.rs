//! The one door every request passes through: a circuit breaker shared by all workers.
//! Receives the outcome of each request; when the API is down (a run of failures, or a high
//! failure rate), rate-limiting us, refusing the token, or showing a certificate we do not
//! trust, it closes, lets a single probe through after a backoff, and reopens on success. So an
//! outage costs one request per backoff step, not one per file, while a failure now and then is
//! retried by its own request. A cause outside the API (the state directory cannot be written)
//! can hold it closed too, probes included, until whoever found that cause releases it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::retry::{self, Backoff};

/// This many failures in a row, with no answer between them, are an outage.
pub const FAILURE_RUN: u32 = 3;
/// So is this share of failures among the last `WINDOW` requests (once `WINDOW / 2` are in).
pub const WINDOW: usize = 20;
pub const FAILURE_RATE: f64 = 0.5;

/// A closed gate as it can be saved, shown, and resumed after a restart, so that a restart
/// during an outage does not start again from a one-second delay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// Unix milliseconds when the next probe may go.
    pub until_ms: u64,
    /// The delay that set it: the next one follows on from it.
    pub delay_ms: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Normal,
    /// The first request after a pause: its outcome decides whether the others may go.
    Probe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The API answered in a way that shows it works (any answer but those below).
    Answered,
    Unauthorized,
    /// The server's certificate is not trusted: like a refused token, it waits for an operator.
    Untrusted,
    Outage,
    RateLimited(Option<Duration>),
    /// The request failed for a local reason (the file being sent changed): says nothing of the API.
    Inconclusive,
}

/// What a reported outcome did to the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Closed(Duration),
    Reopened,
}

struct State {
    closed_until: Option<Instant>,
    probing: bool,
    backoff: Backoff,
    /// Why a cause outside the API holds every request back, while it does.
    held: Option<String>,
    /// Requests admitted and not yet done.
    in_flight: usize,
    /// After a failure, new requests wait until those already sent have answered (they say
    /// whether it was a passing failure or the start of an outage), at most until this time.
    holding_until: Option<Instant>,
    /// Failures since the last answer.
    run: u32,
    /// The last `WINDOW` outcomes, `true` for a failure.
    recent: VecDeque<bool>,
}

impl State {
    fn record(&mut self, failed: bool) {
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(failed);
        self.run = if failed { self.run + 1 } else { 0 };
    }

    fn looks_down(&self) -> bool {
        let failures = self.recent.iter().filter(|failed| **failed).count();
        self.run >= FAILURE_RUN
            || (self.recent.len() >= WINDOW / 2
                && failures as f64 >= FAILURE_RATE * self.recent.len() as f64)
    }

    /// Whether new requests wait for those in flight to answer.
    fn holding(&self, now: Instant) -> bool {
        self.in_flight > 0 && self.holding_until.is_some_and(|until| now < until)
    }
}

/// A request let through the gate; dropping it tells the gate the request is done.
pub struct Ticket<'a> {
    gate: &'a Gate,
    pub pass: Pass,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        let ended_hold = state.in_flight == 0 && state.holding_until.take().is_some();
        // A probe dropped without a report (its task cancelled) must not leave every later
        // request waiting for a probe that never answers: the next one may try.
        let dropped_probe = self.pass == Pass::Probe && std::mem::take(&mut state.probing);
        if ended_hold || dropped_probe {
            self.gate.changed.notify_waiters();
        }
    }
}

pub struct Gate {
    state: Mutex<State>,
    changed: Notify,
}

impl Gate {
    pub fn new(backoff: Backoff) -> Gate {
        Gate {
            state: Mutex::new(State {
                closed_until: None,
                probing: false,
                backoff,
                held: None,
                in_flight: 0,
                holding_until: None,
                run: 0,
                recent: VecDeque::with_capacity(WINDOW),
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-update of plain data.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Waits until this request may be sent; `None` when shutting down.
    pub async fn enter(&self, cancel: &CancellationToken) -> Option<Ticket<'_>> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait_until = {
                let mut state = self.lock();
                let now = Instant::now();
                let pass = match state.closed_until {
                    _ if state.held.is_some() => None,
                    None if state.holding(now) => None,
                    None => Some(Pass::Normal),
                    Some(until) if !state.probing && now >= until => {
                        state.probing = true;
                        Some(Pass::Probe)
                    }
                    Some(_) => None,
                };
                if let Some(pass) = pass {
                    state.in_flight += 1;
                    return Some(Ticket { gate: self, pass });
                }
                match state.closed_until {
                    // Until whoever holds it releases it, which wakes every waiter.
                    _ if state.held.is_some() => None,
                    None => state.holding_until,
                    Some(until) => (!state.probing).then_some(until),
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = notified => {}
                _ = async {
                    match wait_until {
                        Some(until) => tokio::time::sleep_until(until).await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
        }
    }

    /// Records how a request went, and says whether that closed or reopened the gate.
    pub fn report(&self, pass: Pass, outcome: Outcome) -> Option<Transition> {
        let mut state = self.lock();
        let pause = match outcome {
            Outcome::Answered => {
                state.record(false);
                if state.holding_until.take().is_some() {
                    self.changed.notify_waiters();
                }
                state.closed_until?;
                state.closed_until = None;
                state.probing = false;
                state.backoff.reset();
                self.changed.notify_waiters();
                return Some(Transition::Reopened);
            }
            Outcome::Inconclusive => {
                if pass == Pass::Probe {
                    state.probing = false;
                    self.changed.notify_waiters();
                }
                return None;
            }
            Outcome::RateLimited(Some(delay)) => delay,
            Outcome::Outage => {
                state.record(true);
                match pass {
                    // Admitted before the gate closed: must not push the pause further out.
                    Pass::Normal if state.closed_until.is_some() => return None,
                    _ if state.looks_down() => {
                        state.holding_until = None;
                        state.backoff.next_delay()
                    }
                    // A passing failure: its request backs off on its own; new ones wait only
                    // for those already out to show whether more are failing.
                    Pass::Normal => {
                        state.holding_until = Some(Instant::now() + retry::INITIAL);
                        return None;
                    }
                    // A probe after a pause for another reason (a 429) that meets a passing
                    // failure: the others may go, the probe backs off on its own.
                    Pass::Probe => {
                        state.closed_until = None;
                        state.probing = false;
                        self.changed.notify_waiters();
                        return Some(Transition::Reopened);
                    }
                }
            }
            Outcome::Unauthorized | Outcome::Untrusted | Outcome::RateLimited(None) => {
                // A request admitted before the gate closed must not push the pause further out.
                if pass == Pass::Normal && state.closed_until.is_some() {
                    return None;
                }
                state.backoff.next_delay()
            }
        };
        let until = Instant::now() + pause;
        state.closed_until = Some(
            state
                .closed_until
                .map_or(until, |current| current.max(until)),
        );
        if pass == Pass::Probe {
            state.probing = false;
        }
        self.changed.notify_waiters();
        Some(Transition::Closed(pause))
    }

    /// Closes the gate as a saved pause left it: until its time (a probe at once when that has
    /// passed), with the backoff continuing from its delay.
    pub fn resume(&self, pause: &Pause) {
        let mut state = self.lock();
        let left = pause.until_ms.saturating_sub(unix_ms());
        state.closed_until = Some(Instant::now() + Duration::from_millis(left));
        // The failures that led to the pause are gone with the old process: a failed probe
        // carries the pause on as if they were still counted.
        state.run = state.run.max(FAILURE_RUN);
        state
            .backoff
            .resume_after(Duration::from_millis(pause.delay_ms));
        self.changed.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        let state = self.lock();
        state.closed_until.is_some() || state.held.is_some()
    }

    /// Holds every request, probes included, for a cause the API cannot end (the state
    /// directory cannot be written); true when it was not held already.
    pub fn hold(&self, reason: &str) -> bool {
        self.lock().held.replace(reason.to_string()).is_none()
    }

    /// Ends a `hold`; an API pause still in force carries on. True when it was held.
    pub fn release(&self) -> bool {
        let released = self.lock().held.take().is_some();
        self.changed.notify_waiters();
        released
    }

    pub fn held(&self) -> Option<String> {
        self.lock().held.clone()
    }
}

pub use crate::metrics::unix_ms;

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Gate {
        Gate::new(Backoff::new(
            Duration::from_millis(40),
            Duration::from_millis(40),
        ))
    }

    #[tokio::test]
    async fn an_outage_lets_one_probe_through_and_holds_the_rest() {
        let gate = gate();
        let cancel = CancellationToken::new();
        for _ in 0..FAILURE_RUN {
            assert_eq!(pass(&gate, &cancel).await, Some(Pass::Normal));
            gate.report(Pass::Normal, Outcome::Outage);
        }
        assert!(gate.is_closed(), "a run of failures closes the gate");
        let probe = gate.enter(&cancel).await;
        assert_eq!(probe.as_ref().map(|ticket| ticket.pass), Some(Pass::Probe));
        // While the probe is out, others wait.
        let waiting = tokio::time::timeout(Duration::from_millis(100), gate.enter(&cancel)).await;
        assert!(
            waiting.is_err(),
            "a second request went through during the probe"
        );
        assert_eq!(
            gate.report(Pass::Probe, Outcome::Answered),
            Some(Transition::Reopened)
        );
        drop(probe);
        assert_eq!(pass(&gate, &cancel).await, Some(Pass::Normal));
        assert!(!gate.is_closed());
    }

    async fn pass(gate: &Gate, cancel: &CancellationToken) -> Option<Pass> {
        gate.enter(cancel).await.map(|ticket| ticket.pass)
    }

    #[tokio::test]
    async fn a_failure_between_answers_leaves_the_gate_open() {
        let gate = gate();
        let cancel = CancellationToken::new();
        for _ in 0..WINDOW * 2 {
            for outcome in [Outcome::Outage, Outcome::Answered, Outcome::Answered] {
                assert_eq!(pass(&gate, &cancel).await, Some(Pass::Normal));
                assert_eq!(gate.report(Pass::Normal, outcome), None);
            }
        }
        assert!(!gate.is_closed());
    }

    #[tokio::test]
    async fn half_the_requests_failing_closes_the_gate() {
        let gate = gate();
        let cancel = CancellationToken::new();
        let mut closed = false;
        for _ in 0..WINDOW {
            for outcome in [Outcome::Outage, Outcome::Outage, Outcome::Answered] {
                if gate.is_closed() {
                    closed = true;
                    break;
                }
                assert_eq!(pass(&gate, &cancel).await, Some(Pass::Normal));
                gate.report(Pass::Normal, outcome);
            }
        }
        assert!(closed || gate.is_closed());
    }

    #[tokio::test]
    async fn a_passing_failure_of_the_probe_after_a_429_reopens_the_gate() {
        let gate = gate();
        let cancel = CancellationToken::new();
        gate.report(Pass::Normal, Outcome::RateLimited(None));
        assert_eq!(pass(&gate, &cancel).await, Some(Pass::Probe));
        assert_eq!(
            gate.report(Pass::Probe, Outcome::Outage),
            Some(Transition::Reopened)
        );
        assert!(!gate.is_closed());
    }

    #[tokio::test]
    async fn after_a_failure_new_requests_wait_for_those_in_flight() {
        let gate = gate();
        let cancel = CancellationToken::new();
        let in_flight = gate.enter(&cancel).await.unwrap();
        let failed = gate.enter(&cancel).await.unwrap();
        assert_eq!(gate.report(Pass::Normal, Outcome::Outage), None);
        drop(failed);
        let waiting = tokio::time::timeout(Duration::from_millis(100), gate.enter(&cancel)).await;
        assert!(
            waiting.is_err(),
            "a new request went out before the one in flight answered"
        );
        gate.report(Pass::Normal, Outcome::Answered);
        drop(in_flight);
        assert_eq!(pass(&gate, &cancel).await, Some(Pass::Normal));
    }

    #[tokio::test]
    async fn a_failed_probe_closes_the_gate_again() {
        let gate = gate();
        let cancel = CancellationToken::new();
        gate.report(Pass::Normal, Outcome::Unauthorized);
        assert_eq!(pass(&gate, &cancel).await, Some(Pass::Probe));
        assert!(gate.report(Pass::Probe, Outcome::Unauthorized).is_some());
        let started = Instant::now();
        assert_eq!(pass(&gate, &cancel).await, Some(Pass::Probe));
        assert!(started.elapsed() >= Duration::from_millis(25));
    }

    #[tokio::test]
    async fn an_untrusted_certificate_closes_the_gate_like_a_refused_token() {
        let gate = gate();
        let cancel = CancellationToken::new();
        assert!(matches!(
            gate.report(Pass::Normal, Outcome::Untrusted),
            Some(Transition::Closed(_))
        ));
        assert_eq!(
            gate.enter(&cancel).await.map(|ticket| ticket.pass),
            Some(Pass::Probe)
        );
        assert!(gate.report(Pass::Probe, Outcome::Untrusted).is_some());
        assert!(gate.is_closed());
    }

    #[tokio::test]
    async fn a_resumed_pause_holds_requests_until_its_time_then_probes() {
        let gate = Gate::new(Backoff::default());
        let cancel = CancellationToken::new();
        gate.resume(&Pause {
            until_ms: unix_ms() + 300,
            delay_ms: 60_000,
            reason: "outage".into(),
        });
        let started = Instant::now();
        assert_eq!(pass(&gate, &cancel).await, Some(Pass::Probe));
        assert!(started.elapsed() >= Duration::from_millis(250));
        let Some(Transition::Closed(next)) = gate.report(Pass::Probe, Outcome::Outage) else {
            panic!("a failed probe closes the gate");
        };
        assert!(
            next >= Duration::from_secs(90),
            "the schedule continued from 60 s, not from 1 s: {next:?}"
        );
    }

    #[tokio::test]
    async fn a_hold_stops_requests_and_probes_until_released() {
        let gate = std::sync::Arc::new(gate());
        let cancel = CancellationToken::new();
        for _ in 0..FAILURE_RUN {
            gate.report(Pass::Normal, Outcome::Outage);
        }
        assert!(gate.hold("state directory full"));
        assert!(!gate.hold("state directory full"), "held once");
        assert!(gate.is_closed());
        let waiting = tokio::time::timeout(Duration::from_millis(150), gate.enter(&cancel)).await;
        assert!(waiting.is_err(), "a request or probe went through a hold");
        assert_eq!(gate.held().as_deref(), Some("state directory full"));
        let entering = {
            let (gate, cancel) = (gate.clone(), cancel.clone());
            tokio::spawn(async move { gate.enter(&cancel).await.map(|ticket| ticket.pass) })
        };
        assert!(gate.release());
        // Released, the outage's own probe goes first.
        assert_eq!(entering.await.unwrap(), Some(Pass::Probe));
        assert_eq!(gate.held(), None);
    }

    #[tokio::test]
    async fn shutdown_releases_waiters() {
        let gate = gate();
        let cancel = CancellationToken::new();
        gate.report(
            Pass::Normal,
            Outcome::RateLimited(Some(Duration::from_secs(60))),
        );
        cancel.cancel();
        assert!(gate.enter(&cancel).await.is_none());
    }
}
