//! API tokens (#16).

use cairn_core::readmodel::StoredToken;
use cairn_core::timestamp::Timestamp;

use super::Rm;

fn token(id: &str, hash: &str, created: i64) -> StoredToken {
    StoredToken {
        id: id.to_owned(),
        name: format!("{id}-name"),
        role: "appender".to_owned(),
        prefixes: vec!["order-".to_owned(), "cust:".to_owned()],
        hash: hash.to_owned(),
        created_at: Timestamp::from_micros(created),
        revoked_at: None,
    }
}

/// A token is stored once (by id and by hash), found by its hash with every field, and
/// listed in creation order.
pub fn tokens_are_created_once_and_found_by_hash(rm: &Rm) {
    assert!(rm.tokens().unwrap().is_empty());
    assert_eq!(rm.token_by_hash("aa").unwrap(), None);
    let first = token("t1", "aa", 2_000);
    let second = StoredToken { prefixes: Vec::new(), ..token("t2", "bb", 1_000) };
    assert!(rm.create_token(&first).unwrap());
    assert!(rm.create_token(&second).unwrap());
    assert!(!rm.create_token(&token("t1", "cc", 3_000)).unwrap(), "the id is taken");
    assert!(!rm.create_token(&token("t3", "aa", 3_000)).unwrap(), "the hash is taken");
    assert_eq!(rm.token_by_hash("aa").unwrap(), Some(first.clone()));
    assert_eq!(rm.token_by_hash("bb").unwrap(), Some(second.clone()));
    assert_eq!(rm.tokens().unwrap(), [second, first], "ordered by creation time");
}

/// Revoking keeps the token (listed, found) with its first revocation time; an unknown
/// id is `None`.
pub fn revoking_a_token_keeps_its_first_time(rm: &Rm) {
    assert!(rm.create_token(&token("t1", "aa", 1_000)).unwrap());
    assert_eq!(rm.revoke_token("nope", Timestamp::from_micros(5)).unwrap(), None);
    let revoked = rm.revoke_token("t1", Timestamp::from_micros(5_000)).unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(Timestamp::from_micros(5_000)));
    let again = rm.revoke_token("t1", Timestamp::from_micros(9_000)).unwrap().unwrap();
    assert_eq!(again.revoked_at, Some(Timestamp::from_micros(5_000)), "the first time stands");
    assert_eq!(rm.token_by_hash("aa").unwrap().unwrap().revoked_at, again.revoked_at);
    assert_eq!(rm.tokens().unwrap(), [again]);
}

/// Tokens created or revoked by one process are every process's.
pub fn another_process_sees_tokens(rm: &Rm, peer: Rm) {
    assert!(rm.create_token(&token("t1", "aa", 1_000)).unwrap());
    assert_eq!(peer.token_by_hash("aa").unwrap().map(|t| t.id), Some("t1".to_owned()));
    peer.revoke_token("t1", Timestamp::from_micros(2_000)).unwrap();
    assert_eq!(
        rm.token_by_hash("aa").unwrap().unwrap().revoked_at,
        Some(Timestamp::from_micros(2_000))
    );
}
