//! Stream metadata in the protocol's JSON (`$maxCount`, `$maxAge`, `$tb`) and in
//! Cairn's ([`StreamMeta`]). `$tb` is a revision, Cairn's `truncate_before` a version:
//! `truncate_before = $tb + 1`.

use cairn_core::lifecycle::StreamMeta;
use serde_json::{Map, Value};
use tonic::Status;

/// The keys Cairn keeps. Anything else (`$acl`, `$cacheControl`, custom properties) is
/// refused rather than dropped: a client that wrote it would expect to read it back.
const KEPT: [&str; 3] = ["$maxCount", "$maxAge", "$tb"];

/// The protocol's metadata object as Cairn's; `null` values are unset.
pub fn from_protocol(data: &[u8]) -> Result<StreamMeta, Status> {
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(data) else {
        return Err(Status::invalid_argument("stream metadata must be a JSON object"));
    };
    let mut meta = StreamMeta::default();
    for (key, value) in object {
        if value.is_null() {
            continue;
        }
        if !KEPT.contains(&key.as_str()) {
            return Err(Status::invalid_argument(format!(
                "stream metadata key {key:?} is not supported: Cairn keeps only $maxCount, \
                 $maxAge and $tb (access is by token roles, not $acl; docs/grpc.md)"
            )));
        }
        let number = value.as_u64().ok_or_else(|| {
            Status::invalid_argument(format!("stream metadata {key} must be a whole number ≥ 0"))
        })?;
        match key.as_str() {
            "$maxCount" => meta.max_count = Some(number),
            "$maxAge" => meta.max_age_s = Some(number),
            // `$tb: 0` hides nothing, which is also what no truncation means.
            _ => meta.truncate_before = (number > 0).then(|| number.saturating_add(1)),
        }
    }
    meta.validate().map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(meta)
}

/// Cairn's stored metadata (as JSON text) in the protocol's form; text that is not
/// Cairn's metadata passes through unchanged.
pub fn to_protocol(data: &str) -> String {
    let Ok(meta) = serde_json::from_str::<StreamMeta>(data) else { return data.to_owned() };
    let mut object = Map::new();
    if let Some(count) = meta.max_count {
        object.insert("$maxCount".into(), count.into());
    }
    if let Some(age) = meta.max_age_s {
        object.insert("$maxAge".into(), age.into());
    }
    if let Some(before) = meta.truncate_before {
        object.insert("$tb".into(), before.saturating_sub(1).into());
    }
    Value::Object(object).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_kept_keys_round_trip() {
        let sent = br#"{"$maxCount":5,"$maxAge":60,"$tb":3,"$acl":null}"#;
        let meta = from_protocol(sent).unwrap();
        assert_eq!(meta.truncate_before, Some(4), "revision 3 is version 4");
        let back: Value =
            serde_json::from_str(&to_protocol(&serde_json::to_string(&meta).unwrap())).unwrap();
        assert_eq!(back, serde_json::json!({"$maxCount":5,"$maxAge":60,"$tb":3}));
    }

    #[test]
    fn what_cairn_cannot_keep_is_refused() {
        assert!(from_protocol(br#"{"$acl":{"$r":"x"}}"#).is_err());
        assert!(from_protocol(br#"{"owner":"me"}"#).is_err());
        assert!(from_protocol(br#"{"$maxCount":-1}"#).is_err());
        assert!(from_protocol(br#"{"$maxCount":0}"#).is_err());
        assert!(from_protocol(b"[]").is_err());
        assert_eq!(from_protocol(b"{}").unwrap(), StreamMeta::default());
    }
}
