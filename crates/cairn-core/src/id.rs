//! The rules for names a client chooses: aggregate ids, aggregate types and event types.
//!
//! They are deliberately narrow so that every id is safe in a URL path, a log line and
//! (later) a message-broker subject without escaping surprises.

use thiserror::Error;

/// Longest aggregate id a client may choose.
pub const AGGREGATE_ID_MAX_LEN: usize = 128;
/// Longest event type or aggregate type name.
pub const TYPE_NAME_MAX_LEN: usize = 100;

/// A name that breaks the rules above.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{what} {value:?} is invalid: {rule}")]
pub struct InvalidName {
    /// Which kind of name it was.
    pub what: &'static str,
    /// The offending value (truncated for the message).
    pub value: String,
    /// The rule it broke.
    pub rule: &'static str,
}

fn check(
    what: &'static str,
    value: &str,
    max: usize,
    rule: &'static str,
) -> Result<(), InvalidName> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(InvalidName { what, value: value.chars().take(140).collect(), rule })
    }
}

/// Checks an aggregate (stream) id against `[A-Za-z0-9._:@-]{1,128}`.
pub fn validate_aggregate_id(id: &str) -> Result<(), InvalidName> {
    check("aggregate_id", id, AGGREGATE_ID_MAX_LEN, "must match [A-Za-z0-9._:@-]{1,128}")
}

/// Checks an event type or aggregate type name against `[A-Za-z0-9._:@-]{1,100}`.
pub fn validate_type_name(what: &'static str, name: &str) -> Result<(), InvalidName> {
    check(what, name, TYPE_NAME_MAX_LEN, "must match [A-Za-z0-9._:@-]{1,100}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_ids() {
        for ok in ["order-123", "prod-789", "a", "x.y_z:w@v-1", &"a".repeat(128)] {
            assert!(validate_aggregate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "é", "$all", &"a".repeat(129), "a*b", "a>b"] {
            assert!(validate_aggregate_id(bad).is_err(), "{bad}");
        }
    }
}
