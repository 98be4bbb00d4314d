//! The bank's public events: what other services may depend on, versioned, each on its
//! own subject. Internal steps (debits, deposits) stay internal.

use cairn_core::RecordedEvent;
use cairn_cqrs::integration::{IntegrationEvent, PublicEvent, TranslateError, envelope};
use cairn_cqrs::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::account::{Account, AccountEvent};
use crate::transfer::{Transfer, TransferEvent};

/// `AccountOpenedV1`: an account was opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountOpenedV1 {
    /// The account.
    pub account_id: String,
    /// Who owns it.
    pub owner: String,
}

impl PublicEvent for AccountOpenedV1 {
    const EVENT_TYPE: &'static str = "AccountOpenedV1";
    const SUBJECT: &'static str = "public.bank.account-opened.v1";
}

/// `TransferCompletedV1`: money moved from one account to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferCompletedV1 {
    /// The transfer.
    pub transfer_id: String,
    /// The account debited.
    pub from: String,
    /// The account credited.
    pub to: String,
    /// How much, in cents.
    pub amount_cents: i64,
}

impl PublicEvent for TransferCompletedV1 {
    const EVENT_TYPE: &'static str = "TransferCompletedV1";
    const SUBJECT: &'static str = "public.bank.transfer-completed.v1";
}

/// `TransferRefundedV1`: the target refused the money; the source got it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRefundedV1 {
    /// The transfer.
    pub transfer_id: String,
    /// The account debited, then refunded.
    pub from: String,
    /// The account that refused the credit.
    pub to: String,
    /// How much, in cents.
    pub amount_cents: i64,
    /// Why.
    pub reason: String,
}

impl PublicEvent for TransferRefundedV1 {
    const EVENT_TYPE: &'static str = "TransferRefundedV1";
    const SUBJECT: &'static str = "public.bank.transfer-refunded.v1";
}

/// Every public event type, for registering their schemas.
pub const PUBLIC_EVENT_TYPES: &[&str] =
    &[AccountOpenedV1::EVENT_TYPE, TransferCompletedV1::EVENT_TYPE, TransferRefundedV1::EVENT_TYPE];

/// Translates a stored event into its public event, or `None` when it stays internal.
///
/// Only the published types are decoded, so an internal event never fails translation.
pub fn translate(event: &RecordedEvent) -> Result<Option<IntegrationEvent>, TranslateError> {
    let id = event.aggregate_id.clone();
    match (event.aggregate_type.as_str(), event.event_type.as_str()) {
        (Account::TYPE, "AccountOpened") => match AccountEvent::from_recorded(event)? {
            AccountEvent::AccountOpened(e) => {
                envelope(event, &AccountOpenedV1 { account_id: id, owner: e.owner }).map(Some)
            }
            _ => Ok(None),
        },
        (Transfer::TYPE, "TransferCompleted" | "TransferRefunded") => {
            match TransferEvent::from_recorded(event)? {
                TransferEvent::TransferCompleted(e) => envelope(
                    event,
                    &TransferCompletedV1 {
                        transfer_id: id,
                        from: e.from,
                        to: e.to,
                        amount_cents: e.amount_cents,
                    },
                )
                .map(Some),
                TransferEvent::TransferRefunded(e) => envelope(
                    event,
                    &TransferRefundedV1 {
                        transfer_id: id,
                        from: e.from,
                        to: e.to,
                        amount_cents: e.amount_cents,
                        reason: e.reason,
                    },
                )
                .map(Some),
                _ => Ok(None),
            }
        }
        _ => Ok(None),
    }
}
