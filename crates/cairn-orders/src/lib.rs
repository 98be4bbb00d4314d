//! The reference bounded context (the seed's Order Management, `docs/seed.md`), built
//! only from what a user of Cairn would use: the `Aggregate` trait, projections and a
//! process manager.
//!
//! This crate depends on no database driver and no HTTP crate.

pub mod customer;
pub mod fulfillment;
pub mod integration;
pub mod inventory;
pub mod money;
pub mod order;
pub mod projections;
pub mod rules;
pub mod schemas;

use std::sync::Arc;

use cairn_cqrs::Aggregate;
use cairn_cqrs::aggregate::{DecodeError, DomainEvent};
use cairn_cqrs::projection::Projection;

pub use customer::Customer;
pub use inventory::Inventory;
pub use money::Money;
pub use order::Order;

/// Every projection of the domain.
#[must_use]
pub fn projections() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(projections::order_summary::OrderSummaryProjection),
        Arc::new(projections::shipped_orders::ShippedOrdersProjection),
        Arc::new(projections::inventory_view::InventoryViewProjection),
        Arc::new(projections::customer_view::CustomerViewProjection),
    ]
}

/// Checks an event appended through the generic store API to a domain aggregate's
/// stream: the aggregate must know the type and the data must decode. `Ok(false)` when
/// the aggregate type is not one of this domain's (nothing to check).
pub fn check_domain_event(
    aggregate_type: &str,
    event_type: &str,
    data: &str,
) -> Result<bool, DecodeError> {
    match aggregate_type {
        Order::TYPE => order::OrderEvent::from_json(event_type, data).map(|_| true),
        Inventory::TYPE => inventory::InventoryEvent::from_json(event_type, data).map(|_| true),
        Customer::TYPE => customer::CustomerEvent::from_json(event_type, data).map(|_| true),
        _ => Ok(false),
    }
}
