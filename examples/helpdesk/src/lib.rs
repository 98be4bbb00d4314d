pub mod board;
pub mod ticket;
pub mod triage;

use std::sync::Arc;

use cairn_server::Module;
use cairn_server::generic::{CommandRoute, NoBody, ReadModelRoute, StateRoute};

use crate::ticket::{Ticket, TicketCommand};

/// Everything the server needs to run and serve the help desk.
pub fn module() -> Module {
    Module::builder("helpdesk")
        .aggregate::<Ticket>()
        .projection(Arc::new(board::Board))
        .process_manager(Arc::new(triage::Triage))
        .route(CommandRoute::<Ticket, _>::create(
            "/tickets",
            "open_ticket",
            "ticket",
            |_| None,
            TicketCommand::Open,
        ))
        .route(CommandRoute::<Ticket, _>::post(
            "/tickets/{aggregate_id}/assign",
            "assign_ticket",
            TicketCommand::Assign,
        ))
        .route(CommandRoute::<Ticket, NoBody>::post_empty(
            "/tickets/{aggregate_id}/close",
            "close_ticket",
            || TicketCommand::Close,
        ))
        .route(
            ReadModelRoute::document("/tickets/{aggregate_id}", board::NAME, board::TABLE)
                .schema::<board::TicketRow>(),
        )
        .route(ReadModelRoute::list("/tickets", board::NAME, board::TABLE, &["status", "assignee"]))
        .route(StateRoute::<Ticket>::new("/tickets/{aggregate_id}/state"))
        .build()
}
