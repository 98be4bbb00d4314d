//! NATS subjects for events: `<prefix>.<aggregate_type>.<aggregate_id>`.
//!
//! A subject token must not contain `.` (the separator), `*` or `>` (wildcards) or
//! whitespace, so ids are escaped: those bytes, `%` itself and anything outside printable
//! ASCII become `%XX`. Distinct ids stay distinct subjects, and a subscriber can filter by
//! aggregate type or by one aggregate.

use std::fmt::Write as _;

/// Escapes one subject token (never empty: an empty id becomes `%`).
#[must_use]
pub fn encode_token(raw: &str) -> String {
    if raw.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        let plain = b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>' | b'%');
        if plain {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The subject an event is published on.
#[must_use]
pub fn event_subject(prefix: &str, aggregate_type: &str, aggregate_id: &str) -> String {
    format!("{prefix}.{}.{}", encode_token(aggregate_type), encode_token(aggregate_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_wildcards_and_spaces_cannot_break_a_subject() {
        assert_eq!(encode_token("order-1"), "order-1");
        assert_eq!(encode_token("a.b"), "a%2Eb");
        assert_eq!(encode_token("a*>b"), "a%2A%3Eb");
        assert_eq!(encode_token("a b\t"), "a%20b%09");
        assert_eq!(encode_token("50%"), "50%25");
        assert_eq!(encode_token("é"), "%C3%A9");
        assert_eq!(encode_token(""), "%");
        assert_eq!(event_subject("cairn.events", "Order", "o.1"), "cairn.events.Order.o%2E1");
        // Escaping is injective: different ids never share a subject.
        assert_ne!(encode_token("a.b"), encode_token("a%2Eb"));
    }
}
