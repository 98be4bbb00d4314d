//! `account_balances`: each account's balance, and its statement, one line per movement.
//!
//! Two tables: [`TABLE`] holds one row per account (indexed by `status` and `owner`);
//! [`LINES`] holds one document per money movement, keyed `<account>:<version, 10
//! digits>` so that a listing after a key pages through one account's statement in
//! order (indexed by `account_id`). Lines are their own documents so that an event's cost
//! does not grow with the length of the statement.
//!
//! The row's figures are the `Account` aggregate's own fold ([`Account::apply`]), so the
//! read model can never disagree with the write side about a balance.

use cairn_core::RecordedEvent;
use cairn_core::readmodel::{DocTxn, DocTxnExt, ReadModelError, TableSpec};
use cairn_core::timestamp::Timestamp;
use cairn_cqrs::projection::{Projection, decode};
use cairn_cqrs::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::account::{Account, AccountEvent, AccountStatus};

/// The projection's name (its checkpoint key).
pub const NAME: &str = "account_balances";
/// One row per account.
pub const TABLE: &str = "account_balances";
/// One row per statement line.
pub const LINES: &str = "account_statement_lines";

/// A row of [`TABLE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AccountBalance {
    /// The account.
    pub account_id: String,
    /// Who owns it.
    pub owner: String,
    /// `open` or `closed`.
    pub status: String,
    /// What it holds, in cents.
    pub balance_cents: i64,
    /// Everything deposited (transfer credits included).
    pub deposited_cents: i64,
    /// Everything withdrawn (transfer debits included).
    pub withdrawn_cents: i64,
    /// Everything refunded.
    pub refunded_cents: i64,
    /// The version of the account's last event.
    pub version: u64,
    /// When its last event was recorded (RFC 3339).
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

impl AccountBalance {
    /// The aggregate state this row shows.
    fn state(&self) -> Account {
        Account {
            owner: self.owner.clone(),
            status: if self.status == AccountStatus::Closed.as_str() {
                AccountStatus::Closed
            } else {
                AccountStatus::Open
            },
            balance_cents: self.balance_cents,
            deposited_cents: self.deposited_cents,
            withdrawn_cents: self.withdrawn_cents,
            refunded_cents: self.refunded_cents,
        }
    }
}

/// What a statement line records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// Money in.
    Deposit,
    /// Money out.
    Withdrawal,
    /// A transfer's debit given back.
    Refund,
}

/// A row of [`LINES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatementLine {
    /// The account.
    pub account_id: String,
    /// The version of the event it records.
    pub version: u64,
    /// What it records.
    pub kind: LineKind,
    /// Signed: positive in, negative out.
    pub amount_cents: i64,
    /// What it was for (`transfer:<id>` for a transfer's movements).
    pub reference: Option<String>,
    /// The balance right after it.
    pub balance_after_cents: i64,
    /// When it was recorded (RFC 3339).
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
}

/// The key of an account's statement line: sorts by version within the account.
#[must_use]
pub fn line_key(account_id: &str, version: u64) -> String {
    format!("{account_id}:{version:010}")
}

/// Builds [`TABLE`] and [`LINES`].
pub struct Balances;

impl Projection for Balances {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> Vec<TableSpec> {
        vec![
            TableSpec { name: TABLE, indexed: &["status", "owner"] },
            TableSpec { name: LINES, indexed: &["account_id"] },
        ]
    }

    fn event_types(&self) -> Vec<&'static str> {
        AccountEvent::EVENT_TYPES.to_vec()
    }

    fn apply(&self, e: &RecordedEvent, txn: &mut dyn DocTxn) -> Result<(), ReadModelError> {
        // Another context's event of the same type name is not an account's.
        if e.aggregate_type != Account::TYPE {
            return Ok(());
        }
        let event: AccountEvent = decode(e)?;
        let id = e.aggregate_id.as_str();
        let row = txn.load::<AccountBalance>(TABLE, id)?;
        let mut state = row.as_ref().map(AccountBalance::state).unwrap_or_default();
        state.apply(&event);
        let line = match &event {
            AccountEvent::MoneyDeposited(d) => {
                Some((LineKind::Deposit, d.amount_cents, d.reference.clone()))
            }
            AccountEvent::MoneyWithdrawn(w) => {
                Some((LineKind::Withdrawal, -w.amount_cents, w.reference.clone()))
            }
            AccountEvent::MoneyRefunded(r) => Some((
                LineKind::Refund,
                r.amount_cents,
                Some(crate::saga::reference(&r.transfer_id)),
            )),
            AccountEvent::AccountOpened(_) | AccountEvent::AccountClosed(_) => None,
        };
        if let Some((kind, amount_cents, reference)) = line {
            let line = StatementLine {
                account_id: id.to_owned(),
                version: e.version,
                kind,
                amount_cents,
                reference,
                balance_after_cents: state.balance_cents,
                at: e.timestamp,
            };
            txn.save(LINES, &line_key(id, e.version), &line)?;
        }
        let row = AccountBalance {
            account_id: id.to_owned(),
            owner: state.owner.clone(),
            status: state.status.as_str().to_owned(),
            balance_cents: state.balance_cents,
            deposited_cents: state.deposited_cents,
            withdrawn_cents: state.withdrawn_cents,
            refunded_cents: state.refunded_cents,
            version: e.version,
            updated_at: e.timestamp,
        };
        txn.save(TABLE, id, &row)
    }
}
