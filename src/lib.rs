//! tallyfy-sync: keeps local hot folders in sync with file fields in Tallyfy.
//!
//! The pipeline, one module per stage: `watch` (notify hints) → `settle` (quiet files, folder
//! scans) → `queue` (one job per path) → `sync` (upload → attach → record; delete; replace),
//! with `field` serialising every write to one remote field, `api` talking HTTP through a
//! shared circuit breaker, and `store` (sled) remembering it all across restarts.

pub mod api;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod exporter;
pub mod fake;
pub mod field;
pub mod filter;
pub mod guard;
pub mod logging;
pub mod metrics;
pub mod plan;
pub mod queue;
pub mod recheck;
pub mod retry;
pub mod service;
pub mod settle;
pub mod status;
pub mod store;
pub mod sync;
pub mod text;
pub mod watch;
