//! The read models of the reference domain: flat, denormalized tables, one per query.

pub mod customer_view;
pub mod inventory_view;
pub mod order_summary;
pub mod shipped_orders;

use cairn_core::RecordedEvent;
use cairn_core::readmodel::ReadModelError;
use cairn_cqrs::DomainEvent;

/// Decodes a stored event into the domain event it is.
pub(crate) fn decode<E: DomainEvent>(e: &RecordedEvent) -> Result<E, ReadModelError> {
    E::from_recorded(e).map_err(|err| ReadModelError::Handler(err.to_string()))
}
