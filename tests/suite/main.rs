//! Every integration test in one binary: the real gateway (in process or as
//! the real `hookrelay` binary), real targets, TLS and journals, all on
//! loopback. One binary links once and compiles the harness (`common`) once,
//! which keeps CI's build short; run one part with its module name, e.g.
//! `cargo test --test suite reliability::`.

mod common;

mod admin;
mod backfill;
mod config_files;
mod delivery;
mod enrich;
mod ingress;
mod process;
mod reliability;
mod reload;
mod replay;
mod systemd;
