//! The `Ticket` aggregate: its events, its commands and its rules.

use cairn_cqrs::{Aggregate, DomainError, Existence};
use serde::{Deserialize, Serialize};

// Events: facts, stored as JSON under their struct's name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TicketOpened {
    pub title: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TicketAssigned {
    pub to: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TicketClosed {}

#[derive(Debug, Clone)]
pub enum TicketEvent {
    TicketOpened(TicketOpened),
    TicketAssigned(TicketAssigned),
    TicketClosed(TicketClosed),
}

cairn_cqrs::domain_events!(TicketEvent { TicketOpened, TicketAssigned, TicketClosed });

// Command payloads: the JSON bodies of the HTTP routes.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct Open {
    pub title: String,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct Assign {
    pub to: String,
}

#[derive(Debug, Clone)]
pub enum TicketCommand {
    Open(Open),
    Assign(Assign),
    Close,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ticket {
    pub title: String,
    pub assignee: Option<String>,
    pub closed: bool,
}

impl Aggregate for Ticket {
    const TYPE: &'static str = "Ticket";
    type Event = TicketEvent;
    type Command = TicketCommand;

    fn apply(&mut self, event: &TicketEvent) {
        match event {
            TicketEvent::TicketOpened(e) => self.title.clone_from(&e.title),
            TicketEvent::TicketAssigned(e) => self.assignee = Some(e.to.clone()),
            TicketEvent::TicketClosed(_) => self.closed = true,
        }
    }

    fn handle(&self, command: &TicketCommand) -> Result<Vec<TicketEvent>, DomainError> {
        if self.closed {
            return Err(DomainError::rule("the ticket is closed"));
        }
        let event = match command {
            TicketCommand::Open(c) if c.title.trim().is_empty() => {
                return Err(DomainError::rule("a ticket needs a title"));
            }
            TicketCommand::Open(c) => {
                TicketEvent::TicketOpened(TicketOpened { title: c.title.clone() })
            }
            TicketCommand::Assign(c) => {
                TicketEvent::TicketAssigned(TicketAssigned { to: c.to.clone() })
            }
            TicketCommand::Close => TicketEvent::TicketClosed(TicketClosed {}),
        };
        Ok(vec![event])
    }

    fn existence(command: &TicketCommand) -> Existence {
        match command {
            TicketCommand::Open(_) => Existence::MustNotExist,
            _ => Existence::MustExist,
        }
    }

    // Snapshots (and the state route's JSON) through serde.
    cairn_cqrs::serde_snapshots!();
}
