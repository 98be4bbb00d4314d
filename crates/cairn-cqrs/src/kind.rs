//! One aggregate type, type-erased, so that a server can hold a list of them and serve
//! any registered aggregate by its type name (store API checks, state routes, console).

use cairn_core::timestamp::Timestamp;
use futures_util::future::BoxFuture;
use serde_json::value::RawValue;

use crate::aggregate::{Aggregate, DecodeError, DomainEvent};
use crate::repository::{self, CommandError, Repository, SnapshotNow, Until};

/// `A::load_until` rendered as a [`StateAt`], behind a plain function pointer.
type LoadState =
    for<'a> fn(&'a Repository, &'a str, Until) -> BoxFuture<'a, Result<StateAt, CommandError>>;

/// An aggregate's state at some point of its stream, rendered for people.
#[derive(Debug)]
pub struct StateAt {
    /// Version of the last event applied (0: the aggregate has no events up to there).
    pub version: u64,
    /// Timestamp of the last event applied (`None` at version 0).
    pub timestamp: Option<Timestamp>,
    /// The state from [`Aggregate::state_json`]; `None` when the aggregate renders none.
    pub state: Option<Box<RawValue>>,
}

/// One aggregate type with its generics erased: plain data and function pointers, so it
/// is cheap to copy and needs no `dyn` trait (the `Aggregate` trait is not object-safe).
#[derive(Clone, Copy)]
pub struct AggregateKind {
    type_name: &'static str,
    event_types: &'static [&'static str],
    schema_version: fn(&str) -> u32,
    check_event: fn(&str, &str) -> Result<(), DecodeError>,
    load_state: LoadState,
    snapshot_now: SnapshotNow,
}

impl std::fmt::Debug for AggregateKind {
    // By hand: the function pointers say nothing useful.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregateKind")
            .field("type_name", &self.type_name)
            .field("event_types", &self.event_types)
            .finish_non_exhaustive()
    }
}

impl AggregateKind {
    /// The kind of `A`.
    #[must_use]
    pub fn of<A: Aggregate>() -> Self {
        Self {
            type_name: A::TYPE,
            event_types: <A::Event as DomainEvent>::EVENT_TYPES,
            schema_version: <A::Event as DomainEvent>::schema_version,
            check_event: |event_type, data| {
                <A::Event as DomainEvent>::from_json(event_type, data).map(|_| ())
            },
            load_state: load_state_of::<A>,
            snapshot_now: repository::snapshot_of::<A>,
        }
    }

    /// The aggregate type name stored with its events (`Order`).
    #[must_use]
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    /// Every event type it knows.
    #[must_use]
    pub fn event_types(&self) -> &'static [&'static str] {
        self.event_types
    }

    /// The current schema version of one of its event types (what it decodes today).
    #[must_use]
    pub fn schema_version(&self, event_type: &str) -> u32 {
        (self.schema_version)(event_type)
    }

    /// Checks an event appended from outside (the generic store API): the aggregate knows
    /// the type and `data` decodes as its current schema version.
    pub fn check_event(&self, event_type: &str, data: &str) -> Result<(), DecodeError> {
        (self.check_event)(event_type, data)
    }

    /// The state of aggregate `id` up to `until`, through the repository (snapshots
    /// included), rendered with [`Aggregate::state_json`].
    pub async fn load_state(
        &self,
        repo: &Repository,
        id: &str,
        until: Until,
    ) -> Result<StateAt, CommandError> {
        (self.load_state)(repo, id, until).await
    }
}

impl AggregateKind {
    /// After an append to aggregate `id` of this type from outside the command path (the
    /// store API): [`Repository::snapshot_after_append`].
    pub fn snapshot_after_append(
        &self,
        repo: &Repository,
        id: &str,
        first_version: u64,
        last_version: u64,
    ) {
        repo.snapshot_after_append(id, first_version, last_version, self.snapshot_now);
    }
}

fn load_state_of<'a, A: Aggregate>(
    repo: &'a Repository,
    id: &'a str,
    until: Until,
) -> BoxFuture<'a, Result<StateAt, CommandError>> {
    Box::pin(async move {
        let loaded = repo.load_until::<A>(id, until).await?;
        Ok(StateAt {
            version: loaded.version,
            timestamp: loaded.timestamp,
            state: loaded.state.state_json(),
        })
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use cairn_core::MemoryEventStore;
    use serde::{Deserialize, Serialize};

    use super::AggregateKind;
    use crate::aggregate::{Aggregate, DecodeError, DomainError, Existence};
    use crate::repository::{CommandOptions, Repository, Until};

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Deposited {
        pub cents: i64,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Closed {}

    #[derive(Debug, Clone)]
    pub enum PurseEvent {
        Deposited(Deposited),
        Closed(Closed),
    }

    /// `Deposited` v1 was `{"amount": <cents>}`; v2 renamed it to `cents`.
    mod history {
        use crate::aggregate::DecodeError;

        pub fn schema_version(event_type: &str) -> u32 {
            if event_type == "Deposited" { 2 } else { 1 }
        }

        // The signature `domain_events!` calls, though this upcaster never fails.
        #[allow(clippy::unnecessary_wraps)]
        pub fn upcast(
            _event_type: &str,
            _version: u32,
            mut data: serde_json::Value,
        ) -> Result<serde_json::Value, DecodeError> {
            if let Some(amount) = data.as_object_mut().and_then(|o| o.remove("amount")) {
                data["cents"] = amount;
            }
            Ok(data)
        }
    }

    crate::domain_events!(PurseEvent { Deposited, Closed } upcast: history);

    #[derive(Default, Serialize, Deserialize)]
    struct Purse {
        cents: i64,
        closed: bool,
    }

    impl Aggregate for Purse {
        const TYPE: &'static str = "Purse";
        type Event = PurseEvent;
        type Command = Option<i64>;

        fn apply(&mut self, event: &PurseEvent) {
            match event {
                PurseEvent::Deposited(d) => self.cents += d.cents,
                PurseEvent::Closed(_) => self.closed = true,
            }
        }

        fn handle(&self, command: &Option<i64>) -> Result<Vec<PurseEvent>, DomainError> {
            Ok(vec![match command {
                Some(cents) => PurseEvent::Deposited(Deposited { cents: *cents }),
                None => PurseEvent::Closed(Closed {}),
            }])
        }

        fn existence(_: &Option<i64>) -> Existence {
            Existence::Any
        }

        crate::serde_snapshots!();
    }

    #[test]
    fn a_kind_names_its_type_and_events_and_checks_appended_events() {
        let kind = AggregateKind::of::<Purse>();
        assert_eq!(kind.type_name(), "Purse");
        assert_eq!(kind.event_types(), ["Deposited", "Closed"]);
        assert_eq!(kind.check_event("Deposited", r#"{"cents":5}"#), Ok(()));
        assert_eq!(kind.check_event("Closed", "{}"), Ok(()));
        assert_eq!(
            kind.check_event("Withdrawn", "{}"),
            Err(DecodeError::UnknownType("Withdrawn".into()))
        );
        // Appends are checked against the current schema: the v1 shape is refused.
        assert!(matches!(
            kind.check_event("Deposited", r#"{"amount":5}"#),
            Err(DecodeError::Invalid { event_type, .. }) if event_type == "Deposited"
        ));
    }

    #[test]
    fn a_kind_knows_each_event_types_schema_version() {
        let kind = AggregateKind::of::<Purse>();
        assert_eq!(kind.schema_version("Deposited"), 2);
        assert_eq!(kind.schema_version("Closed"), 1);
    }

    #[tokio::test]
    async fn a_kind_loads_the_rendered_state_at_a_version_and_at_the_end() {
        let repo = Repository::new(Arc::new(MemoryEventStore::new()));
        for command in [Some(300), Some(42), None] {
            repo.execute::<Purse>("p-1", &command, &CommandOptions::default()).await.unwrap();
        }
        let kind = AggregateKind::of::<Purse>();
        let at = |until| {
            let (kind, repo) = (kind, &repo);
            async move { kind.load_state(repo, "p-1", until).await.unwrap() }
        };
        let second = at(Until::Version(2)).await;
        assert_eq!(second.version, 2);
        assert!(second.timestamp.is_some());
        assert_eq!(second.state.unwrap().get(), r#"{"cents":342,"closed":false}"#);
        let end = at(Until::End).await;
        assert_eq!(end.version, 3);
        assert_eq!(end.state.unwrap().get(), r#"{"cents":342,"closed":true}"#);
        let none = kind.load_state(&repo, "p-2", Until::End).await.unwrap();
        assert_eq!((none.version, none.timestamp), (0, None), "no such aggregate: version 0");
    }
}
