pub mod config;
pub mod envelope;
pub mod journal;
pub mod signature;
