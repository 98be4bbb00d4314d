//! `order_summary`: one row per order, filterable by status and customer.

use cairn_core::RecordedEvent;
use std::collections::HashMap;

use cairn_core::lifecycle::{STREAM_DELETED, STREAM_TOMBSTONED};
use cairn_core::readmodel::{DocTxn, DocTxnExt, ReadModelError, TableSpec};
use cairn_core::timestamp::Timestamp;
use cairn_cqrs::DomainEvent;
use cairn_cqrs::projection::Projection;
use serde::{Deserialize, Serialize};

use crate::money::Money;
use crate::order::{Order, OrderEvent};
use cairn_cqrs::projection::decode;

/// One order's events of a batch, decoded, and whether the order was deleted before them
/// (they start it again).
type Run<'a> = (&'a str, Vec<(&'a RecordedEvent, OrderEvent)>, bool);

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
        // A deleted order's summary goes with it (contract §2, "Stream lifecycle").
        let mut types = OrderEvent::EVENT_TYPES.to_vec();
        types.extend([STREAM_DELETED, STREAM_TOMBSTONED]);
        types
    }

    fn apply(&self, e: &RecordedEvent, txn: &mut dyn DocTxn) -> Result<(), ReadModelError> {
        self.apply_batch(std::slice::from_ref(e), txn)
    }

    /// Loads each touched order once, folds all its events of the batch, saves it once.
    ///
    /// Nothing per event depends on the order's size: the events are decoded and grouped
    /// by order, each order's run is folded with [`Order::fold_all`] (linear in the lines
    /// and the events), and what depends on the lines (count, total) is computed once per
    /// order and batch. A long run of events on one big order thus costs per event what a
    /// run spread over many small ones does.
    fn apply_batch(
        &self,
        events: &[RecordedEvent],
        txn: &mut dyn DocTxn,
    ) -> Result<(), ReadModelError> {
        // Per order, in order of first touch: its events of the batch, decoded, and
        // whether the order was deleted before them (they start it again).
        let mut runs: Vec<Run<'_>> = Vec::new();
        let mut run_of: HashMap<&str, usize> = HashMap::new();
        for e in events {
            let id = e.aggregate_id.as_str();
            let run = *run_of.entry(id).or_insert_with(|| {
                runs.push((id, Vec::new(), false));
                runs.len() - 1
            });
            if matches!(e.event_type.as_str(), STREAM_DELETED | STREAM_TOMBSTONED) {
                runs[run].1.clear();
                runs[run].2 = true;
                continue;
            }
            let event: OrderEvent = decode(e)?;
            runs[run].1.push((e, event));
        }
        for (id, run, deleted) in runs {
            if deleted {
                txn.delete(STATE, id)?;
                txn.delete(TABLE, id)?;
                if run.is_empty() {
                    continue;
                }
            }
            let mut order: Order =
                if deleted { Order::default() } else { txn.load(STATE, id)?.unwrap_or_default() };
            let mut row = if deleted { None } else { txn.load::<OrderSummary>(TABLE, id)? };
            // The order's state is the aggregate's own fold: the summary can never
            // disagree with the write side about totals or lines.
            order.fold_all(run.iter().map(|(_, event)| event));
            for (e, event) in &run {
                let row = row.get_or_insert_with(|| OrderSummary {
                    order_id: id.to_owned(),
                    customer_id: String::new(),
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
                match event {
                    OrderEvent::OrderConfirmed(_) => row.confirmed_at = Some(e.timestamp),
                    OrderEvent::OrderShipped(s) => {
                        row.shipped_at = Some(e.timestamp);
                        row.tracking_number = Some(s.tracking_number.clone());
                        row.carrier = Some(s.carrier.clone());
                    }
                    _ => {}
                }
            }
            if let (Some(row), Some((last, _))) = (row.as_mut(), run.last()) {
                order.status.as_str().clone_into(&mut row.status);
                row.customer_id.clone_from(&order.customer_id);
                row.item_count = order.items.len();
                row.total = order.checked_total().ok_or_else(|| {
                    ReadModelError::Handler(format!("the total of {id} cannot be represented"))
                })?;
                row.updated_at = last.timestamp;
                row.version = last.version;
            }
            txn.save(STATE, id, &order)?;
            if let Some(row) = &row {
                txn.save(TABLE, id, row)?;
            }
        }
        Ok(())
    }
}
