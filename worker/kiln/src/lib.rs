//! Kiln, the worker: its typed config, the pipeline that joins job records
//! to the sandbox, the plugins it serves and their hot reload, the broker
//! worker, and the embedded runner. The `kiln` binary is a thin CLI over
//! this library ([`cli`]).

pub mod cli;
pub mod config;
pub mod embedded;
pub mod metrics;
pub mod oci;
pub mod pipeline;
pub mod plugins;
pub mod reload;
pub mod scaffold;
pub mod telemetry;
pub mod worker;
