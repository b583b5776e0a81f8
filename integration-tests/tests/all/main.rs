//! Kiln's integration tests: one binary, one module per topic, over the
//! real plugins built by `build.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod cache;
mod cli;
mod denials;
mod embedded;
mod examples;
mod loading;
mod manifests;
mod records;
mod scaffold;
mod tidy;
