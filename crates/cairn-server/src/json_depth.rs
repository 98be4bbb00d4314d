//! A cap on JSON nesting, checked on the raw bytes before any parsing.
//!
//! `serde_json` stops at 128 levels when it builds values, but a `RawValue` (how event
//! `data` and `metadata` are taken, to be stored byte for byte) is skipped over with a
//! heap-allocated stack and no limit: a body nesting 400,000 arrays was stored, and every
//! consumer that parses it into a `Value` then failed, at every restart. Refusing it at
//! the edge keeps such events out of the store.

/// Deepest nesting of arrays and objects a request body may have. `serde_json`'s own
/// recursion limit parses up to 127 levels; an event's `data` sits at least two levels
/// inside its request (`{"events":[{"data": ..}]}`), so it is at most 126 deep, and
/// still parses with `serde_json`'s defaults inside the relay's one-level envelope.
pub const JSON_DEPTH_MAX: usize = 128;

/// Whether `bytes` nest arrays and objects deeper than `max`. Brackets inside strings
/// (escapes included) do not count; malformed JSON is left for the parser to report.
#[must_use]
pub fn exceeds(bytes: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::{JSON_DEPTH_MAX, exceeds};

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn depth_counts_arrays_and_objects_but_not_strings() {
        assert!(!exceeds(nested(JSON_DEPTH_MAX).as_bytes(), JSON_DEPTH_MAX));
        assert!(exceeds(nested(JSON_DEPTH_MAX + 1).as_bytes(), JSON_DEPTH_MAX));
        assert!(exceeds(nested(400_000).as_bytes(), JSON_DEPTH_MAX));
        assert!(!exceeds(br#"{"a":"[[[[[\"[[[["}"#, 2));
        assert!(exceeds(br#"{"a":{"b":[1]}}"#, 2));
        // An event's data under the cap, inside the relay's envelope, parses with
        // serde_json's defaults.
        let data = nested(JSON_DEPTH_MAX - 2);
        let envelope = format!(r#"{{"data":{data}}}"#);
        assert!(serde_json::from_str::<serde_json::Value>(&envelope).is_ok());
    }
}
