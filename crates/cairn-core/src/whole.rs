//! Whole numbers in JSON request bodies: `3` and `3.0` alike. JSON Schema (and so the
//! OpenAPI document) counts a number without a fraction as an integer, and some clients
//! write every number as a float; serde alone refuses `3.0` for an integer field.
//! Use as `#[serde(deserialize_with = "cairn_core::whole::deserialize")]`.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// The largest float below which every whole number is exact (2^53).
pub const F64_INTEGER_MAX: f64 = 9_007_199_254_740_992.0;

/// An integer of type `T` from a JSON number without a fraction; anything else (a
/// fraction, a value out of `T`'s range, a string) is an error.
pub fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    let n = serde_json::Number::deserialize(d)?;
    let whole = if let Some(u) = n.as_u64() {
        T::try_from(u).ok()
    } else if let Some(i) = n.as_i64() {
        T::try_from(i).ok()
    } else {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() <= F64_INTEGER_MAX)
            .and_then(|f| T::try_from(f as i64).ok())
    };
    whole.ok_or_else(|| D::Error::custom(format!("expected a whole number in range, got {n}")))
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(deserialize_with = "super::deserialize")]
        n: u32,
    }

    fn parse(json: &str) -> Option<u32> {
        serde_json::from_str::<Body>(json).ok().map(|b| b.n)
    }

    #[test]
    fn integral_floats_are_integers_and_nothing_else_is() {
        assert_eq!(parse(r#"{"n": 3}"#), Some(3));
        assert_eq!(parse(r#"{"n": 3.0}"#), Some(3));
        assert_eq!(parse(r#"{"n": 3e2}"#), Some(300));
        for bad in [
            r#"{"n": 3.5}"#,
            r#"{"n": -1}"#,
            r#"{"n": -1.0}"#,
            r#"{"n": "3"}"#,
            r#"{"n": 1e300}"#,
            r#"{"n": 5000000000}"#,
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
