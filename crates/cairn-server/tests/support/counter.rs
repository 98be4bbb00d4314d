//! A small module built only from generic routes: a `Counter` aggregate, a `counts`
//! projection with indexed fields, and an `echo` process manager. It proves that a
//! module needs no handler of its own to get the contract's behaviour.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use cairn_core::RecordedEvent;
use cairn_core::readmodel::{DocTxn, DocTxnExt, ReadModelError, TableSpec};
use cairn_cqrs::process::{Instances, ProcessContext, ProcessManager};
use cairn_cqrs::projection::{Projection, decode};
use cairn_cqrs::{Aggregate, DomainError, DomainEvent, Existence};
use cairn_server::generic::{CommandRoute, EventsRoute, NoBody, ReadModelRoute, StateRoute};
use cairn_server::{Module, SchemaTable};
use serde::{Deserialize, Serialize};

/// The module's name.
pub const NAME: &str = "counters";
/// The projection and its table.
pub const COUNTS: &str = "counts";
/// The process manager and its instance table.
pub const ECHO: &str = "echo";
pub const ECHO_TABLE: &str = "echo_instances";
/// The label the `counts` projection refuses while its switch is on.
pub const POISON: &str = "poison";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterCreated {
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterAdded {
    pub n: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterReset {}

// The variants are the event type names (`domain_events!`), unique server-wide.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CounterEvent {
    CounterCreated(CounterCreated),
    CounterAdded(CounterAdded),
    CounterReset(CounterReset),
}

cairn_cqrs::domain_events!(CounterEvent { CounterCreated, CounterAdded, CounterReset });

/// The event schemas, one version each.
pub const SCHEMAS: SchemaTable = &[
    (
        "CounterCreated",
        &[
            r#"{"type":"object","required":["label"],"properties":{"label":{"type":"string","minLength":1}}}"#,
        ],
    ),
    (
        "CounterAdded",
        &[
            r#"{"type":"object","required":["n"],"properties":{"n":{"type":"integer","minimum":1}}}"#,
        ],
    ),
    ("CounterReset", &[r#"{"type":"object"}"#]),
];

/// `POST /counters` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Create {
    /// Minted as `ctr-<uuid v7>` when absent.
    pub counter_id: Option<String>,
    /// What it counts.
    pub label: String,
}

/// `POST /counters/{id}/add` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Add {
    /// How much (at least 1).
    pub n: i64,
}

#[derive(Debug)]
pub enum CounterCommand {
    Create(Create),
    Add(Add),
    Reset,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Counter {
    pub label: String,
    pub value: i64,
}

impl Aggregate for Counter {
    const TYPE: &'static str = "Counter";
    type Event = CounterEvent;
    type Command = CounterCommand;

    fn apply(&mut self, event: &CounterEvent) {
        match event {
            CounterEvent::CounterCreated(e) => self.label.clone_from(&e.label),
            CounterEvent::CounterAdded(e) => self.value = self.value.saturating_add(e.n),
            CounterEvent::CounterReset(_) => self.value = 0,
        }
    }

    fn handle(&self, command: &CounterCommand) -> Result<Vec<CounterEvent>, DomainError> {
        match command {
            CounterCommand::Create(c) if c.label.is_empty() => {
                Err(DomainError::rule("a counter needs a label"))
            }
            CounterCommand::Create(c) => {
                Ok(vec![CounterEvent::CounterCreated(CounterCreated { label: c.label.clone() })])
            }
            CounterCommand::Add(Add { n }) if *n < 1 => {
                Err(DomainError::rule(format!("n must be at least 1, got {n}")))
            }
            CounterCommand::Add(Add { n }) if self.value.checked_add(*n).is_none() => {
                Err(DomainError::rule("the counter would overflow"))
            }
            CounterCommand::Add(Add { n }) => {
                Ok(vec![CounterEvent::CounterAdded(CounterAdded { n: *n })])
            }
            CounterCommand::Reset => Ok(vec![CounterEvent::CounterReset(CounterReset {})]),
        }
    }

    fn existence(command: &CounterCommand) -> Existence {
        match command {
            CounterCommand::Create(_) => Existence::MustNotExist,
            CounterCommand::Add(_) | CounterCommand::Reset => Existence::MustExist,
        }
    }

    cairn_cqrs::serde_snapshots!();
}

/// A row of `counts`.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CountRow {
    /// The counter.
    pub counter_id: String,
    /// What it counts.
    pub label: String,
    /// Its value.
    pub value: i64,
    /// `even` or `odd` (indexed).
    pub parity: String,
    /// The counter's version this row reflects.
    pub version: u64,
}

/// Builds `counts`; refuses a counter labelled [`POISON`] while `refuse` is on.
pub struct Counts {
    pub refuse: Arc<AtomicBool>,
}

impl Projection for Counts {
    fn name(&self) -> &'static str {
        COUNTS
    }

    fn tables(&self) -> Vec<TableSpec> {
        vec![TableSpec { name: COUNTS, indexed: &["parity", "label"] }]
    }

    fn event_types(&self) -> Vec<&'static str> {
        CounterEvent::EVENT_TYPES.to_vec()
    }

    fn apply(&self, e: &RecordedEvent, txn: &mut dyn DocTxn) -> Result<(), ReadModelError> {
        let event: CounterEvent = decode(e)?;
        let id = e.aggregate_id.as_str();
        let mut row = txn.load::<CountRow>(COUNTS, id)?.unwrap_or_default();
        id.clone_into(&mut row.counter_id);
        match event {
            CounterEvent::CounterCreated(c) => {
                if c.label == POISON && self.refuse.load(Ordering::SeqCst) {
                    return Err(ReadModelError::Handler("this projection refuses poison".into()));
                }
                row.label = c.label;
            }
            CounterEvent::CounterAdded(a) => row.value = row.value.saturating_add(a.n),
            CounterEvent::CounterReset(_) => row.value = 0,
        }
        let parity = if row.value % 2 == 0 { "even" } else { "odd" };
        parity.clone_into(&mut row.parity);
        row.version = e.version;
        txn.save(COUNTS, id, &row)
    }
}

/// Remembers, per counter, the last event it saw (one instance per counter).
pub struct Echo;

#[async_trait]
impl ProcessManager for Echo {
    fn name(&self) -> &'static str {
        ECHO
    }

    fn tables(&self) -> Vec<TableSpec> {
        vec![TableSpec { name: ECHO_TABLE, indexed: &["status"] }]
    }

    fn event_types(&self) -> Vec<&'static str> {
        CounterEvent::EVENT_TYPES.to_vec()
    }

    fn instance_key(&self, event: &RecordedEvent) -> Option<String> {
        (event.aggregate_type == Counter::TYPE).then(|| event.aggregate_id.clone())
    }

    fn instances(&self) -> Instances {
        Instances::table(ECHO_TABLE).by_status(&["seen", "reset"])
    }

    async fn handle(&self, event: &RecordedEvent, ctx: &ProcessContext) -> Result<(), String> {
        let status = if event.event_type == "CounterReset" { "reset" } else { "seen" };
        let doc = serde_json::json!({ "status": status, "last": event.event_type, "position": event.position });
        ctx.save(ECHO_TABLE, &event.aggregate_id, doc).await
    }
}

/// The module; `refuse` switches the projection's refusal of [`POISON`] on and off.
pub fn module(refuse: Arc<AtomicBool>) -> Module {
    Module::builder(NAME)
        .aggregate::<Counter>()
        .schemas(SCHEMAS)
        .projection(Arc::new(Counts { refuse }))
        .process_manager(Arc::new(Echo))
        .route(
            CommandRoute::<Counter, Create>::create(
                "/counters",
                "create_counter",
                "ctr",
                |b| b.counter_id.clone(),
                CounterCommand::Create,
            )
            .summary("Creates a counter"),
        )
        .route(CommandRoute::<Counter, Add>::post(
            "/counters/{aggregate_id}/add",
            "add_to_counter",
            CounterCommand::Add,
        ))
        .route(CommandRoute::<Counter, NoBody>::post_empty(
            "/counters/{aggregate_id}/reset",
            "reset_counter",
            || CounterCommand::Reset,
        ))
        .route(
            ReadModelRoute::document("/counters/{aggregate_id}", COUNTS, COUNTS)
                .schema::<CountRow>(),
        )
        .route(
            ReadModelRoute::list("/counters", COUNTS, COUNTS, &["parity", "label"])
                .schema::<CountRow>(),
        )
        .route(StateRoute::<Counter>::new("/counters/{aggregate_id}/state"))
        .route(EventsRoute::<Counter>::new("/counters/{aggregate_id}/events"))
        .build()
}

/// The module with the refusal off.
pub fn plain() -> Module {
    module(Arc::new(AtomicBool::new(false)))
}
