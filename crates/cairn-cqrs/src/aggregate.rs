//! What a user implements for each aggregate: its events, its state and its decisions.

use serde_json::value::RawValue;
use thiserror::Error;

/// A business rule refused the command (contract: `422 rule_violation`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct DomainError {
    /// Human text naming the rule.
    pub message: String,
}

impl DomainError {
    /// A rule violation with this message.
    pub fn rule(message: impl Into<String>) -> Self {
        Self { message: message.into() }
    }
}

/// Why stored event data could not become a domain event.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The aggregate has no event of this type.
    #[error("unknown event type {0:?} for this aggregate")]
    UnknownType(String),
    /// The data does not deserialize into the event.
    #[error("event {event_type} does not match its schema: {message}")]
    Invalid {
        /// The event type.
        event_type: String,
        /// The deserializer's message (with the field path where it has one).
        message: String,
    },
}

/// The events of one aggregate type: usually an enum with one variant per event struct,
/// written with [`domain_events!`](crate::domain_events).
pub trait DomainEvent: Sized + Send + Sync + Clone + std::fmt::Debug + 'static {
    /// Every event type name this aggregate knows.
    const EVENT_TYPES: &'static [&'static str];
    /// This event's type name (past tense, e.g. `OrderCreated`).
    fn event_type(&self) -> &'static str;
    /// The event's payload as JSON.
    fn to_json(&self) -> Box<RawValue>;
    /// Decodes stored data of the given type (in its current schema version).
    fn from_json(event_type: &str, data: &str) -> Result<Self, DecodeError>;

    /// The current schema version of an event type (what `from_json` reads).
    #[must_use]
    fn schema_version(_event_type: &str) -> u32 {
        1
    }

    /// Upcasts data written under schema `version` of `event_type` to `version + 1`.
    /// Called repeatedly until the current version; the default knows no older versions.
    fn upcast(
        event_type: &str,
        version: u32,
        _data: serde_json::Value,
    ) -> Result<serde_json::Value, DecodeError> {
        Err(DecodeError::Invalid {
            event_type: event_type.to_owned(),
            message: format!("no upcaster from schema version {version}"),
        })
    }

    /// Decodes a stored event as every domain read path sees it: upcast from the schema
    /// version in its metadata (absent = 1) to the current one, then decoded.
    fn from_recorded(e: &cairn_core::RecordedEvent) -> Result<Self, DecodeError> {
        let stored = serde_json::from_str::<serde_json::Value>(e.metadata.get())
            .ok()
            .and_then(|m| m.get("schema_version").and_then(serde_json::Value::as_u64))
            .map_or(1, |v| u32::try_from(v).unwrap_or(u32::MAX));
        let current = Self::schema_version(&e.event_type);
        if stored >= current {
            return Self::from_json(&e.event_type, e.data.get());
        }
        let invalid = |err: serde_json::Error| DecodeError::Invalid {
            event_type: e.event_type.clone(),
            message: err.to_string(),
        };
        let mut data: serde_json::Value = serde_json::from_str(e.data.get()).map_err(invalid)?;
        for version in stored..current {
            data = Self::upcast(&e.event_type, version, data)?;
        }
        Self::from_json(&e.event_type, &data.to_string())
    }
}

/// Whether a command needs its aggregate to exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existence {
    /// Creates the aggregate: refused when it exists (`409`).
    MustNotExist,
    /// Changes an existing aggregate: `404` when it does not exist.
    MustExist,
    /// Either (e.g. restocking a product for the first time).
    Any,
}

/// A consistency boundary: state rebuilt from its events, and the decisions it makes.
///
/// `apply` is pure and total (it never fails: an event is a fact); `handle` decides and
/// never does I/O.
pub trait Aggregate: Default + Send + Sync + 'static {
    /// The aggregate type name stored with every event (`Order`).
    const TYPE: &'static str;
    /// Its events.
    type Event: DomainEvent;
    /// Its commands.
    type Command: Send + Sync;
    /// Folds one event into the state.
    fn apply(&mut self, event: &Self::Event);
    /// Folds `events` in order, exactly as [`Aggregate::apply`] one by one would. Loads
    /// fold a stream a page at a time through it, so an aggregate whose `apply` costs more
    /// as it grows (a search in a growing list) can fold a long run in one pass.
    fn apply_all(&mut self, events: &[Self::Event]) {
        for event in events {
            self.apply(event);
        }
    }
    /// Decides which events a command causes, or refuses it.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, DomainError>;
    /// Whether `command` creates the aggregate, changes it, or either.
    fn existence(command: &Self::Command) -> Existence;

    /// Version of the state's shape. Change it whenever the state's fields change: older
    /// snapshots are then ignored and rebuilt from events, never read into the new shape.
    const SNAPSHOT_VERSION: u32 = 1;

    /// The state as a snapshot; `None` (the default) means never snapshot this aggregate.
    fn to_snapshot(&self) -> Option<String> {
        None
    }

    /// The state back from [`Aggregate::to_snapshot`]'s output; `None` if it cannot be read.
    #[must_use]
    fn from_snapshot(_json: &str) -> Option<Self> {
        None
    }

    /// The state as a JSON object for people (state routes, the console); `None`: it
    /// cannot be rendered. The default is the snapshot, which is what a serde aggregate
    /// would print anyway; override it to show derived fields or hide internal ones.
    fn state_json(&self) -> Option<Box<RawValue>> {
        self.to_snapshot().and_then(|s| RawValue::from_string(s).ok())
    }
}

/// Implements the snapshot methods of [`Aggregate`] with serde (inside the `impl` block):
/// `cairn_cqrs::serde_snapshots!();`
#[macro_export]
macro_rules! serde_snapshots {
    () => {
        fn to_snapshot(&self) -> Option<String> {
            ::serde_json::to_string(self).ok()
        }

        fn from_snapshot(json: &str) -> Option<Self> {
            ::serde_json::from_str(json).ok()
        }
    };
}

/// Implements [`DomainEvent`] for an enum whose variants wrap structs of the same name:
///
/// ```text
/// cairn_cqrs::domain_events!(OrderEvent { OrderCreated, ItemAdded });
/// ```
#[macro_export]
macro_rules! domain_events {
    ($enum:ident { $($variant:ident),+ $(,)? }) => {
        $crate::domain_events!(@impl $enum { $($variant),+ } {});
    };
    // With a schema history: `$history` is a module with `schema_version(&str) -> u32`
    // and `upcast(&str, u32, Value) -> Result<Value, DecodeError>`.
    ($enum:ident { $($variant:ident),+ $(,)? } upcast: $history:ident) => {
        $crate::domain_events!(@impl $enum { $($variant),+ } {
            fn schema_version(event_type: &str) -> u32 {
                $history::schema_version(event_type)
            }

            fn upcast(
                event_type: &str,
                version: u32,
                data: ::serde_json::Value,
            ) -> Result<::serde_json::Value, $crate::aggregate::DecodeError> {
                $history::upcast(event_type, version, data)
            }
        });
    };
    (@impl $enum:ident { $($variant:ident),+ } { $($extra:tt)* }) => {
        impl $crate::aggregate::DomainEvent for $enum {
            const EVENT_TYPES: &'static [&'static str] = &[$(stringify!($variant)),+];

            fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => stringify!($variant),)+
                }
            }

            fn to_json(&self) -> Box<::serde_json::value::RawValue> {
                let json = match self {
                    $(Self::$variant(e) => ::serde_json::value::to_raw_value(e),)+
                };
                // Serializing plain structs of strings and numbers cannot fail.
                json.unwrap_or_default()
            }

            fn from_json(event_type: &str, data: &str) -> Result<Self, $crate::aggregate::DecodeError> {
                let invalid = |e: ::serde_json::Error| $crate::aggregate::DecodeError::Invalid {
                    event_type: event_type.to_owned(),
                    message: e.to_string(),
                };
                match event_type {
                    $(stringify!($variant) => ::serde_json::from_str(data).map(Self::$variant).map_err(invalid),)+
                    other => Err($crate::aggregate::DecodeError::UnknownType(other.to_owned())),
                }
            }
                    $($extra)*
        }
    };
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::{Aggregate, DomainError, Existence};

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Added {
        n: i64,
    }

    #[derive(Debug, Clone)]
    pub enum TallyEvent {
        Added(Added),
    }

    crate::domain_events!(TallyEvent { Added });

    /// Snapshots with serde, so it renders its state by default.
    #[derive(Default, Serialize, Deserialize)]
    struct Tally {
        total: i64,
    }

    impl Aggregate for Tally {
        const TYPE: &'static str = "Tally";
        type Event = TallyEvent;
        type Command = i64;

        fn apply(&mut self, TallyEvent::Added(e): &TallyEvent) {
            self.total += e.n;
        }

        fn handle(&self, n: &i64) -> Result<Vec<TallyEvent>, DomainError> {
            Ok(vec![TallyEvent::Added(Added { n: *n })])
        }

        fn existence(_: &i64) -> Existence {
            Existence::Any
        }

        crate::serde_snapshots!();
    }

    /// Never snapshots, so by default it has nothing to render.
    #[derive(Default)]
    struct Opaque;

    impl Aggregate for Opaque {
        const TYPE: &'static str = "Opaque";
        type Event = TallyEvent;
        type Command = ();

        fn apply(&mut self, _: &TallyEvent) {}

        fn handle(&self, (): &()) -> Result<Vec<TallyEvent>, DomainError> {
            Ok(Vec::new())
        }

        fn existence((): &()) -> Existence {
            Existence::Any
        }
    }

    #[test]
    fn state_json_defaults_to_the_snapshot_and_to_none_without_one() {
        let mut tally = Tally::default();
        for event in tally.handle(&41).unwrap().into_iter().chain(tally.handle(&1).unwrap()) {
            tally.apply(&event);
        }
        assert_eq!(
            tally.state_json().map(|j| j.get().to_owned()).as_deref(),
            Some(r#"{"total":42}"#)
        );
        assert!(Opaque.state_json().is_none());
    }
}
