//! The optimistic-concurrency condition an append is made under.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What the writer believes about the stream's current version.
///
/// A stream's version is the version of its last event; `0` means it does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ExpectedVersion {
    /// No check: append at whatever the end is.
    #[default]
    Any,
    /// The stream must not exist yet (same as `Exact(0)`).
    NoStream,
    /// The stream must already hold at least one event.
    StreamExists,
    /// The stream's last event must have exactly this version (`0` = must not exist).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream currently at `actual` (0 = absent) satisfies this expectation.
    #[must_use]
    pub fn is_satisfied_by(self, actual: u64) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream | Self::Exact(0) => actual == 0,
            Self::StreamExists => actual > 0,
            Self::Exact(n) => actual == n,
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no_stream"),
            Self::StreamExists => f.write_str("exists"),
            Self::Exact(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for ExpectedVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Any => s.serialize_str("any"),
            Self::NoStream => s.serialize_str("no_stream"),
            Self::StreamExists => s.serialize_str("exists"),
            Self::Exact(n) => s.serialize_u64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for ExpectedVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ExpectedVersion;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#"a non-negative integer, "any", "no_stream" or "exists""#)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(ExpectedVersion::Exact(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(ExpectedVersion::Exact)
                    .map_err(|_| E::custom("expected_version must not be negative"))
            }
            /// `3.0` is the integer 3 (JSON Schema counts a number without a fraction as
            /// an integer, and so do clients that write every number as a float).
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
                if v.fract() == 0.0 && (0.0..=crate::whole::F64_INTEGER_MAX).contains(&v) {
                    Ok(ExpectedVersion::Exact(v as u64))
                } else {
                    Err(E::custom("expected_version must be a non-negative integer"))
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "any" => Ok(ExpectedVersion::Any),
                    "no_stream" => Ok(ExpectedVersion::NoStream),
                    "exists" => Ok(ExpectedVersion::StreamExists),
                    other => Err(E::custom(format!(
                        r#"unknown expected_version "{other}": use an integer, "any", "no_stream" or "exists""#
                    ))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// In the OpenAPI document: an integer, `"any"`, `"no_stream"` or `"exists"`, as
/// [`ExpectedVersion`] reads and writes it.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for ExpectedVersion {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)).description(Some(
                    "The version of the stream's last event (0 = must not exist)",
                )),
            )
            .item(ObjectBuilder::new().schema_type(Type::String).enum_values(Some([
                "any",
                "no_stream",
                "exists",
            ])))
            .description(Some(
                "What the writer believes about the stream's version; absent means \"any\"",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for ExpectedVersion {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("ExpectedVersion")
    }
}

#[cfg(test)]
mod tests {
    use super::ExpectedVersion::{self, Any, Exact, NoStream, StreamExists};

    #[test]
    fn satisfaction_table() {
        let cases = [
            (Any, 0, true),
            (Any, 7, true),
            (NoStream, 0, true),
            (NoStream, 1, false),
            (Exact(0), 0, true),
            (Exact(0), 2, false),
            (StreamExists, 0, false),
            (StreamExists, 3, true),
            (Exact(3), 3, true),
            (Exact(3), 5, false),
        ];
        for (expected, actual, ok) in cases {
            assert_eq!(expected.is_satisfied_by(actual), ok, "{expected:?} vs {actual}");
        }
    }

    #[test]
    fn json_forms() {
        let parse = |s: &str| serde_json::from_str::<ExpectedVersion>(s);
        assert_eq!(parse("3").unwrap(), Exact(3));
        assert_eq!(parse(r#""any""#).unwrap(), Any);
        assert_eq!(parse(r#""no_stream""#).unwrap(), NoStream);
        assert_eq!(parse(r#""exists""#).unwrap(), StreamExists);
        assert!(parse("-1").is_err());
        assert!(parse(r#""sometimes""#).is_err());
        assert!(parse("1.5").is_err());
        assert_eq!(serde_json::to_string(&Exact(4)).unwrap(), "4");
        assert_eq!(serde_json::to_string(&NoStream).unwrap(), r#""no_stream""#);
    }
}
