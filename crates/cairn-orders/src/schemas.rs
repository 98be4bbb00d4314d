//! The JSON Schemas of the Order context's events (`crates/cairn-orders/schemas/`), as
//! the tables a module registers: the server puts them in its schema registry at start,
//! so that appends of domain events through the store API are validated from the first
//! request on.
//!
//! They describe the serde shapes of this crate's event structs: field names, JSON types
//! and required fields. The domain's rules (quantities ≥ 1, prices with two decimals, ...)
//! stay with the aggregates; a schema only says what an event looks like. Extra
//! properties are allowed, as the decoders ignore them, so that a later version can add
//! an optional field.
//!
//! A version, once released, is never edited: a change is a new file and a new version,
//! BACKWARD compatible with the previous one (the registry refuses anything else), and for
//! a breaking change an upcaster in the domain as well (see `OrderCreated`).
//!
//! The public integration events ([`crate::integration`]) have their schemas here too,
//! under their public type names (`OrderConfirmedV1`, version 1). Their contract is
//! stricter: a public type is never given an incompatible version; a breaking change is a
//! new type (`…V2`).

/// Every event type of the reference domain with its schema versions, oldest first. The
/// number of versions is the domain's current schema version of that type.
pub const EVENTS: &[(&str, &[&str])] = &[
    (
        "OrderCreated",
        &[
            include_str!("../schemas/OrderCreated.v1.json"),
            include_str!("../schemas/OrderCreated.v2.json"),
        ],
    ),
    ("ItemAdded", &[include_str!("../schemas/ItemAdded.v1.json")]),
    ("ItemRemoved", &[include_str!("../schemas/ItemRemoved.v1.json")]),
    ("OrderConfirmed", &[include_str!("../schemas/OrderConfirmed.v1.json")]),
    ("OrderReadyToShip", &[include_str!("../schemas/OrderReadyToShip.v1.json")]),
    ("OrderShipped", &[include_str!("../schemas/OrderShipped.v1.json")]),
    ("OrderCancelled", &[include_str!("../schemas/OrderCancelled.v1.json")]),
    ("OrderTotalCorrected", &[include_str!("../schemas/OrderTotalCorrected.v1.json")]),
    ("StockAdded", &[include_str!("../schemas/StockAdded.v1.json")]),
    ("StockReserved", &[include_str!("../schemas/StockReserved.v1.json")]),
    ("StockReleased", &[include_str!("../schemas/StockReleased.v1.json")]),
    ("StockShipped", &[include_str!("../schemas/StockShipped.v1.json")]),
    ("StockDepleted", &[include_str!("../schemas/StockDepleted.v1.json")]),
    ("CustomerRegistered", &[include_str!("../schemas/CustomerRegistered.v1.json")]),
    ("CustomerEmailChanged", &[include_str!("../schemas/CustomerEmailChanged.v1.json")]),
];

/// Every public integration event type of the reference domain with its schema versions
/// (one each: a breaking change is a new type, not a new version).
pub const PUBLIC: &[(&str, &[&str])] = &[
    ("OrderCreatedV1", &[include_str!("../schemas/OrderCreatedV1.v1.json")]),
    ("OrderConfirmedV1", &[include_str!("../schemas/OrderConfirmedV1.v1.json")]),
    ("OrderShippedV1", &[include_str!("../schemas/OrderShippedV1.v1.json")]),
    ("OrderCancelledV1", &[include_str!("../schemas/OrderCancelledV1.v1.json")]),
];
