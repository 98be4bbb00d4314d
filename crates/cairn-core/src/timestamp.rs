//! Event timestamps: UTC, microsecond precision, RFC 3339 on the wire.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Microseconds since the Unix epoch, UTC. Serialized as `2026-02-23T10:00:00.123456Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current wall-clock time, truncated to microseconds.
    #[must_use]
    pub fn now() -> Self {
        Self(Utc::now().timestamp_micros())
    }

    /// From microseconds since the epoch.
    #[must_use]
    pub const fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    /// Microseconds since the epoch.
    #[must_use]
    pub const fn as_micros(self) -> i64 {
        self.0
    }

    /// Parses RFC 3339 (any offset), keeping microseconds.
    pub fn parse_rfc3339(s: &str) -> Result<Self, chrono::ParseError> {
        Ok(Self(DateTime::parse_from_rfc3339(s)?.with_timezone(&Utc).timestamp_micros()))
    }

    /// RFC 3339 in UTC with exactly six fractional digits.
    #[must_use]
    pub fn to_rfc3339(self) -> String {
        DateTime::<Utc>::from_timestamp_micros(self.0)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Micros, true)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::Timestamp;

    #[test]
    fn round_trips_with_micros() {
        let t = Timestamp::parse_rfc3339("2026-02-23T10:00:00.123456Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-02-23T10:00:00.123456Z");
        let whole = Timestamp::parse_rfc3339("2026-02-23T11:00:00+01:00").unwrap();
        assert_eq!(whole.to_rfc3339(), "2026-02-23T10:00:00.000000Z");
        assert!(Timestamp::parse_rfc3339("yesterday").is_err());
    }
}
