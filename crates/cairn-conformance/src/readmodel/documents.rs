//! Documents: stored, read, listed and found; a transaction is all or nothing.

use cairn_core::readmodel::{ListQuery, ReadModelError, TableSpec};

use super::{Rm, declare, fence, lead, order, put_all, refused};

fn page(rm: &Rm, filters: &[(&str, &str)], after: Option<&str>, limit: usize) -> Vec<String> {
    rm.list(&ListQuery {
        table: "orders".to_owned(),
        filters: filters.iter().map(|(f, v)| ((*f).to_owned(), (*v).to_owned())).collect(),
        after: after.map(str::to_owned),
        limit,
    })
    .expect("list")
    .into_iter()
    .map(|(k, _)| k)
    .collect()
}

/// A stored document reads back; a deleted one is gone; deleting nothing is no error.
pub fn put_get_and_delete(rm: &Rm) {
    declare(rm);
    lead(rm, "c");
    let (a, b) = (order("open", "ann"), order("paid", "bob"));
    put_all(rm, "c", None, "orders", &[("a", &a), ("b", &b)]);
    assert_eq!(rm.get("orders", "a").unwrap().as_deref(), Some(a.as_str()));
    assert_eq!(rm.get("orders", "b").unwrap().as_deref(), Some(b.as_str()));
    assert_eq!(rm.get("orders", "zz").unwrap(), None);
    rm.transact(&fence(rm, "c"), "c", None, &mut |txn| {
        txn.delete("orders", "a")?;
        txn.delete("orders", "never-there")
    })
    .unwrap();
    assert_eq!(rm.get("orders", "a").unwrap(), None, "deleted");
    assert_eq!(rm.get("orders", "b").unwrap().as_deref(), Some(b.as_str()), "untouched");
    // A put replaces.
    put_all(rm, "c", None, "orders", &[("b", &a)]);
    assert_eq!(rm.get("orders", "b").unwrap().as_deref(), Some(a.as_str()));
}

/// Documents are text: digits, key order and spacing survive (money keeps its digits).
pub fn documents_are_kept_byte_for_byte(rm: &Rm) {
    declare(rm);
    lead(rm, "c");
    let doc = r#"{"total": "12345678901234567890.10", "b":1,"a":[1.50, "é\u00e9"]}"#;
    put_all(rm, "c", None, "lines", &[("l1", doc)]);
    assert_eq!(rm.get("lines", "l1").unwrap().as_deref(), Some(doc));
    let mut seen = None;
    rm.transact(&fence(rm, "c"), "c", None, &mut |txn| {
        seen = txn.get("lines", "l1")?;
        Ok(())
    })
    .unwrap();
    assert_eq!(seen.as_deref(), Some(doc), "inside a transaction too");
}

/// Inside a transaction, `get` and `find` see what the transaction wrote before.
pub fn a_transaction_reads_its_own_writes(rm: &Rm) {
    declare(rm);
    lead(rm, "c");
    put_all(rm, "c", None, "orders", &[("a", &order("open", "ann"))]);
    let mut seen = Vec::new();
    rm.transact(&fence(rm, "c"), "c", None, &mut |txn| {
        txn.put("orders", "b", &order("open", "bob"))?;
        seen.push(txn.get("orders", "b")?.is_some());
        txn.delete("orders", "a")?;
        seen.push(txn.get("orders", "a")?.is_some());
        let found = txn.find("orders", "status", "open")?;
        seen.push(found.len() == 1 && found[0].0 == "b");
        txn.put("orders", "a", &order("paid", "ann"))?;
        let found = txn.find("orders", "status", "paid")?;
        seen.push(found.len() == 1 && found[0].0 == "a");
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, [true, false, true, true]);
    assert!(rm.get("orders", "a").unwrap().unwrap().contains("paid"));
}

/// `list` orders by key, pages after a key, and applies every filter.
pub fn list_orders_pages_and_filters(rm: &Rm) {
    declare(rm);
    lead(rm, "c");
    let docs = [
        ("k4", order("open", "ann")),
        ("k2", order("paid", "ann")),
        ("k5", order("open", "bob")),
        ("k1", order("open", "ann")),
        ("k3", order("open", "bob")),
    ];
    let docs: Vec<(&str, &str)> = docs.iter().map(|(k, d)| (*k, d.as_str())).collect();
    put_all(rm, "c", None, "orders", &docs);
    assert_eq!(page(rm, &[], None, 100), ["k1", "k2", "k3", "k4", "k5"]);
    assert_eq!(page(rm, &[], None, 2), ["k1", "k2"]);
    assert_eq!(page(rm, &[], Some("k2"), 2), ["k3", "k4"]);
    assert_eq!(page(rm, &[], Some("k4"), 2), ["k5"]);
    assert!(page(rm, &[], Some("k5"), 2).is_empty());
    assert_eq!(page(rm, &[("status", "open")], None, 100), ["k1", "k3", "k4", "k5"]);
    assert_eq!(page(rm, &[("status", "open"), ("customer", "ann")], None, 100), ["k1", "k4"]);
    assert_eq!(page(rm, &[("status", "open")], Some("k3"), 1), ["k4"]);
    assert!(page(rm, &[("status", "cancelled")], None, 100).is_empty());
    let (_, doc) = rm
        .list(&ListQuery { table: "orders".to_owned(), filters: vec![], after: None, limit: 1 })
        .unwrap()
        .remove(0);
    assert_eq!(doc, order("open", "ann"), "list returns the documents too");
}

/// A filter value is compared with the field's JSON text: an integer field matches its
/// digits (a query string cannot say whether `7` is a number).
pub fn integer_fields_match_their_digits(rm: &Rm) {
    declare(rm);
    lead(rm, "c");
    let (number, text, other) = (
        r#"{"status":"open","customer":7}"#,
        r#"{"status":"open","customer":"7"}"#,
        r#"{"status":"open","customer":70}"#,
    );
    put_all(rm, "c", None, "orders", &[("k1", number), ("k2", text), ("k3", other)]);
    assert_eq!(page(rm, &[("customer", "7")], None, 10), ["k1", "k2"]);
    assert_eq!(page(rm, &[("customer", "70")], None, 10), ["k3"]);
    assert!(page(rm, &[("customer", "07")], None, 10).is_empty());
    let mut found = Vec::new();
    rm.transact(&fence(rm, "c"), "c", None, &mut |txn| {
        found = txn.find("orders", "customer", "7")?;
        Ok(())
    })
    .unwrap();
    assert_eq!(found.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["k1", "k2"]);
}

/// `find` returns every match of an indexed field, by key.
pub fn find_returns_matches_by_key(rm: &Rm) {
    declare(rm);
    lead(rm, "c");
    let (open_b, open_a, paid) = (order("open", "bob"), order("open", "ann"), order("paid", "ann"));
    put_all(rm, "c", None, "orders", &[("z", &open_b), ("m", &paid), ("a", &open_a)]);
    let mut found = Vec::new();
    rm.transact(&fence(rm, "c"), "c", None, &mut |txn| {
        found = txn.find("orders", "customer", "ann")?;
        Ok(())
    })
    .unwrap();
    assert_eq!(found, [("a".to_owned(), open_a.clone()), ("m".to_owned(), paid.clone())]);
    rm.transact(&fence(rm, "c"), "c", None, &mut |txn| {
        found = txn.find("orders", "status", "open")?;
        Ok(())
    })
    .unwrap();
    assert_eq!(found, [("a".to_owned(), open_a.clone()), ("z".to_owned(), open_b.clone())]);
}

/// Tables and fields that were never declared, and names that are not identifiers.
pub fn unknown_tables_and_fields_are_refused(rm: &Rm) {
    declare(rm);
    lead(rm, "c");
    let unknown = |r: Result<(), ReadModelError>| matches!(r, Err(ReadModelError::Unknown(_)));
    assert!(unknown(
        rm.transact(&fence(rm, "c"), "c", None, &mut |txn| txn.put("nowhere", "k", "{}"))
    ));
    assert!(unknown(
        rm.transact(&fence(rm, "c"), "c", None, &mut |txn| txn.get("nowhere", "k").map(|_| ()))
    ));
    assert!(unknown(rm.transact(&fence(rm, "c"), "c", None, &mut |txn| {
        txn.find("orders", "total", "1").map(|_| ())
    })));
    assert!(unknown(rm.transact(&fence(rm, "c"), "c", None, &mut |txn| {
        txn.find("lines", "x", "1").map(|_| ())
    })));
    let listed = rm.list(&ListQuery {
        table: "orders".to_owned(),
        filters: vec![("total".to_owned(), "10.10".to_owned())],
        after: None,
        limit: 10,
    });
    assert!(matches!(listed, Err(ReadModelError::Unknown(_))), "{listed:?}");
    for spec in [
        TableSpec { name: "Orders", indexed: &[] },
        TableSpec { name: "x; drop table y", indexed: &[] },
        TableSpec { name: "ok", indexed: &["bad-field"] },
        TableSpec { name: "", indexed: &[] },
    ] {
        let refused = rm.ensure_tables(std::slice::from_ref(&spec));
        assert!(matches!(refused, Err(ReadModelError::Unknown(_))), "{spec:?}: {refused:?}");
    }
}

/// An error from the closure writes nothing: no document, no checkpoint.
pub fn failed_transaction_writes_nothing(rm: &Rm) {
    declare(rm);
    lead(rm, "c");
    put_all(rm, "c", Some(3), "orders", &[("a", &order("open", "ann"))]);
    let result = rm.transact(&fence(rm, "c"), "c", Some(7), &mut |txn| {
        txn.put("orders", "b", &order("open", "bob"))?;
        txn.delete("orders", "a")?;
        txn.put("lines", "l", "{}")?;
        Err(refused())
    });
    assert_eq!(result, Err(refused()), "the closure's error is returned as it is");
    assert_eq!(rm.get("orders", "b").unwrap(), None);
    assert!(rm.get("orders", "a").unwrap().is_some());
    assert_eq!(rm.get("lines", "l").unwrap(), None);
    assert_eq!(rm.checkpoint("c").unwrap(), 3, "the checkpoint did not move");
}

/// Even what a `find` made the backend write before the error is rolled back.
pub fn failed_transaction_after_a_find_writes_nothing(rm: &Rm) {
    declare(rm);
    lead(rm, "c");
    let result = rm.transact(&fence(rm, "c"), "c", Some(9), &mut |txn| {
        txn.put("orders", "b", &order("open", "bob"))?;
        let found = txn.find("orders", "status", "open")?;
        assert_eq!(found.len(), 1);
        txn.put("orders", "c", &order("open", "cy"))?;
        Err(refused())
    });
    assert_eq!(result, Err(refused()));
    assert_eq!(rm.get("orders", "b").unwrap(), None);
    assert_eq!(rm.get("orders", "c").unwrap(), None);
    assert_eq!(rm.checkpoint("c").unwrap(), 0);
    assert!(rm.checkpoints().unwrap().iter().all(|(c, _)| c != "c"));
}

/// A closure that panics (a handler bug the engine catches) writes nothing either, and
/// the store goes on serving.
pub fn panicking_transaction_writes_nothing(rm: &Rm) {
    declare(rm);
    lead(rm, "c");
    put_all(rm, "c", Some(2), "orders", &[("a", &order("open", "ann"))]);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rm.transact(&fence(rm, "c"), "c", Some(8), &mut |txn| {
            txn.put("orders", "b", &order("open", "bob"))?;
            txn.delete("orders", "a")?;
            // Makes the buffered writes reach the backend before the panic.
            txn.find("orders", "status", "open")?;
            panic!("handler bug");
        })
    }));
    assert!(panicked.is_err());
    assert_eq!(rm.get("orders", "b").unwrap(), None);
    assert!(rm.get("orders", "a").unwrap().is_some());
    assert_eq!(rm.checkpoint("c").unwrap(), 2);
    put_all(rm, "c", Some(3), "orders", &[("c", &order("open", "cy"))]);
    assert!(rm.get("orders", "c").unwrap().is_some(), "the store still takes writes");
    assert_eq!(rm.checkpoint("c").unwrap(), 3);
}

/// Declaring the tables again (every start-up does) keeps what they hold.
pub fn ensure_tables_again_keeps_documents(rm: &Rm) {
    declare(rm);
    lead(rm, "c");
    put_all(rm, "c", None, "orders", &[("a", &order("open", "ann"))]);
    declare(rm);
    assert!(rm.get("orders", "a").unwrap().is_some());
    let found = page(rm, &[("status", "open")], None, 10);
    assert_eq!(found, ["a"]);
}

/// A prefetch is only a hint: it never hides the transaction's own writes nor invents
/// documents.
pub fn prefetch_does_not_hide_writes(rm: &Rm) {
    declare(rm);
    lead(rm, "c");
    let (old, new) = (order("open", "ann"), order("paid", "ann"));
    put_all(rm, "c", None, "orders", &[("a", &old)]);
    let mut seen = Vec::new();
    rm.transact(&fence(rm, "c"), "c", None, &mut |txn| {
        txn.put("orders", "a", &new)?;
        txn.delete("orders", "gone")?;
        txn.prefetch("orders", &["a", "b", "gone"])?;
        seen.push(txn.get("orders", "a")?);
        seen.push(txn.get("orders", "b")?);
        seen.push(txn.get("orders", "gone")?);
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, [Some(new.clone()), None, None]);
    let mut again = None;
    rm.transact(&fence(rm, "c"), "c", None, &mut |txn| {
        txn.prefetch("orders", &["a"])?;
        again = txn.get("orders", "a")?;
        Ok(())
    })
    .unwrap();
    assert_eq!(again, Some(new));
}
