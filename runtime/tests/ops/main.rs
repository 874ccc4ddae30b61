//! The on-call tools end to end: the ops API, crash snapshots of a crashing run, the `/ops`
//! page (in headless Chromium when it is installed), and `steward runs …` against a served
//! Steward.

mod api;
mod cli;
mod crashes;
mod page;
mod support;
