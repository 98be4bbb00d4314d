//! Input rules shared by the aggregates; each violation is a `422 rule_violation`.

use cairn_cqrs::DomainError;

use crate::money::Money;

/// Longest free-text field (names, reasons, tracking numbers).
pub const TEXT_MAX_LEN: usize = 500;

/// An id that must follow the aggregate id rules.
pub fn check_id(field: &str, id: &str) -> Result<(), DomainError> {
    cairn_core::id::validate_aggregate_id(id)
        .map_err(|_| DomainError::rule(format!("{field} must match [A-Za-z0-9._:@-]{{1,128}}")))
}

/// Largest quantity of one line or one stock movement (keeps every sum far from overflow).
pub const QUANTITY_MAX: i64 = 1_000_000_000;
/// Largest price or total accepted (keeps decimal arithmetic far from overflow).
pub const PRICE_MAX: i64 = 1_000_000_000_000;

/// Quantities are whole, at least 1 and at most [`QUANTITY_MAX`].
pub fn check_quantity(quantity: i64) -> Result<(), DomainError> {
    if (1..=QUANTITY_MAX).contains(&quantity) {
        Ok(())
    } else {
        Err(DomainError::rule(format!(
            "quantity must be between 1 and {QUANTITY_MAX}, got {quantity}"
        )))
    }
}

/// Prices are not negative, have at most two decimals, and are at most [`PRICE_MAX`].
pub fn check_price(field: &str, price: Money) -> Result<(), DomainError> {
    if price.is_valid_price() && price <= Money::from_whole(PRICE_MAX) {
        Ok(())
    } else {
        Err(DomainError::rule(format!(
            "{field} must be between 0 and {PRICE_MAX} with at most 2 decimals, got {price}"
        )))
    }
}

/// Non-empty text of bounded length, without control characters (a `\u0000` cannot
/// even be stored in an indexed PostgreSQL document).
pub fn check_text(field: &str, text: &str) -> Result<(), DomainError> {
    if text.trim().is_empty() || text.len() > TEXT_MAX_LEN {
        Err(DomainError::rule(format!("{field} must be 1 to {TEXT_MAX_LEN} characters")))
    } else if text.chars().any(char::is_control) {
        Err(DomainError::rule(format!("{field} must not contain control characters")))
    } else {
        Ok(())
    }
}
