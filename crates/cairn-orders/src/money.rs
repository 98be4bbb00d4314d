//! Exact money: a decimal that is written to JSON as a number with exactly its digits.

use std::fmt;
use std::ops::{Add, Mul, Sub};
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// An amount of money. `29.99 * 2` is exactly `59.98`; JSON carries the digits verbatim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(Decimal);

impl Money {
    /// Zero.
    pub const ZERO: Self = Self(Decimal::ZERO);

    /// Whether it is a valid price: not negative, at most two decimals.
    #[must_use]
    pub fn is_valid_price(self) -> bool {
        !self.0.is_sign_negative() && self.0.normalize().scale() <= 2
    }

    /// A whole amount.
    #[must_use]
    pub fn from_whole(units: i64) -> Self {
        Self(Decimal::from(units))
    }

    /// `self * quantity`, saturating at the largest representable amount (never panics;
    /// amounts the domain's rules accept stay many orders of magnitude below it).
    #[must_use]
    pub fn times(self, quantity: i64) -> Self {
        Self(self.0.saturating_mul(Decimal::from(quantity)))
    }

    /// `self * quantity`, or `None` when the product cannot be represented.
    #[must_use]
    pub fn checked_times(self, quantity: i64) -> Option<Self> {
        self.0.checked_mul(Decimal::from(quantity)).map(Self)
    }

    /// `self + other`, or `None` when the sum cannot be represented.
    #[must_use]
    pub fn checked_add(self, other: Self) -> Option<Self> {
        self.0.checked_add(other.0).map(Self)
    }

    /// `self - other`, or `None` when the difference cannot be represented.
    #[must_use]
    pub fn checked_sub(self, other: Self) -> Option<Self> {
        self.0.checked_sub(other.0).map(Self)
    }
}

// The operators saturate instead of panicking: events reach the projections from the
// store API too, and one unrepresentable amount must not bring a consumer down. Paths
// that must notice use the `checked_*` methods.
impl Add for Money {
    type Output = Self;
    fn add(self, rhs: Self) -> Self {
        Self(self.0.saturating_add(rhs.0))
    }
}

impl Sub for Money {
    type Output = Self;
    fn sub(self, rhs: Self) -> Self {
        Self(self.0.saturating_sub(rhs.0))
    }
}

impl Mul<i64> for Money {
    type Output = Self;
    fn mul(self, rhs: i64) -> Self {
        self.times(rhs)
    }
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::ZERO, Add::add)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.normalize())
    }
}

impl FromStr for Money {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        Decimal::from_str_exact(s)
            .or_else(|_| Decimal::from_scientific(s))
            .map(Self)
            .map_err(|_| format!("{s:?} is not a decimal amount"))
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // A raw JSON number: serde_json writes it verbatim, so no float ever rounds it.
        let raw = RawValue::from_string(self.to_string()).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Money {
    /// Accepts a JSON number or a string holding one, keeping every digit.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        let text = raw.get().trim();
        let digits = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(text);
        if digits.is_empty()
            || !digits
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
        {
            return Err(serde::de::Error::custom(format!("expected a decimal amount, got {text}")));
        }
        digits.parse().map_err(serde::de::Error::custom)
    }
}

/// In the OpenAPI document: a JSON number written with exactly its digits (`59.98`), or,
/// in requests, a string holding one (`"59.98"`), as [`Money`] reads and writes it.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Money {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^-?[0-9]+(\.[0-9]+)?$")),
            )
            .description(Some(
                "An exact decimal: a JSON number with exactly its digits, or a string holding one",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Money {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("Money")
    }
}

#[cfg(test)]
mod tests {
    use super::Money;

    #[test]
    fn two_items_of_29_99_total_exactly_59_98() {
        let price: Money = serde_json::from_str("29.99").unwrap();
        assert_eq!(serde_json::to_string(&price.times(2)).unwrap(), "59.98");
        let from_string: Money = serde_json::from_str(r#""29.99""#).unwrap();
        assert_eq!(from_string, price);
        assert_eq!(serde_json::to_string(&(price * 3 - price)).unwrap(), "59.98");
    }

    #[test]
    fn prices_have_at_most_two_decimals_and_are_not_negative() {
        let m = |s: &str| s.parse::<Money>().unwrap();
        assert!(m("0").is_valid_price());
        assert!(m("10.50").is_valid_price());
        assert!(m("10.500").is_valid_price()); // 10.5 really
        assert!(!m("10.505").is_valid_price());
        assert!(!m("-1").is_valid_price());
        assert!(serde_json::from_str::<Money>("true").is_err());
        assert!(serde_json::from_str::<Money>(r#""abc""#).is_err());
        assert_eq!(serde_json::to_string(&m("1e2")).unwrap(), "100");
    }
}
