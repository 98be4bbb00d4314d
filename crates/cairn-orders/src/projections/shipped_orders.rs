//! `shipped_orders_view`: shipped orders with the customer's name and e-mail copied in,
//! kept current when the customer changes their e-mail.

use cairn_core::RecordedEvent;
use cairn_core::readmodel::{DocTxn, DocTxnExt, ReadModelError, TableSpec};
use cairn_core::timestamp::Timestamp;
use cairn_cqrs::DomainEvent;
use cairn_cqrs::projection::Projection;
use serde::{Deserialize, Serialize};

use crate::customer::CustomerEvent;
use crate::money::Money;
use crate::order::OrderEvent;
use cairn_cqrs::projection::decode;

/// The query table.
pub const TABLE: &str = "shipped_orders_view";
/// Customers' names and e-mails as last seen.
const CUSTOMERS: &str = "shipped_orders_customers";
/// Which customer each order belongs to.
const OWNERS: &str = "shipped_orders_owners";

/// A row of `shipped_orders_view` (contract §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ShippedOrder {
    /// The order.
    pub order_id: String,
    /// Who ordered (the index that e-mail changes follow).
    pub customer_id: String,
    /// Customer's name.
    pub customer_name: Option<String>,
    /// Customer's e-mail, current.
    pub customer_email: Option<String>,
    /// Number of order lines.
    pub item_count: usize,
    /// Total when shipped (corrections after shipping included).
    pub total: Money,
    /// Tracking number.
    pub tracking_number: String,
    /// Carrier.
    pub carrier: String,
    /// When shipped (RFC 3339).
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub shipped_at: Timestamp,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CustomerInfo {
    name: Option<String>,
    email: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Owner {
    customer_id: String,
}

/// Builds `shipped_orders_view`.
pub struct ShippedOrdersProjection;

impl Projection for ShippedOrdersProjection {
    fn name(&self) -> &'static str {
        "shipped_orders_view"
    }

    fn tables(&self) -> Vec<TableSpec> {
        vec![
            TableSpec { name: TABLE, indexed: &["customer_id"] },
            TableSpec { name: CUSTOMERS, indexed: &[] },
            TableSpec { name: OWNERS, indexed: &[] },
        ]
    }

    fn event_types(&self) -> Vec<&'static str> {
        let mut types = CustomerEvent::EVENT_TYPES.to_vec();
        types.extend(["OrderCreated", "OrderShipped", "OrderTotalCorrected"]);
        types
    }

    fn apply(&self, e: &RecordedEvent, txn: &mut dyn DocTxn) -> Result<(), ReadModelError> {
        let id = e.aggregate_id.as_str();
        if e.aggregate_type == <crate::customer::Customer as cairn_cqrs::Aggregate>::TYPE {
            let mut info: CustomerInfo = txn.load(CUSTOMERS, id)?.unwrap_or_default();
            match decode::<CustomerEvent>(e)? {
                CustomerEvent::CustomerRegistered(r) => {
                    info.name = Some(r.name);
                    info.email = Some(r.email);
                }
                CustomerEvent::CustomerEmailChanged(c) => info.email = Some(c.email),
            }
            txn.save(CUSTOMERS, id, &info)?;
            // Denormalized copies follow the change.
            for (order_id, mut row) in txn.find_as::<ShippedOrder>(TABLE, "customer_id", id)? {
                row.customer_name.clone_from(&info.name);
                row.customer_email.clone_from(&info.email);
                txn.save(TABLE, &order_id, &row)?;
            }
            return Ok(());
        }
        match decode::<OrderEvent>(e)? {
            OrderEvent::OrderCreated(c) => {
                txn.save(OWNERS, id, &Owner { customer_id: c.customer_id })
            }
            OrderEvent::OrderShipped(s) => {
                let customer_id =
                    txn.load::<Owner>(OWNERS, id)?.map(|o| o.customer_id).unwrap_or_default();
                let info: CustomerInfo = txn.load(CUSTOMERS, &customer_id)?.unwrap_or_default();
                let row = ShippedOrder {
                    order_id: id.to_owned(),
                    customer_id,
                    customer_name: info.name,
                    customer_email: info.email,
                    item_count: s.items.len(),
                    total: s.total,
                    tracking_number: s.tracking_number,
                    carrier: s.carrier,
                    shipped_at: e.timestamp,
                };
                txn.save(TABLE, id, &row)
            }
            OrderEvent::OrderTotalCorrected(c) => match txn.load::<ShippedOrder>(TABLE, id)? {
                Some(mut row) => {
                    row.total = c.corrected_total;
                    txn.save(TABLE, id, &row)
                }
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }
}
