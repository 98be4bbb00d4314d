//! Checkpoints: moved with their batch, listed, watched.

use std::time::Duration;

use super::{Rm, declare, fence, lead, order, put_all};

/// A checkpoint is 0 before the first commit, moves with its batch, and stays put when
/// a transaction gives none.
pub fn checkpoint_moves_with_its_batch(rm: &Rm) {
    declare(rm);
    lead(rm, "c");
    assert_eq!(rm.checkpoint("c").unwrap(), 0);
    put_all(rm, "c", Some(5), "orders", &[("a", &order("open", "ann"))]);
    assert_eq!(rm.checkpoint("c").unwrap(), 5);
    put_all(rm, "c", None, "orders", &[("b", &order("open", "ann"))]);
    assert_eq!(rm.checkpoint("c").unwrap(), 5, "no checkpoint given: unchanged");
    rm.transact(&fence(rm, "c"), "c", Some(9), &mut |_| Ok(())).unwrap();
    assert_eq!(rm.checkpoint("c").unwrap(), 9, "an empty batch moves it too");
    assert_eq!(rm.checkpoint("other").unwrap(), 0, "per consumer");
}

/// `checkpoints` lists every consumer that committed one, by name.
pub fn checkpoints_lists_every_consumer(rm: &Rm) {
    declare(rm);
    for (consumer, position) in [("zeta", 4), ("alpha", 7), ("mid#p0of2", 2)] {
        lead(rm, consumer);
        rm.transact(&fence(rm, consumer), consumer, Some(position), &mut |_| Ok(())).unwrap();
    }
    lead(rm, "silent");
    rm.transact(&fence(rm, "silent"), "silent", None, &mut |_| Ok(())).unwrap();
    assert_eq!(
        rm.checkpoints().unwrap(),
        [("alpha".to_owned(), 7), ("mid#p0of2".to_owned(), 2), ("zeta".to_owned(), 4)]
    );
}

/// A backend that can be written by other processes says so with `changes`, and it ticks
/// when a checkpoint is committed.
pub fn changes_tick_on_commit(rm: &Rm) {
    declare(rm);
    lead(rm, "c");
    let Some(mut changes) = rm.changes() else {
        // One process writes this backend: nothing to watch, and nothing to check.
        return;
    };
    changes.mark_unchanged();
    rm.transact(&fence(rm, "c"), "c", Some(3), &mut |_| Ok(())).unwrap();
    let ticked = tokio::runtime::Handle::current()
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), changes.changed()).await });
    assert!(matches!(ticked, Ok(Ok(()))), "no tick after a committed checkpoint");
}

/// A derived batch (a projection's, which a backend may commit without waiting for
/// durability) commits its documents and checkpoint together, is refused under an old
/// fence, and a failing one writes nothing — as any transaction.
pub fn derived_batches_commit_with_their_checkpoint(rm: &Rm) {
    declare(rm);
    lead(rm, "d");
    let doc = order("open", "ann");
    rm.transact_derived(&fence(rm, "d"), "d", 7, &mut |txn| txn.put("orders", "o1", &doc)).unwrap();
    assert_eq!(rm.checkpoint("d").unwrap(), 7);
    assert_eq!(rm.get("orders", "o1").unwrap().as_deref(), Some(doc.as_str()));
    let failed = rm.transact_derived(&fence(rm, "d"), "d", 9, &mut |txn| {
        txn.put("orders", "o2", &doc)?;
        Err(cairn_core::readmodel::ReadModelError::Handler("no".into()))
    });
    assert!(failed.is_err());
    assert_eq!(rm.checkpoint("d").unwrap(), 7, "nothing of a failed batch");
    assert_eq!(rm.get("orders", "o2").unwrap(), None);
    let old = fence(rm, "d");
    rm.resign("d");
    lead(rm, "d");
    let refused = rm.transact_derived(&old, "d", 11, &mut |txn| txn.put("orders", "o3", &doc));
    assert!(refused.is_err(), "an old term's batch is refused");
    assert_eq!(rm.checkpoint("d").unwrap(), 7);
}
