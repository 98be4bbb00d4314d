//! The metadata every event carries about why it was written.

use serde::{Deserialize, Serialize};

/// `correlation_id` ties together everything one request caused (through process
/// managers too); `causation_id` is the command or event that directly caused an event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandMetadata {
    /// The conversation this belongs to.
    pub correlation_id: Option<String>,
    /// The command or event that caused it.
    pub causation_id: Option<String>,
    /// Who asked for it.
    pub user_id: Option<String>,
}

impl CommandMetadata {
    /// Reads the metadata of a stored event (missing fields stay `None`).
    #[must_use]
    pub fn of_event(metadata_json: &str) -> Self {
        serde_json::from_str(metadata_json).unwrap_or_default()
    }

    /// Metadata for a command caused by the event `event_id` whose own metadata is `parent`:
    /// same correlation, caused by that event.
    #[must_use]
    pub fn caused_by(parent: &Self, event_id: &str) -> Self {
        Self {
            correlation_id: parent.correlation_id.clone().or_else(|| Some(event_id.to_owned())),
            causation_id: Some(event_id.to_owned()),
            user_id: parent.user_id.clone(),
        }
    }
}
