//! tallyfy-sync: keeps local hot folders in sync with file fields in Tallyfy.
//!
//! The pipeline, one module per stage: `watch` (notify hints) → `settle` (quiet files, folder
//! scans) → `queue` (one job per path) → `sync` (upload → attach → record; delete; replace;
//! in launch folders `launch`: upload → start a process → record), with `route` sending each
//! file of a route folder to its process's task, `field` serialising every write to one
//! remote field, `api` talking HTTP through a
//! shared circuit breaker, and `store` (sled) remembering it all across restarts.

pub mod api;
pub mod caution;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod diagnose;
pub mod exporter;
pub mod fake;
pub mod field;
pub mod filter;
pub mod guard;
pub mod init;
pub mod launch;
pub mod logging;
pub mod manual;
pub mod memory;
pub mod metrics;
pub mod oneshot;
pub mod open;
pub mod plan;
pub mod progress;
pub mod queue;
pub mod recheck;
pub mod restore;
pub mod retry;
pub mod route;
pub mod service;
pub mod settle;
pub mod status;
pub mod store;
pub mod sync;
pub mod targets;
pub mod text;
pub mod unit;
pub mod verify;
pub mod watch;
