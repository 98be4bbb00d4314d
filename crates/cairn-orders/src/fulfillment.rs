//! `OrderFulfillment`, the process manager of contract §5.
//!
//! On `OrderConfirmed` it reserves every line's stock (the lines' reservations at once), then
//! marks the order ready to ship;
//! if a reservation is refused it releases what it reserved and cancels the order
//! (`out_of_stock`). On `OrderCancelled` it releases what it holds; on `OrderShipped` it
//! ships the reserved stock. Every command's idempotency key is derived from the causing
//! event, so a redelivered event re-issues the same commands and the store answers them
//! with their first outcomes: nothing happens twice. The decision to compensate is saved
//! before compensating, so a crash mid-way never turns a refusal into a partial success.

use async_trait::async_trait;
use cairn_core::RecordedEvent;
use cairn_core::readmodel::TableSpec;
use cairn_core::timestamp::Timestamp;
use cairn_cqrs::Aggregate;
use cairn_cqrs::CommandError;
use cairn_cqrs::process::{Instances, ProcessContext, ProcessManager};
use serde::{Deserialize, Serialize};

use crate::inventory::{Inventory, InventoryCommand};
use crate::order::{Line, Order, OrderCommand, OrderEvent};
use cairn_cqrs::projection::decode;

/// Instance table (one document per order), filterable by status.
pub const TABLE: &str = "order_fulfillment";
/// The manager's name (its checkpoint key and admin path).
pub const NAME: &str = "order-fulfillment";

/// Every [`FulfillmentStatus`] as stored (its serde name), for counting instances by status.
pub const STATUSES: &[&str] =
    &["reserving", "compensating", "ready_to_ship", "shipped", "cancelled"];

/// Where an order's fulfillment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FulfillmentStatus {
    /// Reserving stock.
    Reserving,
    /// A reservation was refused; giving back the others and cancelling.
    Compensating,
    /// Everything reserved; the order is ready to ship.
    ReadyToShip,
    /// Stock shipped.
    Shipped,
    /// Ended by a cancellation (its own or the customer's).
    Cancelled,
}

/// One instance's durable state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FulfillmentInstance {
    /// The order.
    pub order_id: String,
    /// Status.
    pub status: FulfillmentStatus,
    /// The order's lines at confirmation.
    pub items: Vec<Line>,
    /// Products reserved and not yet released or shipped.
    pub reserved: Vec<String>,
    /// Why it was cancelled, if it was.
    pub reason: Option<String>,
    /// The conversation it belongs to.
    pub correlation_id: Option<String>,
    /// Last change.
    pub updated_at: Timestamp,
}

/// The `OrderFulfillment` process manager.
pub struct OrderFulfillment;

/// A refusal the manager reacts to (as opposed to a failure it retries).
fn refused(e: &CommandError) -> bool {
    matches!(e, CommandError::Rule(_) | CommandError::NotFound)
}

impl OrderFulfillment {
    async fn save(
        &self,
        ctx: &ProcessContext,
        mut instance: FulfillmentInstance,
    ) -> Result<FulfillmentInstance, String> {
        instance.updated_at = Timestamp::now();
        ctx.save(TABLE, &instance.order_id.clone(), instance.clone()).await?;
        Ok(instance)
    }

    /// Releases every reservation at once (they are independent: one per product).
    async fn release_all(
        &self,
        ctx: &ProcessContext,
        event: &RecordedEvent,
        instance: &mut FulfillmentInstance,
    ) -> Result<(), String> {
        let commands: Vec<_> = instance
            .reserved
            .iter()
            .map(|product_id| {
                let command = InventoryCommand::Release { order_id: instance.order_id.clone() };
                let options = ctx.options_for(event, &format!("release:{product_id}"));
                (product_id.clone(), command, options)
            })
            .collect();
        for outcome in ctx.execute_all::<Inventory>(&commands).await {
            match outcome {
                // Nothing reserved any more is what we wanted.
                Ok(_) => {}
                Err(e) if refused(&e) => {}
                // Unsaved: the redelivery releases again, answered by first outcomes.
                Err(e) => return Err(e.to_string()),
            }
        }
        instance.reserved.clear();
        Ok(())
    }

    async fn on_confirmed(
        &self,
        ctx: &ProcessContext,
        event: &RecordedEvent,
        items: Vec<Line>,
    ) -> Result<(), String> {
        let order_id = event.aggregate_id.clone();
        let mut instance = match ctx.load::<FulfillmentInstance>(TABLE, &order_id).await? {
            Some(i)
                if matches!(
                    i.status,
                    FulfillmentStatus::Reserving | FulfillmentStatus::Compensating
                ) =>
            {
                i
            }
            Some(_) => return Ok(()), // already done: a redelivery
            None => {
                let instance = FulfillmentInstance {
                    order_id: order_id.clone(),
                    status: FulfillmentStatus::Reserving,
                    items,
                    reserved: Vec::new(),
                    reason: None,
                    correlation_id: cairn_cqrs::CommandMetadata::of_event(event.metadata.get())
                        .correlation_id,
                    updated_at: event.timestamp,
                };
                self.save(ctx, instance).await?
            }
        };
        if instance.status == FulfillmentStatus::Reserving {
            // Every line's reservation at once: each is its own keyed command, so the
            // branch below is a function of their first outcomes (the first refusal in
            // line order names the reason), whatever order they reached the store in.
            // One command per product, as its key is per product.
            let mut commands: Vec<(String, InventoryCommand, _)> = Vec::new();
            for line in &instance.items {
                if commands.iter().any(|(product, _, _)| *product == line.product_id) {
                    continue;
                }
                let command = InventoryCommand::Reserve {
                    order_id: order_id.clone(),
                    quantity: line.quantity,
                };
                let options = ctx.options_for(event, &format!("reserve:{}", line.product_id));
                commands.push((line.product_id.clone(), command, options));
            }
            let outcomes = ctx.execute_all::<Inventory>(&commands).await;
            let mut refusal = None;
            for ((product_id, _, _), outcome) in commands.iter().zip(outcomes) {
                match outcome {
                    Ok(_) => {
                        if !instance.reserved.contains(product_id) {
                            instance.reserved.push(product_id.clone());
                        }
                    }
                    Err(e) if refused(&e) => {
                        refusal.get_or_insert_with(|| format!("{product_id}: {e}"));
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            if refusal.is_none() {
                let options = ctx.options_for(event, "ready");
                match ctx
                    .execute::<Order>(&order_id, &OrderCommand::MarkReadyToShip, &options)
                    .await
                {
                    Ok(_) => {
                        instance.status = FulfillmentStatus::ReadyToShip;
                        self.save(ctx, instance).await?;
                        return Ok(());
                    }
                    // The order was cancelled meanwhile: give the stock back, nothing to cancel.
                    Err(e) if refused(&e) => {
                        instance.status = FulfillmentStatus::Compensating;
                        instance.reason = Some("order_cancelled".into());
                    }
                    Err(e) => return Err(e.to_string()),
                }
            } else {
                instance.status = FulfillmentStatus::Compensating;
                instance.reason = Some("out_of_stock".into());
            }
            // The decision is durable before any compensation runs.
            instance = self.save(ctx, instance).await?;
        }
        self.release_all(ctx, event, &mut instance).await?;
        if instance.reason.as_deref() == Some("out_of_stock") {
            let command = OrderCommand::Cancel { reason: "out_of_stock".into() };
            match ctx.execute::<Order>(&order_id, &command, &ctx.options_for(event, "cancel")).await
            {
                Ok(_) => {}
                Err(e) if refused(&e) => {} // already cancelled (or shipped, which cannot happen here)
                Err(e) => return Err(e.to_string()),
            }
        }
        instance.status = FulfillmentStatus::Cancelled;
        self.save(ctx, instance).await?;
        Ok(())
    }

    async fn on_cancelled(
        &self,
        ctx: &ProcessContext,
        event: &RecordedEvent,
        reason: String,
    ) -> Result<(), String> {
        let Some(mut instance) =
            ctx.load::<FulfillmentInstance>(TABLE, &event.aggregate_id).await?
        else {
            return Ok(()); // cancelled before confirmation: nothing reserved
        };
        if !matches!(instance.status, FulfillmentStatus::ReadyToShip | FulfillmentStatus::Reserving)
        {
            return Ok(());
        }
        self.release_all(ctx, event, &mut instance).await?;
        instance.status = FulfillmentStatus::Cancelled;
        instance.reason.get_or_insert(reason);
        self.save(ctx, instance).await?;
        Ok(())
    }

    async fn on_shipped(&self, ctx: &ProcessContext, event: &RecordedEvent) -> Result<(), String> {
        let Some(mut instance) =
            ctx.load::<FulfillmentInstance>(TABLE, &event.aggregate_id).await?
        else {
            return Ok(());
        };
        if instance.status != FulfillmentStatus::ReadyToShip {
            return Ok(());
        }
        let commands: Vec<_> = instance
            .reserved
            .iter()
            .map(|product_id| {
                let command = InventoryCommand::Ship { order_id: instance.order_id.clone() };
                let options = ctx.options_for(event, &format!("ship:{product_id}"));
                (product_id.clone(), command, options)
            })
            .collect();
        let outcomes = ctx.execute_all::<Inventory>(&commands).await;
        for ((product_id, _, _), outcome) in commands.iter().zip(outcomes) {
            match outcome {
                Ok(_) => {}
                Err(e) if refused(&e) => {
                    tracing::warn!(order = %instance.order_id, product = %product_id, error = %e, "no reservation to ship");
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        instance.reserved.clear();
        instance.status = FulfillmentStatus::Shipped;
        self.save(ctx, instance).await?;
        Ok(())
    }
}

#[async_trait]
impl ProcessManager for OrderFulfillment {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> Vec<TableSpec> {
        vec![TableSpec { name: TABLE, indexed: &["status"] }]
    }

    fn event_types(&self) -> Vec<&'static str> {
        vec!["OrderConfirmed", "OrderCancelled", "OrderShipped"]
    }

    /// One instance per order: the Order event's aggregate id (what [`TABLE`] is keyed
    /// by). Another context's event of the same type name is not ours.
    fn instance_key(&self, event: &RecordedEvent) -> Option<String> {
        (event.aggregate_type == Order::TYPE).then(|| event.aggregate_id.clone())
    }

    fn instances(&self) -> Instances {
        Instances::table(TABLE).by_status(STATUSES)
    }

    async fn handle(&self, event: &RecordedEvent, ctx: &ProcessContext) -> Result<(), String> {
        // The runner skips what `instance_key` disowns; checked again for direct callers.
        if self.instance_key(event).is_none() {
            return Ok(());
        }
        match decode::<OrderEvent>(event).map_err(|e| e.to_string())? {
            OrderEvent::OrderConfirmed(c) => self.on_confirmed(ctx, event, c.items).await,
            OrderEvent::OrderCancelled(c) => self.on_cancelled(ctx, event, c.reason).await,
            OrderEvent::OrderShipped(_) => self.on_shipped(ctx, event).await,
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use cairn_core::RecordedEvent;
    use cairn_core::timestamp::Timestamp;
    use cairn_cqrs::process::ProcessManager;
    use serde_json::value::RawValue;
    use uuid::Uuid;

    use super::{FulfillmentStatus, OrderFulfillment, STATUSES, TABLE};

    fn event(aggregate_type: &str) -> RecordedEvent {
        RecordedEvent {
            event_id: Uuid::now_v7(),
            aggregate_id: "order-1".into(),
            aggregate_type: aggregate_type.into(),
            event_type: "OrderConfirmed".into(),
            version: 1,
            position: 1,
            timestamp: Timestamp::now(),
            data: RawValue::from_string("{}".into()).unwrap(),
            metadata: RawValue::from_string("{}".into()).unwrap(),
        }
    }

    #[test]
    fn an_instance_is_an_order_and_its_statuses_are_every_stored_status() {
        let manager = OrderFulfillment;
        assert_eq!(manager.instance_key(&event("Order")).as_deref(), Some("order-1"));
        assert_eq!(manager.instance_key(&event("Ledger")), None, "another context's event");
        let stored: Vec<String> = [
            FulfillmentStatus::Reserving,
            FulfillmentStatus::Compensating,
            FulfillmentStatus::ReadyToShip,
            FulfillmentStatus::Shipped,
            FulfillmentStatus::Cancelled,
        ]
        .iter()
        .map(|s| serde_json::to_value(s).unwrap().as_str().unwrap().to_owned())
        .collect();
        assert_eq!(stored, STATUSES);
        let instances = manager.instances();
        assert_eq!((instances.table_name(), instances.statuses()), (TABLE, STATUSES));
        assert!(manager.tables().iter().any(|t| t.name == TABLE && t.indexed.contains(&"status")));
    }
}
