//! The `triage` process manager: every new ticket is assigned to the triage queue.

use async_trait::async_trait;
use cairn_core::RecordedEvent;
use cairn_core::readmodel::TableSpec;
use cairn_cqrs::process::{Instances, ProcessContext, ProcessManager};
use serde::{Deserialize, Serialize};

use crate::ticket::{Assign, Ticket, TicketCommand};

pub const TABLE: &str = "triage";

#[derive(Debug, Serialize, Deserialize)]
struct Triaged {
    ticket_id: String,
    status: String,
}

pub struct Triage;

#[async_trait]
impl ProcessManager for Triage {
    fn name(&self) -> &'static str {
        "triage"
    }

    fn tables(&self) -> Vec<TableSpec> {
        vec![TableSpec { name: TABLE, indexed: &["status"] }]
    }

    fn event_types(&self) -> Vec<&'static str> {
        vec!["TicketOpened"]
    }

    // One instance per ticket: its events are handled in order.
    fn instance_key(&self, event: &RecordedEvent) -> Option<String> {
        Some(event.aggregate_id.clone())
    }

    fn instances(&self) -> Instances {
        Instances::table(TABLE).by_status(&["assigned"])
    }

    async fn handle(&self, event: &RecordedEvent, ctx: &ProcessContext) -> Result<(), String> {
        let command = TicketCommand::Assign(Assign { to: "triage".into() });
        // The key derives from the event: a redelivery gets the first outcome, not a second
        // assignment.
        let options = ctx.options_for(event, "assign");
        ctx.execute::<Ticket>(&event.aggregate_id, &command, &options)
            .await
            .map_err(|e| e.to_string())?;
        let triaged = Triaged { ticket_id: event.aggregate_id.clone(), status: "assigned".into() };
        ctx.save(TABLE, &event.aggregate_id, triaged).await
    }
}
