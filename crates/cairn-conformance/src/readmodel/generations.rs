//! Generations: a rebuild fills shadow tables beside the live ones, then swaps them in
//! with the checkpoint, or drops them.

use cairn_core::readmodel::{ListQuery, REBUILD_SUFFIX, ReadModelError};

use super::leases::{deposed, eventually};
use super::{Rm, declare, fence, lead, order, put_all, refused};

const LIVE: &str = "p";

fn shadow_consumer() -> String {
    format!("{LIVE}{REBUILD_SUFFIX}")
}

fn keys(rm: &Rm, table: &str) -> Vec<String> {
    rm.list(&ListQuery { table: table.to_owned(), filters: vec![], after: None, limit: 100 })
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

fn shadow_put(rm: &Rm, checkpoint: Option<u64>, docs: &[(&str, &str)]) {
    rm.transact_shadow(
        &fence(rm, &shadow_consumer()),
        &shadow_consumer(),
        checkpoint,
        &mut |txn| {
            for (key, json) in docs {
                txn.put("orders", key, json)?;
            }
            Ok(())
        },
    )
    .unwrap();
}

/// While a rebuild fills the shadow, the live tables serve (and take) writes untouched;
/// the swap replaces them at once, with the rebuild's checkpoint.
pub fn swap_replaces_live_tables_and_hands_over_the_checkpoint(rm: &Rm) {
    declare(rm);
    lead(rm, LIVE);
    put_all(
        rm,
        LIVE,
        Some(50),
        "orders",
        &[("old1", &order("open", "ann")), ("old2", &order("paid", "bob"))],
    );
    rm.create_shadow(&fence(rm, LIVE), LIVE, &["orders"]).unwrap();
    shadow_put(rm, Some(20), &[("new1", &order("open", "cy"))]);
    let mut in_shadow = Vec::new();
    rm.transact_shadow(&fence(rm, &shadow_consumer()), &shadow_consumer(), Some(30), &mut |txn| {
        in_shadow.push(txn.get("orders", "new1")?.is_some());
        in_shadow.push(txn.get("orders", "old1")?.is_some());
        in_shadow.push(txn.find("orders", "status", "open")?.len() == 1);
        txn.put("orders", "new2", &order("paid", "cy"))
    })
    .unwrap();
    assert_eq!(in_shadow, [true, false, true], "a shadow transaction sees the shadow only");
    assert_eq!(keys(rm, "orders"), ["old1", "old2"], "live is untouched by the rebuild");
    put_all(rm, LIVE, Some(51), "orders", &[("old3", &order("open", "ann"))]);
    assert_eq!(rm.checkpoint(&shadow_consumer()).unwrap(), 30);
    assert_eq!(rm.checkpoint(LIVE).unwrap(), 51);

    rm.swap_shadow(&fence(rm, LIVE), &["orders"], LIVE, &shadow_consumer()).unwrap();
    assert_eq!(keys(rm, "orders"), ["new1", "new2"], "the shadow is live");
    assert_eq!(rm.checkpoint(LIVE).unwrap(), 30, "with the rebuild's checkpoint");
    assert!(
        rm.checkpoints().unwrap().iter().all(|(c, _)| *c != shadow_consumer()),
        "the rebuild's checkpoint is gone"
    );
    let open: Vec<String> = rm
        .list(&ListQuery {
            table: "orders".to_owned(),
            filters: vec![("status".to_owned(), "open".to_owned())],
            after: None,
            limit: 10,
        })
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(open, ["new1"], "the new generation filters by its indexed fields");
    // Live writes now land in the new generation.
    put_all(rm, LIVE, Some(31), "orders", &[("after", &order("open", "dee"))]);
    assert_eq!(keys(rm, "orders"), ["after", "new1", "new2"]);
    let mut found = Vec::new();
    rm.transact(&fence(rm, LIVE), LIVE, None, &mut |txn| {
        found = txn.find("orders", "status", "open")?;
        Ok(())
    })
    .unwrap();
    assert_eq!(found.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["after", "new1"]);
}

/// A shadow transaction that fails writes nothing to the shadow nor its checkpoint.
pub fn failed_shadow_transaction_writes_nothing(rm: &Rm) {
    declare(rm);
    lead(rm, LIVE);
    rm.create_shadow(&fence(rm, LIVE), LIVE, &["orders"]).unwrap();
    shadow_put(rm, Some(5), &[("kept", &order("open", "ann"))]);
    let failed = rm.transact_shadow(
        &fence(rm, &shadow_consumer()),
        &shadow_consumer(),
        Some(9),
        &mut |txn| {
            txn.put("orders", "lost", &order("open", "ann"))?;
            Err(refused())
        },
    );
    assert_eq!(failed, Err(refused()));
    assert_eq!(rm.checkpoint(&shadow_consumer()).unwrap(), 5);
    rm.swap_shadow(&fence(rm, LIVE), &["orders"], LIVE, &shadow_consumer()).unwrap();
    assert_eq!(keys(rm, "orders"), ["kept"]);
}

/// An abandoned rebuild leaves the live tables and checkpoint as they were and forgets
/// its own checkpoint.
pub fn abort_drops_the_shadow(rm: &Rm) {
    declare(rm);
    lead(rm, LIVE);
    put_all(rm, LIVE, Some(8), "orders", &[("live", &order("open", "ann"))]);
    rm.create_shadow(&fence(rm, LIVE), LIVE, &["orders"]).unwrap();
    shadow_put(rm, Some(3), &[("shadow", &order("open", "bob"))]);
    rm.abort_shadow(&fence(rm, &shadow_consumer()), &["orders"], &shadow_consumer()).unwrap();
    assert_eq!(keys(rm, "orders"), ["live"]);
    assert_eq!(rm.checkpoint(LIVE).unwrap(), 8);
    assert_eq!(rm.checkpoint(&shadow_consumer()).unwrap(), 0);
    assert!(rm.checkpoints().unwrap().iter().all(|(c, _)| *c != shadow_consumer()));
    // Writes after the abort are live writes.
    put_all(rm, LIVE, Some(9), "orders", &[("live2", &order("open", "ann"))]);
    assert_eq!(keys(rm, "orders"), ["live", "live2"]);
}

/// A rebuild that starts again (after a crash or a restart) starts from empty tables.
pub fn leftover_shadow_is_emptied(rm: &Rm) {
    declare(rm);
    lead(rm, LIVE);
    rm.create_shadow(&fence(rm, LIVE), LIVE, &["orders"]).unwrap();
    shadow_put(rm, Some(3), &[("first_try", &order("open", "ann"))]);
    rm.create_shadow(&fence(rm, LIVE), LIVE, &["orders"]).unwrap();
    shadow_put(rm, Some(4), &[("second_try", &order("open", "ann"))]);
    rm.swap_shadow(&fence(rm, LIVE), &["orders"], LIVE, &shadow_consumer()).unwrap();
    assert_eq!(keys(rm, "orders"), ["second_try"]);
}

/// Generation after generation, each swap serves the latest rebuild, indexes included.
pub fn rebuilds_in_a_row(rm: &Rm) {
    declare(rm);
    lead(rm, LIVE);
    for round in 0..3_u64 {
        let key = format!("round{round}");
        rm.create_shadow(&fence(rm, LIVE), LIVE, &["orders", "lines"]).unwrap();
        shadow_put(rm, Some(round + 1), &[(&key, &order("open", "ann"))]);
        rm.swap_shadow(&fence(rm, LIVE), &["orders", "lines"], LIVE, &shadow_consumer()).unwrap();
        assert_eq!(keys(rm, "orders"), [key.as_str()]);
        assert_eq!(rm.checkpoint(LIVE).unwrap(), round + 1);
        let mut found = Vec::new();
        rm.transact(&fence(rm, LIVE), LIVE, None, &mut |txn| {
            found = txn.find("orders", "customer", "ann")?;
            txn.put("lines", &key, "{}")
        })
        .unwrap();
        assert_eq!(found.len(), 1, "round {round}");
        assert_eq!(keys(rm, "lines"), [key.as_str()]);
    }
    declare(rm);
    assert_eq!(keys(rm, "orders"), ["round2"], "declaring again keeps the latest generation");
}

/// A rebuild swapped in before it committed any checkpoint rebuilt nothing: the live
/// consumer starts again from 0 (keeping its old checkpoint would skip every event it
/// had applied to the tables just thrown away).
pub fn swap_without_a_rebuild_checkpoint_starts_from_zero(rm: &Rm) {
    declare(rm);
    lead(rm, LIVE);
    put_all(rm, LIVE, Some(40), "orders", &[("old", &order("open", "ann"))]);
    rm.create_shadow(&fence(rm, LIVE), LIVE, &["orders"]).unwrap();
    rm.swap_shadow(&fence(rm, LIVE), &["orders"], LIVE, &shadow_consumer()).unwrap();
    assert!(keys(rm, "orders").is_empty());
    assert_eq!(rm.checkpoint(LIVE).unwrap(), 0);
}

/// Swapping a table that has no shadow is refused, and the live table stays.
pub fn swap_without_a_shadow_is_refused(rm: &Rm) {
    declare(rm);
    lead(rm, LIVE);
    put_all(rm, LIVE, Some(40), "orders", &[("old", &order("open", "ann"))]);
    rm.transact_shadow(
        &fence(rm, &shadow_consumer()),
        &shadow_consumer(),
        Some(3),
        &mut |_| Ok(()),
    )
    .unwrap();
    assert!(rm.swap_shadow(&fence(rm, LIVE), &["orders"], LIVE, &shadow_consumer()).is_err());
    assert_eq!(keys(rm, "orders"), ["old"]);
    assert_eq!(rm.checkpoint(LIVE).unwrap(), 40);
    put_all(rm, LIVE, Some(41), "orders", &[("new", &order("open", "ann"))]);
    assert_eq!(keys(rm, "orders"), ["new", "old"], "the live table still takes writes");
}

/// A rebuild of several tables, one of them unknown, creates no shadow at all.
pub fn shadows_of_an_unknown_table_are_all_refused(rm: &Rm) {
    declare(rm);
    lead(rm, LIVE);
    put_all(rm, LIVE, Some(40), "orders", &[("old", &order("open", "ann"))]);
    let refused = rm.create_shadow(&fence(rm, LIVE), LIVE, &["orders", "nowhere"]);
    assert!(matches!(refused, Err(ReadModelError::Unknown(_))), "{refused:?}");
    rm.transact_shadow(
        &fence(rm, &shadow_consumer()),
        &shadow_consumer(),
        Some(3),
        &mut |_| Ok(()),
    )
    .unwrap();
    assert!(
        rm.swap_shadow(&fence(rm, LIVE), &["orders"], LIVE, &shadow_consumer()).is_err(),
        "no shadow of orders"
    );
    assert_eq!(keys(rm, "orders"), ["old"]);
}

/// The projection version a read model was built with is recorded per projection.
pub fn projection_versions(rm: &Rm) {
    assert_eq!(rm.projection_version("p").unwrap(), None);
    rm.set_projection_version("p", 2).unwrap();
    assert_eq!(rm.projection_version("p").unwrap(), Some(2));
    rm.set_projection_version("p", 3).unwrap();
    assert_eq!(rm.projection_version("p").unwrap(), Some(3));
    assert_eq!(rm.projection_version("q").unwrap(), None);
}

/// Another process reads the new generation as soon as it is swapped in.
pub fn another_process_sees_the_swap(rm: &Rm, peer: Rm) {
    declare(rm);
    declare(&peer);
    lead(rm, LIVE);
    put_all(rm, LIVE, Some(5), "orders", &[("old", &order("open", "ann"))]);
    assert_eq!(keys(&peer, "orders"), ["old"]);
    rm.create_shadow(&fence(rm, LIVE), LIVE, &["orders"]).unwrap();
    shadow_put(rm, Some(2), &[("new", &order("open", "ann"))]);
    assert_eq!(keys(&peer, "orders"), ["old"]);
    rm.swap_shadow(&fence(rm, LIVE), &["orders"], LIVE, &shadow_consumer()).unwrap();
    assert_eq!(keys(&peer, "orders"), ["new"]);
    assert_eq!(peer.checkpoint(LIVE).unwrap(), 2);
}

/// The keys of `table` whose indexed `field` is `value`, through `list`'s filter.
fn filtered(rm: &Rm, table: &str, field: &str, value: &str) -> Vec<String> {
    rm.list(&ListQuery {
        table: table.to_owned(),
        filters: vec![(field.to_owned(), value.to_owned())],
        after: None,
        limit: 100,
    })
    .unwrap()
    .into_iter()
    .map(|(k, _)| k)
    .collect()
}

/// The keys a shadow transaction of the rebuild reads for `field = value` (`find`).
fn shadow_found(rm: &Rm, field: &str, value: &str) -> Vec<String> {
    let mut found = Vec::new();
    rm.transact_shadow(&fence(rm, &shadow_consumer()), &shadow_consumer(), None, &mut |txn| {
        found = txn.find("orders", field, value)?.into_iter().map(|(k, _)| k).collect();
        Ok(())
    })
    .unwrap();
    found
}

/// The swap is all or nothing: refused for one table (it has no shadow), it makes no
/// other table live and leaves both checkpoints as they were; the shadow it refused to
/// swap is still there to swap whole.
pub fn a_refused_swap_changes_nothing(rm: &Rm) {
    declare(rm);
    lead(rm, LIVE);
    put_all(rm, LIVE, Some(40), "orders", &[("old", &order("open", "ann"))]);
    rm.create_shadow(&fence(rm, LIVE), LIVE, &["orders"]).unwrap();
    shadow_put(rm, Some(12), &[("new", &order("paid", "bob"))]);
    assert!(
        rm.swap_shadow(&fence(rm, LIVE), &["orders", "lines"], LIVE, &shadow_consumer()).is_err(),
        "lines has no shadow"
    );
    assert_eq!(keys(rm, "orders"), ["old"], "orders was not swapped alone");
    assert_eq!(rm.checkpoint(LIVE).unwrap(), 40);
    assert_eq!(rm.checkpoint(&shadow_consumer()).unwrap(), 12);
    rm.swap_shadow(&fence(rm, LIVE), &["orders"], LIVE, &shadow_consumer()).unwrap();
    assert_eq!(keys(rm, "orders"), ["new"]);
    assert_eq!(rm.checkpoint(LIVE).unwrap(), 12);
    assert_eq!(filtered(rm, "orders", "status", "paid"), ["new"]);
}

/// After an abort, live is as it was, and the next rebuild's shadow starts empty (none
/// of the abandoned rebuild's documents nor its checkpoint).
pub fn a_shadow_after_an_abort_starts_clean(rm: &Rm) {
    declare(rm);
    lead(rm, LIVE);
    put_all(rm, LIVE, Some(8), "orders", &[("live", &order("open", "ann"))]);
    rm.create_shadow(&fence(rm, LIVE), LIVE, &["orders"]).unwrap();
    shadow_put(rm, Some(3), &[("abandoned", &order("open", "bob"))]);
    rm.abort_shadow(&fence(rm, &shadow_consumer()), &["orders"], &shadow_consumer()).unwrap();
    assert_eq!(keys(rm, "orders"), ["live"]);
    assert_eq!(filtered(rm, "orders", "status", "open"), ["live"], "live's index is intact");
    assert_eq!(rm.checkpoint(LIVE).unwrap(), 8);

    rm.create_shadow(&fence(rm, LIVE), LIVE, &["orders"]).unwrap();
    assert_eq!(rm.checkpoint(&shadow_consumer()).unwrap(), 0);
    assert!(shadow_found(rm, "status", "open").is_empty(), "the abandoned shadow is gone");
    shadow_put(rm, Some(5), &[("fresh", &order("open", "cy"))]);
    assert_eq!(shadow_found(rm, "customer", "cy"), ["fresh"]);
    rm.swap_shadow(&fence(rm, LIVE), &["orders"], LIVE, &shadow_consumer()).unwrap();
    assert_eq!(keys(rm, "orders"), ["fresh"]);
    assert_eq!(rm.checkpoint(LIVE).unwrap(), 5);
}

/// Two swaps in a row (the table renamed into place twice, each time with the indexes
/// its shadow was built with), then a third shadow beside it: every index answers, on
/// the live table and in the shadow, and after the tables are declared again (a
/// restart).
pub fn indexes_answer_after_two_swaps(rm: &Rm) {
    declare(rm);
    lead(rm, LIVE);
    for (round, customer) in [(1_u64, "ann"), (2, "bob")] {
        rm.create_shadow(&fence(rm, LIVE), LIVE, &["orders", "lines"]).unwrap();
        shadow_put(
            rm,
            Some(round),
            &[
                (&format!("open{round}"), &order("open", customer)),
                ("paid", &order("paid", customer)),
            ],
        );
        rm.swap_shadow(&fence(rm, LIVE), &["orders", "lines"], LIVE, &shadow_consumer()).unwrap();
    }
    assert_eq!(keys(rm, "orders"), ["open2", "paid"]);
    assert_eq!(filtered(rm, "orders", "status", "open"), ["open2"]);
    assert_eq!(filtered(rm, "orders", "customer", "bob"), ["open2", "paid"]);
    assert!(filtered(rm, "orders", "customer", "ann").is_empty());

    rm.create_shadow(&fence(rm, LIVE), LIVE, &["orders", "lines"]).unwrap();
    shadow_put(rm, Some(3), &[("third", &order("open", "cy"))]);
    assert_eq!(shadow_found(rm, "customer", "cy"), ["third"]);
    assert_eq!(filtered(rm, "orders", "customer", "bob"), ["open2", "paid"], "live unchanged");
    declare(rm);
    assert_eq!(filtered(rm, "orders", "status", "paid"), ["paid"]);
    // Live writes keep the live indexes current.
    put_all(rm, LIVE, Some(9), "orders", &[("paid", &order("open", "bob"))]);
    assert_eq!(filtered(rm, "orders", "status", "open"), ["open2", "paid"]);
    assert!(filtered(rm, "orders", "status", "paid").is_empty());
}

/// A term that is over cannot touch its successor's rebuild: its `create_shadow` does
/// not empty it, its shadow writes and its swap and abort are refused, and the
/// successor's shadow swaps in whole.
pub fn a_stale_fence_cannot_touch_the_shadow(rm: &Rm) {
    declare(rm);
    let old = lead(rm, LIVE);
    put_all(rm, LIVE, Some(10), "orders", &[("live", &order("open", "ann"))]);
    rm.resign(LIVE);
    let new = lead(rm, LIVE);
    rm.create_shadow(&new, LIVE, &["orders"]).unwrap();
    rm.transact_shadow(&new, &shadow_consumer(), Some(7), &mut |txn| {
        txn.put("orders", "rebuilt", &order("paid", "bob"))
    })
    .unwrap();

    assert!(deposed(rm.create_shadow(&old, LIVE, &["orders"])));
    assert!(deposed(rm.transact_shadow(&old, &shadow_consumer(), Some(99), &mut |txn| {
        txn.put("orders", "stale", &order("open", "ann"))
    })));
    assert!(deposed(rm.swap_shadow(&old, &["orders"], LIVE, &shadow_consumer())));
    assert!(deposed(rm.abort_shadow(&old, &["orders"], &shadow_consumer())));
    assert_eq!(keys(rm, "orders"), ["live"]);
    assert_eq!(rm.checkpoint(LIVE).unwrap(), 10);
    assert_eq!(rm.checkpoint(&shadow_consumer()).unwrap(), 7);

    rm.swap_shadow(&new, &["orders"], LIVE, &shadow_consumer()).unwrap();
    assert_eq!(keys(rm, "orders"), ["rebuilt"], "the stale term wrote nothing, dropped nothing");
    assert_eq!(rm.checkpoint(LIVE).unwrap(), 7);
}

/// A process that dies in the middle of a rebuild (shadow created and half filled, never
/// swapped) leaves its shadow behind; the process that takes the consumer over starts a
/// rebuild from an empty shadow, and its swap makes only its own documents live.
pub fn a_crashed_rebuilds_shadow_is_discarded(rm: &Rm, peer: Rm) {
    declare(rm);
    declare(&peer);
    let crashed = lead(&peer, LIVE);
    put_all(&peer, LIVE, Some(20), "orders", &[("live", &order("open", "ann"))]);
    peer.create_shadow(&crashed, LIVE, &["orders"]).unwrap();
    peer.transact_shadow(&crashed, &shadow_consumer(), Some(11), &mut |txn| {
        txn.put("orders", "half", &order("open", "bob"))
    })
    .unwrap();
    drop(peer);
    eventually("the consumer is free once its leader is gone", || {
        rm.try_lead(LIVE).unwrap().is_some()
    });

    rm.create_shadow(&fence(rm, LIVE), LIVE, &["orders"]).unwrap();
    assert!(shadow_found(rm, "customer", "bob").is_empty(), "the leftover was discarded");
    shadow_put(rm, Some(20), &[("whole", &order("paid", "cy"))]);
    rm.swap_shadow(&fence(rm, LIVE), &["orders"], LIVE, &shadow_consumer()).unwrap();
    assert_eq!(keys(rm, "orders"), ["whole"]);
    assert_eq!(filtered(rm, "orders", "status", "paid"), ["whole"]);
    assert_eq!(rm.checkpoint(LIVE).unwrap(), 20);
}
