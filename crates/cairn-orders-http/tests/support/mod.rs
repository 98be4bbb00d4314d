//! The same harness as cairn-server's HTTP tests (a real router over a real store on a
//! loopback port), shared from there rather than copied: both crates run the Order module.

#[path = "../../../cairn-server/tests/support/mod.rs"]
mod shared;

#[allow(unused_imports)]
pub use shared::*;
