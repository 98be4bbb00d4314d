//! Events a consumer could not handle, parked so that processing goes on.

use super::{Fence, ReadModelError, TxnFn};

/// An event a consumer could not handle, parked so that processing goes on.
///
/// Rows of one (consumer, aggregate) form a chain in position order: the first is the
/// failed event, the rest were parked behind it so that the aggregate's events are never
/// applied out of order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadLetter {
    /// Its id (for retry and discard).
    pub id: i64,
    /// The projection or process manager.
    pub projection: String,
    /// The event's `$all` position.
    pub position: u64,
    /// The event's stream.
    pub aggregate_id: String,
    /// The event's type.
    pub event_type: String,
    /// The last error (for a parked event: which dead letter it waits behind).
    pub error: String,
    /// Times it was tried.
    pub attempts: u32,
    /// First failure (RFC 3339).
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub first_failed_at: crate::timestamp::Timestamp,
    /// Latest failure (RFC 3339).
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub last_failed_at: crate::timestamp::Timestamp,
}

/// Where a page of dead letters starts: just after this letter, in (consumer, position,
/// id) order. Built from the last letter of the previous page, so a letter retried or
/// discarded in between does not lose the place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterCursor {
    /// The previous page's last letter's consumer.
    pub consumer: String,
    /// Its position.
    pub position: u64,
    /// Its id.
    pub id: i64,
}

impl DeadLetterCursor {
    /// The cursor after `letter`.
    #[must_use]
    pub fn after(letter: &DeadLetter) -> Self {
        Self { consumer: letter.projection.clone(), position: letter.position, id: letter.id }
    }

    /// As text: `<position>-<id>-<consumer>` (the consumer last: it may hold `-`).
    #[must_use]
    pub fn encode(&self) -> String {
        format!("{}-{}-{}", self.position, self.id, self.consumer)
    }

    /// Reads [`Self::encode`]'s text; `None` when malformed.
    #[must_use]
    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, '-');
        let position = parts.next()?.parse().ok()?;
        let id = parts.next()?.parse().ok()?;
        let consumer = parts.next()?.to_owned();
        Some(Self { consumer, position, id })
    }
}

/// The dead letter queue of every consumer.
pub trait DeadLetters: Send + Sync {
    /// Parks an event in the dead letter queue and moves the consumer's checkpoint past
    /// it (never back), in one transaction, under `fence` (the live term of
    /// `letter.projection`). `letter.id` is ignored; the new id is returned.
    fn park(
        &self,
        fence: &Fence,
        checkpoint: u64,
        letter: &DeadLetter,
    ) -> Result<i64, ReadModelError>;
    /// Dead letters in (consumer, position) order, of one consumer or of all.
    fn dead_letters(&self, consumer: Option<&str>) -> Result<Vec<DeadLetter>, ReadModelError>;
    /// At most `limit` dead letters after `after`, in (consumer, position, id) order, of one
    /// consumer or of all. The default filters [`Self::dead_letters`]; a backend that can
    /// should read only the page.
    fn dead_letters_page(
        &self,
        consumer: Option<&str>,
        after: Option<&DeadLetterCursor>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, ReadModelError> {
        let key = |l: &DeadLetter| (l.projection.clone(), l.position, l.id);
        let after = after.map(|c| (c.consumer.clone(), c.position, c.id));
        Ok(self
            .dead_letters(consumer)?
            .into_iter()
            .filter(|l| after.as_ref().is_none_or(|a| &key(l) > a))
            .take(limit)
            .collect())
    }
    /// Runs `f` and removes `consumer`'s dead letter `id`, in one transaction (a successful
    /// retry, or a discard with a no-op `f`). Written only under `fence`, the live term of
    /// `consumer` ([`ReadModelError::Fenced`] otherwise); a letter that is gone fails
    /// with [`ReadModelError::NoSuchDeadLetter`] and rolls `f`'s changes back.
    fn resolve_dead_letter(
        &self,
        fence: &Fence,
        consumer: &str,
        id: i64,
        f: TxnFn<'_>,
    ) -> Result<(), ReadModelError>;
    /// Records one more failed attempt of `consumer`'s dead letter `id` (under `fence`).
    fn dead_letter_failed(
        &self,
        fence: &Fence,
        consumer: &str,
        id: i64,
        error: &str,
    ) -> Result<(), ReadModelError>;
}
