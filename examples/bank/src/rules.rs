//! Input rules shared by the aggregates; each violation is a `422 rule_violation`.

use cairn_cqrs::DomainError;

/// Largest amount one command may move, in cents (10^13 cents = 100 billion units).
/// It keeps every balance and running total far below `i64::MAX` for any realistic
/// history, so the checked arithmetic's overflow refusal is a guard, not a rule users meet.
pub const AMOUNT_MAX_CENTS: i64 = 10_000_000_000_000;

/// Longest free-text field (owner names, references, reasons).
pub const TEXT_MAX_LEN: usize = 500;

/// An amount of money moved: whole cents, at least 1, at most [`AMOUNT_MAX_CENTS`].
pub fn check_amount(amount_cents: i64) -> Result<(), DomainError> {
    if (1..=AMOUNT_MAX_CENTS).contains(&amount_cents) {
        Ok(())
    } else {
        Err(DomainError::rule(format!(
            "amount_cents must be between 1 and {AMOUNT_MAX_CENTS}, got {amount_cents}"
        )))
    }
}

/// An id that must follow the aggregate id rules (it names another stream).
pub fn check_id(field: &str, id: &str) -> Result<(), DomainError> {
    cairn_core::id::validate_aggregate_id(id)
        .map_err(|_| DomainError::rule(format!("{field} must match [A-Za-z0-9._:@-]{{1,128}}")))
}

/// Non-empty text of bounded length, without control characters (a `\u0000` cannot even
/// be stored in an indexed PostgreSQL document).
pub fn check_text(field: &str, text: &str) -> Result<(), DomainError> {
    if text.trim().is_empty() || text.len() > TEXT_MAX_LEN {
        Err(DomainError::rule(format!("{field} must be 1 to {TEXT_MAX_LEN} characters")))
    } else if text.chars().any(char::is_control) {
        Err(DomainError::rule(format!("{field} must not contain control characters")))
    } else {
        Ok(())
    }
}

/// `a + b`, refused (never a panic) when it does not fit.
pub fn add(field: &str, a: i64, b: i64) -> Result<i64, DomainError> {
    a.checked_add(b).ok_or_else(|| DomainError::rule(format!("{field} would overflow")))
}
