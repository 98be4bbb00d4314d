//! The Inventory aggregate (one per product): stock on hand and reservations per order.

use std::collections::BTreeMap;

use cairn_cqrs::{Aggregate, DomainError, Existence};
use serde::{Deserialize, Serialize};

use crate::rules::{QUANTITY_MAX, check_id, check_quantity};

/// `StockAdded`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockAdded {
    /// How many arrived.
    pub quantity: i64,
}

/// `StockReserved` for an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReserved {
    /// The order.
    pub order_id: String,
    /// How many.
    pub quantity: i64,
}

/// `StockReleased`: a reservation given back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReleased {
    /// The order.
    pub order_id: String,
    /// How many.
    pub quantity: i64,
}

/// `StockShipped`: reserved stock leaves (on hand and reserved both fall).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockShipped {
    /// The order.
    pub order_id: String,
    /// How many.
    pub quantity: i64,
}

/// `StockDepleted`: available reached 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StockDepleted {}

/// Every event of an inventory item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventoryEvent {
    /// See [`StockAdded`].
    StockAdded(StockAdded),
    /// See [`StockReserved`].
    StockReserved(StockReserved),
    /// See [`StockReleased`].
    StockReleased(StockReleased),
    /// See [`StockShipped`].
    StockShipped(StockShipped),
    /// See [`StockDepleted`].
    StockDepleted(StockDepleted),
}

cairn_cqrs::domain_events!(InventoryEvent {
    StockAdded,
    StockReserved,
    StockReleased,
    StockShipped,
    StockDepleted
});

/// What can be asked of an inventory item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventoryCommand {
    /// Add stock (creates the item the first time).
    Restock {
        /// How many.
        quantity: i64,
    },
    /// Reserve for an order; refused when more than is available.
    Reserve {
        /// The order.
        order_id: String,
        /// How many.
        quantity: i64,
    },
    /// Give an order's reservation back.
    Release {
        /// The order.
        order_id: String,
    },
    /// Ship an order's reservation.
    Ship {
        /// The order.
        order_id: String,
    },
}

/// The state of one product's stock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Units in the warehouse (reserved ones included).
    pub on_hand: i64,
    /// Units promised to orders.
    pub reserved: i64,
    /// Reservations by order.
    pub reservations: BTreeMap<String, i64>,
}

impl Inventory {
    /// `on_hand - reserved`.
    #[must_use]
    pub fn available(&self) -> i64 {
        self.on_hand.saturating_sub(self.reserved)
    }
}

impl Aggregate for Inventory {
    const TYPE: &'static str = "Inventory";
    type Event = InventoryEvent;
    type Command = InventoryCommand;

    fn apply(&mut self, event: &InventoryEvent) {
        match event {
            InventoryEvent::StockAdded(e) => self.on_hand = self.on_hand.saturating_add(e.quantity),
            InventoryEvent::StockReserved(e) => {
                self.reserved = self.reserved.saturating_add(e.quantity);
                let reserved = self.reservations.entry(e.order_id.clone()).or_default();
                *reserved = reserved.saturating_add(e.quantity);
            }
            InventoryEvent::StockReleased(e) => {
                self.reserved = self.reserved.saturating_sub(e.quantity);
                self.reservations.remove(&e.order_id);
            }
            InventoryEvent::StockShipped(e) => {
                self.reserved = self.reserved.saturating_sub(e.quantity);
                self.on_hand = self.on_hand.saturating_sub(e.quantity);
                self.reservations.remove(&e.order_id);
            }
            InventoryEvent::StockDepleted(_) => {}
        }
    }

    fn handle(&self, command: &InventoryCommand) -> Result<Vec<InventoryEvent>, DomainError> {
        match command {
            InventoryCommand::Restock { quantity } => {
                check_quantity(*quantity)?;
                if self.on_hand > i64::MAX / 4 - QUANTITY_MAX {
                    return Err(DomainError::rule(
                        "stock on hand would exceed what can be counted",
                    ));
                }
                Ok(vec![InventoryEvent::StockAdded(StockAdded { quantity: *quantity })])
            }
            InventoryCommand::Reserve { order_id, quantity } => {
                check_id("order_id", order_id)?;
                check_quantity(*quantity)?;
                if self.reservations.contains_key(order_id) {
                    return Err(DomainError::rule(format!(
                        "stock is already reserved for {order_id}"
                    )));
                }
                if *quantity > self.available() {
                    return Err(DomainError::rule(format!(
                        "insufficient stock: {quantity} requested, {} available",
                        self.available()
                    )));
                }
                let mut events = vec![InventoryEvent::StockReserved(StockReserved {
                    order_id: order_id.clone(),
                    quantity: *quantity,
                })];
                if self.available() == *quantity {
                    events.push(InventoryEvent::StockDepleted(StockDepleted {}));
                }
                Ok(events)
            }
            InventoryCommand::Release { order_id } => {
                let quantity = *self.reservations.get(order_id).ok_or_else(|| {
                    DomainError::rule(format!("no stock is reserved for {order_id}"))
                })?;
                Ok(vec![InventoryEvent::StockReleased(StockReleased {
                    order_id: order_id.clone(),
                    quantity,
                })])
            }
            InventoryCommand::Ship { order_id } => {
                let quantity = *self.reservations.get(order_id).ok_or_else(|| {
                    DomainError::rule(format!("no stock is reserved for {order_id}"))
                })?;
                Ok(vec![InventoryEvent::StockShipped(StockShipped {
                    order_id: order_id.clone(),
                    quantity,
                })])
            }
        }
    }

    cairn_cqrs::serde_snapshots!();

    fn existence(command: &InventoryCommand) -> Existence {
        match command {
            InventoryCommand::Restock { .. } => Existence::Any,
            _ => Existence::MustExist,
        }
    }
}
