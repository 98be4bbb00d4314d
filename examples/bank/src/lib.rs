//! The bank: a second bounded context written only against Cairn's public API
//! (`cairn-core`, `cairn-cqrs`), to prove a domain needs nothing private.
//!
//! - [`account`]: the `Account` aggregate — open, deposit, withdraw (no overdraft),
//!   refund, close (only at zero).
//! - [`transfer`]: the `Transfer` aggregate — the record of one transfer's life.
//! - [`saga`]: `transfer-saga`, the process manager that debits, credits, and refunds
//!   the debit when the credit is refused.
//! - [`balances`]: the `account_balances` projection — balances and statement lines.
//! - [`integration`]: the public events other services may depend on.
//! - [`rules`]: input rules shared by the aggregates.
//! - [`schemas`]: the events' JSON Schemas (`schemas/*.json`), compiled in.
//! - [`module()`]: the wiring — the Cairn module the `bank` binary serves.

pub mod account;
pub mod balances;
pub mod integration;
mod module;
pub mod rules;
pub mod saga;
pub mod schemas;
pub mod transfer;

pub use account::{Account, AccountCommand, AccountEvent};
pub use balances::Balances;
pub use module::module;
pub use saga::TransferSaga;
pub use transfer::{Transfer, TransferCommand, TransferEvent};
