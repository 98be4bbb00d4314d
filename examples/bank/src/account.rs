//! The `Account` aggregate: one bank account's balance, in integer cents.
//!
//! Rules:
//! - `Open` creates the account (a second `Open` is `409`).
//! - `Deposit` and `Withdraw` need an open account; `Withdraw` never overdraws: a
//!   withdrawal above the balance is refused (`422`).
//! - `Refund` gives back money a transfer debited. It is accepted on a closed account
//!   too: money owed back must land somewhere, and the source may have been closed after
//!   its debit (it cannot be, at a non-zero balance, but a debit of the whole balance
//!   followed by a close is allowed).
//! - `Close` only at a zero balance: closing never makes money disappear. A closed
//!   account refuses deposits, withdrawals and a second close; a refund to a closed
//!   account is kept on its balance (reopening is not modelled).
//!
//! All arithmetic is checked: an overflow is a rule violation, never a panic.

use cairn_cqrs::{Aggregate, DomainError, Existence};
use serde::{Deserialize, Serialize};

use crate::rules::{add, check_amount, check_id, check_text};

/// `AccountOpened`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountOpened {
    /// Who owns it.
    pub owner: String,
}

/// `MoneyDeposited`: money came in (a deposit, or a transfer's credit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoneyDeposited {
    /// How much, in cents (≥ 1).
    pub amount_cents: i64,
    /// What it was for (`transfer:<id>` for a transfer's credit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// `MoneyWithdrawn`: money went out (a withdrawal, or a transfer's debit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoneyWithdrawn {
    /// How much, in cents (≥ 1).
    pub amount_cents: i64,
    /// What it was for (`transfer:<id>` for a transfer's debit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// `MoneyRefunded`: a transfer's debit given back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoneyRefunded {
    /// The transfer whose debit this gives back.
    pub transfer_id: String,
    /// How much, in cents (≥ 1).
    pub amount_cents: i64,
}

/// `AccountClosed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AccountClosed {}

/// Every event of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountEvent {
    /// See [`AccountOpened`].
    AccountOpened(AccountOpened),
    /// See [`MoneyDeposited`].
    MoneyDeposited(MoneyDeposited),
    /// See [`MoneyWithdrawn`].
    MoneyWithdrawn(MoneyWithdrawn),
    /// See [`MoneyRefunded`].
    MoneyRefunded(MoneyRefunded),
    /// See [`AccountClosed`].
    AccountClosed(AccountClosed),
}

cairn_cqrs::domain_events!(AccountEvent {
    AccountOpened,
    MoneyDeposited,
    MoneyWithdrawn,
    MoneyRefunded,
    AccountClosed,
});

/// `Open`'s payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Open {
    /// Who owns the account.
    pub owner: String,
}

/// `Deposit`'s payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Deposit {
    /// How much, in cents.
    pub amount_cents: i64,
    /// What it is for.
    #[serde(default)]
    pub reference: Option<String>,
}

/// `Withdraw`'s payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Withdraw {
    /// How much, in cents.
    pub amount_cents: i64,
    /// What it is for.
    #[serde(default)]
    pub reference: Option<String>,
}

/// `Refund`'s payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    /// The transfer whose debit is given back.
    pub transfer_id: String,
    /// How much, in cents.
    pub amount_cents: i64,
}

/// What an account can be asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountCommand {
    /// Open it.
    Open(Open),
    /// Put money in.
    Deposit(Deposit),
    /// Take money out (never below zero).
    Withdraw(Withdraw),
    /// Give back a transfer's debit (also on a closed account).
    Refund(Refund),
    /// Close it (only at a zero balance).
    Close,
}

/// Whether an account takes new money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    /// Not opened yet (no events).
    #[default]
    New,
    /// Open.
    Open,
    /// Closed.
    Closed,
}

impl AccountStatus {
    /// The stored name (`open`, ...).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

/// An account's state. `balance_cents == deposited_cents + refunded_cents −
/// withdrawn_cents` always holds: the totals are kept so that the books can be checked.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Account {
    /// Who owns it.
    pub owner: String,
    /// Whether it is open.
    pub status: AccountStatus,
    /// What it holds, in cents; never negative.
    pub balance_cents: i64,
    /// Everything deposited (transfer credits included).
    pub deposited_cents: i64,
    /// Everything withdrawn (transfer debits included).
    pub withdrawn_cents: i64,
    /// Everything refunded.
    pub refunded_cents: i64,
}

impl Account {
    fn check_open(&self) -> Result<(), DomainError> {
        match self.status {
            AccountStatus::Open => Ok(()),
            AccountStatus::Closed => Err(DomainError::rule("the account is closed")),
            AccountStatus::New => Err(DomainError::rule("the account is not open")),
        }
    }

    /// The balance and the total `field` after `amount` comes in, refused on overflow.
    fn credited(&self, field: &str, total: i64, amount: i64) -> Result<(), DomainError> {
        add("balance_cents", self.balance_cents, amount)?;
        add(field, total, amount).map(|_| ())
    }
}

impl Aggregate for Account {
    const TYPE: &'static str = "Account";
    type Event = AccountEvent;
    type Command = AccountCommand;

    /// Saturating, never panicking: `handle` refused every command whose sums overflow,
    /// so saturation is never reached by events this aggregate wrote.
    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::AccountOpened(e) => {
                self.owner.clone_from(&e.owner);
                self.status = AccountStatus::Open;
            }
            AccountEvent::MoneyDeposited(e) => {
                self.balance_cents = self.balance_cents.saturating_add(e.amount_cents);
                self.deposited_cents = self.deposited_cents.saturating_add(e.amount_cents);
            }
            AccountEvent::MoneyWithdrawn(e) => {
                self.balance_cents = self.balance_cents.saturating_sub(e.amount_cents);
                self.withdrawn_cents = self.withdrawn_cents.saturating_add(e.amount_cents);
            }
            AccountEvent::MoneyRefunded(e) => {
                self.balance_cents = self.balance_cents.saturating_add(e.amount_cents);
                self.refunded_cents = self.refunded_cents.saturating_add(e.amount_cents);
            }
            AccountEvent::AccountClosed(_) => self.status = AccountStatus::Closed,
        }
    }

    fn handle(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, DomainError> {
        let event = match command {
            AccountCommand::Open(c) => {
                check_text("owner", &c.owner)?;
                AccountEvent::AccountOpened(AccountOpened { owner: c.owner.clone() })
            }
            AccountCommand::Deposit(c) => {
                self.check_open()?;
                check_amount(c.amount_cents)?;
                check_reference(c.reference.as_deref())?;
                self.credited("deposited_cents", self.deposited_cents, c.amount_cents)?;
                AccountEvent::MoneyDeposited(MoneyDeposited {
                    amount_cents: c.amount_cents,
                    reference: c.reference.clone(),
                })
            }
            AccountCommand::Withdraw(c) => {
                self.check_open()?;
                check_amount(c.amount_cents)?;
                check_reference(c.reference.as_deref())?;
                if c.amount_cents > self.balance_cents {
                    return Err(DomainError::rule(format!(
                        "insufficient funds: the balance is {} cents, {} asked",
                        self.balance_cents, c.amount_cents
                    )));
                }
                add("withdrawn_cents", self.withdrawn_cents, c.amount_cents)?;
                AccountEvent::MoneyWithdrawn(MoneyWithdrawn {
                    amount_cents: c.amount_cents,
                    reference: c.reference.clone(),
                })
            }
            AccountCommand::Refund(c) => {
                if self.status == AccountStatus::New {
                    return Err(DomainError::rule("the account is not open"));
                }
                check_id("transfer_id", &c.transfer_id)?;
                check_amount(c.amount_cents)?;
                self.credited("refunded_cents", self.refunded_cents, c.amount_cents)?;
                AccountEvent::MoneyRefunded(MoneyRefunded {
                    transfer_id: c.transfer_id.clone(),
                    amount_cents: c.amount_cents,
                })
            }
            AccountCommand::Close => {
                self.check_open()?;
                if self.balance_cents != 0 {
                    return Err(DomainError::rule(format!(
                        "only an empty account can be closed; the balance is {} cents",
                        self.balance_cents
                    )));
                }
                AccountEvent::AccountClosed(AccountClosed {})
            }
        };
        Ok(vec![event])
    }

    fn existence(command: &AccountCommand) -> Existence {
        match command {
            AccountCommand::Open(_) => Existence::MustNotExist,
            _ => Existence::MustExist,
        }
    }

    cairn_cqrs::serde_snapshots!();
}

fn check_reference(reference: Option<&str>) -> Result<(), DomainError> {
    reference.map_or(Ok(()), |r| check_text("reference", r))
}
