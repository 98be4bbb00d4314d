//! The `Transfer` aggregate: the record of one transfer of money between two accounts.
//!
//! States: requested → debited → completed | refunded; requested → rejected. The saga
//! ([`crate::saga`]) moves it; each transition is accepted once, from its one state, so
//! a repeated transition is refused (the saga's keyed commands answer a redelivery with
//! their first outcome before that). Every event carries `from`, `to` and `amount_cents`:
//! a translator or a projection sees one event, so the facts it needs must be in it.

use cairn_cqrs::{Aggregate, DomainError, Existence};
use serde::{Deserialize, Serialize};

use crate::rules::{check_amount, check_id, check_text};

/// The facts every transfer event carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRequested {
    /// The account debited.
    pub from: String,
    /// The account credited.
    pub to: String,
    /// How much, in cents.
    pub amount_cents: i64,
}

/// `TransferDebited`: the source was debited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferDebited {
    /// The account debited.
    pub from: String,
    /// The account to credit.
    pub to: String,
    /// How much, in cents.
    pub amount_cents: i64,
}

/// `TransferCompleted`: the target was credited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferCompleted {
    /// The account debited.
    pub from: String,
    /// The account credited.
    pub to: String,
    /// How much, in cents.
    pub amount_cents: i64,
}

/// `TransferRefunded`: the credit was refused and the debit given back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRefunded {
    /// The account debited, then refunded.
    pub from: String,
    /// The account that refused the credit.
    pub to: String,
    /// How much, in cents.
    pub amount_cents: i64,
    /// Why the credit was refused.
    pub reason: String,
}

/// `TransferRejected`: the debit was refused; no money moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRejected {
    /// The account that refused the debit.
    pub from: String,
    /// The account it was for.
    pub to: String,
    /// How much, in cents.
    pub amount_cents: i64,
    /// Why the debit was refused.
    pub reason: String,
}

/// Every event of a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferEvent {
    /// See [`TransferRequested`].
    TransferRequested(TransferRequested),
    /// See [`TransferDebited`].
    TransferDebited(TransferDebited),
    /// See [`TransferCompleted`].
    TransferCompleted(TransferCompleted),
    /// See [`TransferRefunded`].
    TransferRefunded(TransferRefunded),
    /// See [`TransferRejected`].
    TransferRejected(TransferRejected),
}

cairn_cqrs::domain_events!(TransferEvent {
    TransferRequested,
    TransferDebited,
    TransferCompleted,
    TransferRefunded,
    TransferRejected,
});

/// `Request`'s payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Request {
    /// The account to debit.
    pub from: String,
    /// The account to credit (not `from`).
    pub to: String,
    /// How much, in cents.
    pub amount_cents: i64,
}

/// What a transfer can be asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferCommand {
    /// Ask for it (creates it).
    Request(Request),
    /// The source was debited.
    MarkDebited,
    /// The target was credited.
    Complete,
    /// The credit was refused and the debit given back.
    Refund {
        /// Why.
        reason: String,
    },
    /// The debit was refused.
    Reject {
        /// Why.
        reason: String,
    },
}

/// Where a transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TransferStatus {
    /// Not requested yet (no events).
    #[default]
    New,
    /// Requested; the source is being debited.
    Requested,
    /// Debited; the target is being credited.
    Debited,
    /// Done: money moved.
    Completed,
    /// Done: the credit was refused, the debit given back.
    Refunded,
    /// Done: the debit was refused, nothing moved.
    Rejected,
}

impl TransferStatus {
    /// Whether the transfer has ended.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Refunded | Self::Rejected)
    }
}

/// A transfer's state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Transfer {
    /// The account debited.
    pub from: String,
    /// The account credited.
    pub to: String,
    /// How much, in cents.
    pub amount_cents: i64,
    /// Where it is.
    pub status: TransferStatus,
    /// Why it was refunded or rejected.
    pub reason: Option<String>,
}

impl Transfer {
    fn expect(&self, status: TransferStatus, action: &str) -> Result<(), DomainError> {
        if self.status == status {
            Ok(())
        } else {
            Err(DomainError::rule(format!(
                "a transfer cannot be {action} when it is {:?}",
                self.status
            )))
        }
    }
}

impl Aggregate for Transfer {
    const TYPE: &'static str = "Transfer";
    type Event = TransferEvent;
    type Command = TransferCommand;

    fn apply(&mut self, event: &TransferEvent) {
        match event {
            TransferEvent::TransferRequested(e) => {
                self.from.clone_from(&e.from);
                self.to.clone_from(&e.to);
                self.amount_cents = e.amount_cents;
                self.status = TransferStatus::Requested;
            }
            TransferEvent::TransferDebited(_) => self.status = TransferStatus::Debited,
            TransferEvent::TransferCompleted(_) => self.status = TransferStatus::Completed,
            TransferEvent::TransferRefunded(e) => {
                self.status = TransferStatus::Refunded;
                self.reason = Some(e.reason.clone());
            }
            TransferEvent::TransferRejected(e) => {
                self.status = TransferStatus::Rejected;
                self.reason = Some(e.reason.clone());
            }
        }
    }

    fn handle(&self, command: &TransferCommand) -> Result<Vec<TransferEvent>, DomainError> {
        let (from, to, amount_cents) = (self.from.clone(), self.to.clone(), self.amount_cents);
        let event = match command {
            TransferCommand::Request(c) => {
                check_id("from", &c.from)?;
                check_id("to", &c.to)?;
                check_amount(c.amount_cents)?;
                if c.from == c.to {
                    return Err(DomainError::rule("a transfer needs two different accounts"));
                }
                TransferEvent::TransferRequested(TransferRequested {
                    from: c.from.clone(),
                    to: c.to.clone(),
                    amount_cents: c.amount_cents,
                })
            }
            TransferCommand::MarkDebited => {
                self.expect(TransferStatus::Requested, "debited")?;
                TransferEvent::TransferDebited(TransferDebited { from, to, amount_cents })
            }
            TransferCommand::Complete => {
                self.expect(TransferStatus::Debited, "completed")?;
                TransferEvent::TransferCompleted(TransferCompleted { from, to, amount_cents })
            }
            TransferCommand::Refund { reason } => {
                self.expect(TransferStatus::Debited, "refunded")?;
                check_text("reason", reason)?;
                let reason = reason.clone();
                TransferEvent::TransferRefunded(TransferRefunded { from, to, amount_cents, reason })
            }
            TransferCommand::Reject { reason } => {
                self.expect(TransferStatus::Requested, "rejected")?;
                check_text("reason", reason)?;
                let reason = reason.clone();
                TransferEvent::TransferRejected(TransferRejected { from, to, amount_cents, reason })
            }
        };
        Ok(vec![event])
    }

    fn existence(command: &TransferCommand) -> Existence {
        match command {
            TransferCommand::Request(_) => Existence::MustNotExist,
            _ => Existence::MustExist,
        }
    }

    cairn_cqrs::serde_snapshots!();
}
