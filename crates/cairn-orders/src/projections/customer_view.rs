//! `customer_view`: a customer with their order count and lifetime total.
//!
//! `order_count` counts orders the customer created (cancelled ones included: they were
//! placed); `lifetime_total` sums the totals of shipped orders, corrections to a shipped
//! order included.

use cairn_core::RecordedEvent;
use cairn_core::lifecycle::{STREAM_DELETED, STREAM_TOMBSTONED};
use cairn_core::readmodel::{DocTxn, DocTxnExt, ReadModelError, TableSpec};
use cairn_cqrs::DomainEvent;
use cairn_cqrs::projection::Projection;
use serde::{Deserialize, Serialize};

use crate::customer::CustomerEvent;
use crate::money::Money;
use crate::order::OrderEvent;
use cairn_cqrs::projection::decode;

/// The query table.
pub const TABLE: &str = "customer_view";
/// Which customer each order belongs to, and whether it shipped.
const ORDERS: &str = "customer_view_orders";

/// A row of `customer_view` (contract §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = CustomerView))]
pub struct CustomerRow {
    /// The customer.
    pub customer_id: String,
    /// Name (`null` until registered).
    pub name: Option<String>,
    /// E-mail (`null` until registered).
    pub email: Option<String>,
    /// Orders created.
    pub order_count: u64,
    /// Sum of shipped orders' totals.
    pub lifetime_total: Money,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderOwner {
    customer_id: String,
    shipped: bool,
}

/// Builds `customer_view`.
pub struct CustomerViewProjection;

fn row_of(txn: &mut dyn DocTxn, customer_id: &str) -> Result<CustomerRow, ReadModelError> {
    Ok(txn.load(TABLE, customer_id)?.unwrap_or(CustomerRow {
        customer_id: customer_id.to_owned(),
        name: None,
        email: None,
        order_count: 0,
        lifetime_total: Money::ZERO,
    }))
}

impl Projection for CustomerViewProjection {
    fn name(&self) -> &'static str {
        "customer_view"
    }

    fn tables(&self) -> Vec<TableSpec> {
        vec![TableSpec { name: TABLE, indexed: &[] }, TableSpec { name: ORDERS, indexed: &[] }]
    }

    fn event_types(&self) -> Vec<&'static str> {
        let mut types = CustomerEvent::EVENT_TYPES.to_vec();
        types.extend(["OrderCreated", "OrderShipped", "OrderTotalCorrected"]);
        // A deleted customer's row goes with it (contract §2, "Stream lifecycle").
        types.extend([STREAM_DELETED, STREAM_TOMBSTONED]);
        types
    }

    fn apply(&self, e: &RecordedEvent, txn: &mut dyn DocTxn) -> Result<(), ReadModelError> {
        let id = e.aggregate_id.as_str();
        if matches!(e.event_type.as_str(), STREAM_DELETED | STREAM_TOMBSTONED) {
            // An order's deletion leaves its customer's counts as they were: they count
            // what the customer did, not what the log still shows.
            if e.aggregate_type == <crate::customer::Customer as cairn_cqrs::Aggregate>::TYPE {
                txn.delete(TABLE, id)?;
            }
            return Ok(());
        }
        if e.aggregate_type == <crate::customer::Customer as cairn_cqrs::Aggregate>::TYPE {
            let mut row = row_of(txn, id)?;
            match decode::<CustomerEvent>(e)? {
                CustomerEvent::CustomerRegistered(r) => {
                    row.name = Some(r.name);
                    row.email = Some(r.email);
                }
                CustomerEvent::CustomerEmailChanged(c) => row.email = Some(c.email),
            }
            return txn.save(TABLE, id, &row);
        }
        match decode::<OrderEvent>(e)? {
            OrderEvent::OrderCreated(c) => {
                let mut row = row_of(txn, &c.customer_id)?;
                row.order_count += 1;
                txn.save(
                    ORDERS,
                    id,
                    &OrderOwner { customer_id: c.customer_id.clone(), shipped: false },
                )?;
                txn.save(TABLE, &c.customer_id, &row)
            }
            OrderEvent::OrderShipped(s) => {
                let Some(mut owner) = txn.load::<OrderOwner>(ORDERS, id)? else { return Ok(()) };
                let mut row = row_of(txn, &owner.customer_id)?;
                row.lifetime_total = row.lifetime_total.checked_add(s.total).ok_or_else(|| {
                    ReadModelError::Handler(format!(
                        "the lifetime total of {} cannot be represented",
                        owner.customer_id
                    ))
                })?;
                owner.shipped = true;
                txn.save(ORDERS, id, &owner)?;
                txn.save(TABLE, &owner.customer_id, &row)
            }
            OrderEvent::OrderTotalCorrected(c) => {
                let Some(owner) = txn.load::<OrderOwner>(ORDERS, id)? else { return Ok(()) };
                if !owner.shipped {
                    return Ok(());
                }
                let mut row = row_of(txn, &owner.customer_id)?;
                row.lifetime_total = c
                    .corrected_total
                    .checked_sub(c.previous_total)
                    .and_then(|delta| row.lifetime_total.checked_add(delta))
                    .ok_or_else(|| {
                        ReadModelError::Handler(format!(
                            "the lifetime total of {} cannot be represented",
                            owner.customer_id
                        ))
                    })?;
                txn.save(TABLE, &owner.customer_id, &row)
            }
            _ => Ok(()),
        }
    }
}
