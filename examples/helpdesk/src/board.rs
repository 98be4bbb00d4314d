//! The `ticket_board` projection: one document per ticket, listed by status and assignee.

use cairn_core::RecordedEvent;
use cairn_core::readmodel::{DocTxn, DocTxnExt, ReadModelError, TableSpec};
use cairn_cqrs::projection::{Projection, decode};
use cairn_cqrs::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::ticket::{Ticket, TicketEvent};

pub const NAME: &str = "ticket_board";
pub const TABLE: &str = "tickets";

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TicketRow {
    pub ticket_id: String,
    pub title: String,
    pub assignee: Option<String>,
    pub status: String,
}

pub struct Board;

impl Projection for Board {
    fn name(&self) -> &'static str {
        NAME
    }

    fn tables(&self) -> Vec<TableSpec> {
        vec![TableSpec { name: TABLE, indexed: &["status", "assignee"] }]
    }

    fn event_types(&self) -> Vec<&'static str> {
        TicketEvent::EVENT_TYPES.to_vec()
    }

    fn apply(&self, e: &RecordedEvent, txn: &mut dyn DocTxn) -> Result<(), ReadModelError> {
        if e.aggregate_type != Ticket::TYPE {
            return Ok(());
        }
        // Typed and upcast; an event that does not decode goes to the dead letter queue.
        let event: TicketEvent = decode(e)?;
        let mut row = txn.load::<TicketRow>(TABLE, &e.aggregate_id)?.unwrap_or_default();
        row.ticket_id.clone_from(&e.aggregate_id);
        match event {
            TicketEvent::TicketOpened(o) => (row.title, row.status) = (o.title, "open".into()),
            TicketEvent::TicketAssigned(a) => row.assignee = Some(a.to),
            TicketEvent::TicketClosed(_) => row.status = "closed".into(),
        }
        txn.save(TABLE, &e.aggregate_id, &row)
    }
}
