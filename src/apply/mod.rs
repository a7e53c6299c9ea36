//! AFTER THE LOG: turns committed commands into state changes, deterministically (no clocks, no
//! randomness, no raft), so every member that applies the same log holds the same data.

pub mod alarms;
pub mod applier;
pub mod auth_gate;
pub mod command;
pub mod downgrade;
pub mod execute;
pub mod txn;
pub mod watch_feed;

#[cfg(test)]
mod lease_tests;
