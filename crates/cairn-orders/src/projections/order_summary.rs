//! `order_summary`: one row per order, filterable by status and customer.

use cairn_core::RecordedEvent;
use std::collections::HashMap;

use cairn_core::readmodel::{DocTxn, DocTxnExt, ReadModelError, TableSpec};
use cairn_core::timestamp::Timestamp;
use cairn_cqrs::projection::Projection;
use cairn_cqrs::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::money::Money;
use crate::order::{Order, OrderEvent};
use cairn_cqrs::projection::decode;

/// The query table.
pub const TABLE: &str = "order_summary";
/// The projection's private copy of each order's state (lines and corrections).
const STATE: &str = "order_summary_state";

/// A row of `order_summary` (contract §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderSummary {
    /// The order.
    pub order_id: String,
    /// Who ordered.
    pub customer_id: String,
    /// Status name: `pending`, `confirmed`, `ready_to_ship`, `shipped` or `cancelled`.
    pub status: String,
    /// Number of order lines.
    pub item_count: usize,
    /// Current total.
    pub total: Money,
    /// Set when shipped.
    pub tracking_number: Option<String>,
    /// Set when shipped.
    pub carrier: Option<String>,
    /// When created (RFC 3339).
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    /// When confirmed (RFC 3339).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub confirmed_at: Option<Timestamp>,
    /// When shipped (RFC 3339).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub shipped_at: Option<Timestamp>,
    /// Time of the last event (RFC 3339).
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub updated_at: Timestamp,
    /// Version of the last event.
    pub version: u64,
}

/// Builds `order_summary`.
pub struct OrderSummaryProjection;

impl Projection for OrderSummaryProjection {
    fn name(&self) -> &'static str {
        "order_summary"
    }

    fn tables(&self) -> Vec<TableSpec> {
        vec![
            TableSpec { name: TABLE, indexed: &["status", "customer_id"] },
            TableSpec { name: STATE, indexed: &[] },
        ]
    }

    fn event_types(&self) -> Vec<&'static str> {
        OrderEvent::EVENT_TYPES.to_vec()
    }

    fn apply(&self, e: &RecordedEvent, txn: &mut dyn DocTxn) -> Result<(), ReadModelError> {
        self.apply_batch(std::slice::from_ref(e), txn)
    }

    /// Loads each touched order once, folds all its events of the batch, saves it once.
    fn apply_batch(
        &self,
        events: &[RecordedEvent],
        txn: &mut dyn DocTxn,
    ) -> Result<(), ReadModelError> {
        let mut touched: HashMap<&str, (Order, Option<OrderSummary>)> = HashMap::new();
        let mut order_of_first_touch = Vec::new();
        for e in events {
            let event: OrderEvent = decode(e)?;
            let id = e.aggregate_id.as_str();
            if !touched.contains_key(id) {
                let order: Order = txn.load(STATE, id)?.unwrap_or_default();
                let row = txn.load::<OrderSummary>(TABLE, id)?;
                touched.insert(id, (order, row));
                order_of_first_touch.push(id);
            }
            let (order, row) = touched.get_mut(id).expect("inserted above");
            // The order's state is the aggregate's own fold: the summary can never disagree
            // with the write side about totals or lines.
            order.apply(&event);
            let row = row.get_or_insert_with(|| OrderSummary {
                order_id: id.to_owned(),
                customer_id: order.customer_id.clone(),
                status: String::new(),
                item_count: 0,
                total: Money::ZERO,
                tracking_number: None,
                carrier: None,
                created_at: e.timestamp,
                confirmed_at: None,
                shipped_at: None,
                updated_at: e.timestamp,
                version: 0,
            });
            match &event {
                OrderEvent::OrderConfirmed(_) => row.confirmed_at = Some(e.timestamp),
                OrderEvent::OrderShipped(s) => {
                    row.shipped_at = Some(e.timestamp);
                    row.tracking_number = Some(s.tracking_number.clone());
                    row.carrier = Some(s.carrier.clone());
                }
                _ => {}
            }
            order.status.as_str().clone_into(&mut row.status);
            row.customer_id.clone_from(&order.customer_id);
            row.item_count = order.items.len();
            row.total = order.checked_total().ok_or_else(|| {
                ReadModelError::Handler(format!("the total of {id} cannot be represented"))
            })?;
            row.updated_at = e.timestamp;
            row.version = e.version;
        }
        for id in order_of_first_touch {
            let (order, row) = &touched[id];
            txn.save(STATE, id, order)?;
            if let Some(row) = row {
                txn.save(TABLE, id, row)?;
            }
        }
        Ok(())
    }
}
