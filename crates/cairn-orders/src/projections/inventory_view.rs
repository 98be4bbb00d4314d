//! `inventory_view`: stock per product.

use cairn_core::RecordedEvent;
use cairn_core::readmodel::{DocTxn, DocTxnExt, ReadModelError, TableSpec};
use cairn_cqrs::DomainEvent;
use cairn_cqrs::projection::Projection;
use serde::{Deserialize, Serialize};

use crate::inventory::InventoryEvent;
use cairn_cqrs::projection::decode;

/// The query table.
pub const TABLE: &str = "inventory_view";

/// A row of `inventory_view` (contract §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = InventoryView))]
pub struct InventoryRow {
    /// The product.
    pub product_id: String,
    /// Units in the warehouse.
    pub on_hand: i64,
    /// Units promised to orders.
    pub reserved: i64,
    /// `on_hand - reserved`.
    pub available: i64,
    /// Version of the last event.
    pub version: u64,
}

/// Builds `inventory_view`.
pub struct InventoryViewProjection;

impl Projection for InventoryViewProjection {
    fn name(&self) -> &'static str {
        "inventory_view"
    }

    fn tables(&self) -> Vec<TableSpec> {
        vec![TableSpec { name: TABLE, indexed: &[] }]
    }

    fn event_types(&self) -> Vec<&'static str> {
        InventoryEvent::EVENT_TYPES.to_vec()
    }

    fn apply(&self, e: &RecordedEvent, txn: &mut dyn DocTxn) -> Result<(), ReadModelError> {
        let event: InventoryEvent = decode(e)?;
        let id = e.aggregate_id.as_str();
        let mut row = txn.load::<InventoryRow>(TABLE, id)?.unwrap_or(InventoryRow {
            product_id: id.to_owned(),
            on_hand: 0,
            reserved: 0,
            available: 0,
            version: 0,
        });
        match event {
            InventoryEvent::StockAdded(s) => row.on_hand = row.on_hand.saturating_add(s.quantity),
            InventoryEvent::StockReserved(s) => {
                row.reserved = row.reserved.saturating_add(s.quantity);
            }
            InventoryEvent::StockReleased(s) => {
                row.reserved = row.reserved.saturating_sub(s.quantity);
            }
            InventoryEvent::StockShipped(s) => {
                row.reserved = row.reserved.saturating_sub(s.quantity);
                row.on_hand = row.on_hand.saturating_sub(s.quantity);
            }
            InventoryEvent::StockDepleted(_) => {}
        }
        row.available = row.on_hand.saturating_sub(row.reserved);
        row.version = e.version;
        txn.save(TABLE, id, &row)
    }
}
