//! The event schema registry.

use super::Rm;

/// Each (type, version) is registered once; the list is ordered by type and version.
pub fn put_schema_registers_each_version_once(rm: &Rm) {
    assert!(rm.schemas().unwrap().is_empty());
    assert!(rm.put_schema("OrderPlaced", 1, r#"{"type":"object"}"#).unwrap());
    assert!(!rm.put_schema("OrderPlaced", 1, r#"{"type":"string"}"#).unwrap(), "already there");
    assert!(rm.put_schema("OrderPlaced", 2, r#"{"v":2}"#).unwrap());
    assert!(rm.put_schema("Accepted", 1, r#"{"a":1}"#).unwrap());
    assert_eq!(
        rm.schemas().unwrap(),
        [
            ("Accepted".to_owned(), 1, r#"{"a":1}"#.to_owned()),
            ("OrderPlaced".to_owned(), 1, r#"{"type":"object"}"#.to_owned()),
            ("OrderPlaced".to_owned(), 2, r#"{"v":2}"#.to_owned()),
        ],
        "the first registration of a version stands"
    );
}

/// Schemas registered by one process are every process's.
pub fn another_process_sees_schemas(rm: &Rm, peer: Rm) {
    assert!(rm.put_schema("OrderPlaced", 1, "{}").unwrap());
    assert!(!peer.put_schema("OrderPlaced", 1, "{}").unwrap(), "registered by the other process");
    assert_eq!(peer.schemas().unwrap(), [("OrderPlaced".to_owned(), 1, "{}".to_owned())]);
}
