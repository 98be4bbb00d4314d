//! The read models of the reference domain: flat, denormalized tables, one per query.

pub mod customer_view;
pub mod inventory_view;
pub mod order_summary;
pub mod shipped_orders;
