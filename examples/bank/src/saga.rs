//! `transfer-saga`: moves a transfer's money, one instance per transfer.
//!
//! On `TransferRequested` it withdraws from the source (step `debit`, reference
//! `transfer:<id>`); refused (insufficient funds, closed or unknown source) → `Reject`,
//! else `MarkDebited`. On `TransferDebited` it deposits into the target (step `credit`);
//! refused (closed or unknown target) → `Refund` the source (step `refund`) and `Refund`
//! the transfer, else `Complete`.
//!
//! Redelivery is the normal case: every command's idempotency key derives from the
//! causing event ([`ProcessContext::options_for`]), so a re-issued command is answered
//! with its first outcome. A *refusal* leaves no key behind, though, and would be decided
//! again on a state that may have changed meanwhile (a deposit arrived, so the debit now
//! succeeds). So the saga saves each decision taken on a refusal (`rejected`, `refunding`)
//! before acting on it, and a redelivery follows the saved decision instead of asking again.

use async_trait::async_trait;
use cairn_core::RecordedEvent;
use cairn_core::readmodel::{ReadModelError, TableSpec};
use cairn_cqrs::process::{Instances, ProcessContext, ProcessManager};
use cairn_cqrs::projection::decode;
use cairn_cqrs::{Aggregate, CommandError};
use serde::{Deserialize, Serialize};

use crate::account::{Account, AccountCommand, Deposit, Refund, Withdraw};
use crate::rules::TEXT_MAX_LEN;
use crate::transfer::{Transfer, TransferCommand, TransferEvent};

/// The manager's name (its checkpoint key and admin path).
pub const NAME: &str = "transfer-saga";
/// Instance table (one document per transfer), filterable by status.
pub const TABLE: &str = "transfer_saga";
/// Every [`SagaStatus`] as stored (its serde name), for counting instances by status.
pub const STATUSES: &[&str] =
    &["debiting", "crediting", "refunding", "completed", "refunded", "rejected"];

/// Where one transfer's saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Withdrawing from the source.
    Debiting,
    /// Debited; depositing into the target.
    Crediting,
    /// The credit was refused (decided, durable); giving the debit back.
    Refunding,
    /// Ended: money moved.
    Completed,
    /// Ended: the debit was given back.
    Refunded,
    /// The debit was refused (decided, durable); ends once the transfer is rejected.
    Rejected,
}

/// One instance's durable state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaInstance {
    /// The transfer.
    pub transfer_id: String,
    /// Where it is.
    pub status: SagaStatus,
    /// The account debited.
    pub from: String,
    /// The account credited.
    pub to: String,
    /// How much, in cents.
    pub amount_cents: i64,
    /// Why it was rejected or refunded.
    pub reason: Option<String>,
}

/// Why the saga could not handle an event; the runner retries it (a storage failure)
/// or dead-letters the event after a few tries (anything else).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// A command failed for another reason than a refusal the saga reacts to.
    #[error("{step} on {aggregate} {id} failed: {source}")]
    Command {
        /// The saga's step (`debit`, `credit`, `refund`, `complete`, ...).
        step: &'static str,
        /// The aggregate type.
        aggregate: &'static str,
        /// The aggregate.
        id: String,
        /// Why.
        #[source]
        source: CommandError,
    },
    /// The instance state could not be loaded or saved.
    #[error("transfer-saga instance: {0}")]
    Instance(String),
    /// The event does not decode.
    #[error(transparent)]
    Decode(#[from] ReadModelError),
}

impl SagaError {
    fn command<A: Aggregate>(step: &'static str, id: &str, source: CommandError) -> Self {
        Self::Command { step, aggregate: A::TYPE, id: id.to_owned(), source }
    }
}

/// The `transfer-saga` process manager.
pub struct TransferSaga;

/// A refusal the saga reacts to (as opposed to a failure it lets the runner retry).
fn refused(e: &CommandError) -> bool {
    matches!(e, CommandError::Rule(_) | CommandError::NotFound)
}

/// A refusal as a reason the Transfer accepts (bounded text).
fn reason_of(account: &str, e: &CommandError) -> String {
    let mut reason = format!("{account}: {e}");
    if reason.len() > TEXT_MAX_LEN {
        let mut end = TEXT_MAX_LEN;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// The reference on both accounts' statement lines of a transfer.
#[must_use]
pub fn reference(transfer_id: &str) -> String {
    format!("transfer:{transfer_id}")
}

impl TransferSaga {
    async fn save(&self, ctx: &ProcessContext, instance: &SagaInstance) -> Result<(), SagaError> {
        ctx.save(TABLE, &instance.transfer_id, instance.clone()).await.map_err(SagaError::Instance)
    }

    /// Runs a Transfer transition; a refusal is a bug (the saga is the only one moving
    /// transfers, and a redelivered keyed command is answered before it is decided).
    async fn transition(
        &self,
        ctx: &ProcessContext,
        event: &RecordedEvent,
        step: &'static str,
        command: TransferCommand,
    ) -> Result<(), SagaError> {
        let (id, options) = (&event.aggregate_id, ctx.options_for(event, step));
        ctx.execute::<Transfer>(id, &command, &options)
            .await
            .map(|_| ())
            .map_err(|e| SagaError::command::<Transfer>(step, id, e))
    }

    async fn on_requested(
        &self,
        ctx: &ProcessContext,
        event: &RecordedEvent,
        mut instance: SagaInstance,
    ) -> Result<(), SagaError> {
        if instance.status == SagaStatus::Debiting {
            let command = AccountCommand::Withdraw(Withdraw {
                amount_cents: instance.amount_cents,
                reference: Some(reference(&instance.transfer_id)),
            });
            let options = ctx.options_for(event, "debit");
            match ctx.execute::<Account>(&instance.from, &command, &options).await {
                Ok(_) => {
                    self.transition(ctx, event, "debited", TransferCommand::MarkDebited).await?;
                    instance.status = SagaStatus::Crediting;
                    return self.save(ctx, &instance).await;
                }
                Err(e) if refused(&e) => {
                    instance.status = SagaStatus::Rejected;
                    instance.reason = Some(reason_of(&instance.from, &e));
                    // Durable before acting: a redelivery must not try the debit again.
                    self.save(ctx, &instance).await?;
                }
                Err(e) => return Err(SagaError::command::<Account>("debit", &instance.from, e)),
            }
        }
        if instance.status == SagaStatus::Rejected {
            let reason = instance.reason.clone().unwrap_or_else(|| "refused".into());
            self.transition(ctx, event, "reject", TransferCommand::Reject { reason }).await?;
        }
        Ok(())
    }

    async fn on_debited(
        &self,
        ctx: &ProcessContext,
        event: &RecordedEvent,
        mut instance: SagaInstance,
    ) -> Result<(), SagaError> {
        if instance.status == SagaStatus::Crediting {
            let command = AccountCommand::Deposit(Deposit {
                amount_cents: instance.amount_cents,
                reference: Some(reference(&instance.transfer_id)),
            });
            let options = ctx.options_for(event, "credit");
            match ctx.execute::<Account>(&instance.to, &command, &options).await {
                Ok(_) => {
                    self.transition(ctx, event, "complete", TransferCommand::Complete).await?;
                    instance.status = SagaStatus::Completed;
                    return self.save(ctx, &instance).await;
                }
                Err(e) if refused(&e) => {
                    instance.status = SagaStatus::Refunding;
                    instance.reason = Some(reason_of(&instance.to, &e));
                    // Durable before acting: a redelivery must not try the credit again
                    // (an unknown target opened meanwhile would get the money *and* the
                    // source its refund).
                    self.save(ctx, &instance).await?;
                }
                Err(e) => return Err(SagaError::command::<Account>("credit", &instance.to, e)),
            }
        }
        if instance.status == SagaStatus::Refunding {
            let command = AccountCommand::Refund(Refund {
                transfer_id: instance.transfer_id.clone(),
                amount_cents: instance.amount_cents,
            });
            let options = ctx.options_for(event, "refund");
            ctx.execute::<Account>(&instance.from, &command, &options)
                .await
                .map_err(|e| SagaError::command::<Account>("refund", &instance.from, e))?;
            let reason = instance.reason.clone().unwrap_or_else(|| "refused".into());
            self.transition(ctx, event, "refunded", TransferCommand::Refund { reason }).await?;
            instance.status = SagaStatus::Refunded;
            self.save(ctx, &instance).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl ProcessManager for TransferSaga {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> Vec<TableSpec> {
        vec![TableSpec { name: TABLE, indexed: &["status"] }]
    }

    fn event_types(&self) -> Vec<&'static str> {
        vec!["TransferRequested", "TransferDebited"]
    }

    /// One instance per transfer: the Transfer event's aggregate id. Another context's
    /// event of the same type name is not ours.
    fn instance_key(&self, event: &RecordedEvent) -> Option<String> {
        (event.aggregate_type == Transfer::TYPE).then(|| event.aggregate_id.clone())
    }

    fn instances(&self) -> Instances {
        Instances::table(TABLE).by_status(STATUSES)
    }

    async fn handle(&self, event: &RecordedEvent, ctx: &ProcessContext) -> Result<(), String> {
        self.on_event(event, ctx).await.map_err(|e| e.to_string())
    }
}

impl TransferSaga {
    async fn on_event(&self, event: &RecordedEvent, ctx: &ProcessContext) -> Result<(), SagaError> {
        // The runner skips what `instance_key` disowns; checked again for direct callers.
        let Some(key) = self.instance_key(event) else { return Ok(()) };
        let loaded = ctx.load::<SagaInstance>(TABLE, &key).await.map_err(SagaError::Instance)?;
        match decode::<TransferEvent>(event)? {
            TransferEvent::TransferRequested(r) => {
                let instance = if let Some(i) = loaded {
                    i
                } else {
                    let instance = SagaInstance {
                        transfer_id: key,
                        status: SagaStatus::Debiting,
                        from: r.from,
                        to: r.to,
                        amount_cents: r.amount_cents,
                        reason: None,
                    };
                    self.save(ctx, &instance).await?;
                    instance
                };
                self.on_requested(ctx, event, instance).await
            }
            TransferEvent::TransferDebited(d) => {
                // No instance: it was lost (e.g. an instance table restored from an older
                // export); the event carries everything needed to go on from here.
                let instance = loaded.unwrap_or(SagaInstance {
                    transfer_id: key,
                    status: SagaStatus::Crediting,
                    from: d.from,
                    to: d.to,
                    amount_cents: d.amount_cents,
                    reason: None,
                });
                self.on_debited(ctx, event, instance).await
            }
            _ => Ok(()),
        }
    }
}
