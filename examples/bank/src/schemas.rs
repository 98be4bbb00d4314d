//! The JSON Schemas of the bank's events, compiled in: `(event type, its schema versions
//! oldest first)`, the shape a schema registry takes.

/// Every domain event's schemas.
pub const EVENTS: &[(&str, &[&str])] = &[
    ("AccountOpened", &[include_str!("../schemas/AccountOpened.v1.json")]),
    ("MoneyDeposited", &[include_str!("../schemas/MoneyDeposited.v1.json")]),
    ("MoneyWithdrawn", &[include_str!("../schemas/MoneyWithdrawn.v1.json")]),
    ("MoneyRefunded", &[include_str!("../schemas/MoneyRefunded.v1.json")]),
    ("AccountClosed", &[include_str!("../schemas/AccountClosed.v1.json")]),
    ("TransferRequested", &[include_str!("../schemas/TransferRequested.v1.json")]),
    ("TransferDebited", &[include_str!("../schemas/TransferDebited.v1.json")]),
    ("TransferCompleted", &[include_str!("../schemas/TransferCompleted.v1.json")]),
    ("TransferRefunded", &[include_str!("../schemas/TransferRefunded.v1.json")]),
    ("TransferRejected", &[include_str!("../schemas/TransferRejected.v1.json")]),
];

/// Every public event's schemas.
pub const PUBLIC: &[(&str, &[&str])] = &[
    ("AccountOpenedV1", &[include_str!("../schemas/AccountOpenedV1.v1.json")]),
    ("TransferCompletedV1", &[include_str!("../schemas/TransferCompletedV1.v1.json")]),
    ("TransferRefundedV1", &[include_str!("../schemas/TransferRefundedV1.v1.json")]),
];
