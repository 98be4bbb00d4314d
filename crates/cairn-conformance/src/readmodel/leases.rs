//! Leases: each consumer is led by one process at a time, and only its leader writes
//! under its name.

use std::time::{Duration, Instant};

use cairn_core::readmodel::{Fence, REBUILD_SUFFIX, ReadModelError};

use super::{Rm, declare, lead, letter, order, put_all};

/// Polls `condition` for up to ten seconds (a networked backend learns of a closed
/// session, or of a heartbeat, a little later).
pub(super) fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `try_lead` granted the consumer.
fn takes(rm: &Rm, consumer: &str) -> bool {
    rm.try_lead(consumer).unwrap().is_some()
}

/// A process leads what it takes, again and again (the same term), and after resigning
/// can take it back, in a new term with a greater epoch.
pub fn a_store_leads_what_it_takes(rm: &Rm) {
    let first = rm.try_lead("c").unwrap().expect("a fresh store grants c");
    assert_eq!(first.consumer(), "c");
    assert_eq!(rm.try_lead("c").unwrap(), Some(first.clone()), "taking what it leads: same term");
    assert!(rm.leads("c"));
    rm.resign("c");
    let second = rm.try_lead("c").unwrap().expect("nobody else took it");
    assert!(second.epoch() > first.epoch(), "a new term: {first:?} then {second:?}");
    assert!(rm.leads("c"));
    let other = lead(rm, "d");
    assert_eq!(other.consumer(), "d", "terms are per consumer");
}

/// A store counts at least its own process.
pub fn live_members_counts_this_process(rm: &Rm) {
    eventually("this process is a member", || rm.live_members().unwrap() >= 1);
}

/// Two processes: exactly one leads a consumer; leadership is per consumer.
pub fn one_process_leads_a_consumer(rm: &Rm, peer: Rm) {
    assert!(takes(rm, "c"));
    assert!(!takes(&peer, "c"), "c has a leader");
    assert!(!takes(&peer, "c"), "still");
    assert!(rm.leads("c"));
    assert!(!peer.leads("c"));
    assert!(takes(&peer, "d"), "d is another consumer");
    assert!(!takes(rm, "d"));
    assert!(rm.leads("c") && peer.leads("d") && !rm.leads("d"));
}

/// Resigning hands the consumer to the next process that tries; the one that resigned
/// no longer leads it and cannot take it back.
pub fn resign_hands_over(rm: &Rm, peer: Rm) {
    let old = lead(rm, "c");
    assert!(!takes(&peer, "c"));
    rm.resign("c");
    assert!(!rm.leads("c"));
    eventually("the peer takes c over", || takes(&peer, "c"));
    assert!(peer.leads("c"));
    assert!(lead(&peer, "c").epoch() > old.epoch(), "the peer's term comes after");
    assert!(!takes(rm, "c"), "the peer leads c now");
    assert!(!rm.leads("c"));
    peer.resign("nothing-led");
    assert!(peer.leads("c"), "resigning another consumer changes nothing");
}

/// A process that ends (its handle dropped, its sessions closed) releases what it led.
pub fn a_process_that_ends_releases_its_leases(rm: &Rm, peer: Rm) {
    assert!(takes(&peer, "c"));
    assert!(!takes(rm, "c"));
    drop(peer);
    eventually("c is free once its leader is gone", || takes(rm, "c"));
    assert!(rm.leads("c"));
}

/// Whether a write was refused for want of leadership (not leading, or a stale term).
pub(super) fn deposed<T: std::fmt::Debug>(r: Result<T, ReadModelError>) -> bool {
    match r {
        Err(e) => e.is_deposed(),
        Ok(v) => panic!("written without leadership: {v:?}"),
    }
}

/// Tries every kind of consumer write under `stale` on `rm`, asserting each is refused.
fn every_write_is_refused(rm: &Rm, stale: &Fence, parked: i64) {
    let rebuild = format!("c{REBUILD_SUFFIX}");
    assert!(deposed(rm.transact(stale, "c", Some(99), &mut |txn| txn.put("orders", "b", "{}"))));
    assert!(deposed(rm.park(stale, 100, &letter("c", 100, "b"))));
    assert!(deposed(
        rm.resolve_dead_letter(stale, "c", parked, &mut |txn| { txn.put("orders", "b", "{}") })
    ));
    assert!(deposed(rm.dead_letter_failed(stale, "c", parked, "x")));
    assert!(deposed(rm.create_shadow(stale, "c", &["orders"])));
    assert!(deposed(rm.transact_shadow(stale, &rebuild, Some(1), &mut |_| Ok(()))));
    assert!(deposed(rm.swap_shadow(stale, &["orders"], "c", &rebuild)));
    assert!(deposed(rm.abort_shadow(stale, &["orders"], &rebuild)));
}

/// A process that does not lead a consumer cannot write under its name (nor under its
/// rebuild's), even with the leader's own fence in hand: nothing it tried is stored. Once
/// the leader resigns and the peer takes over, the old leader's fence is refused too.
pub fn a_follower_cannot_write(rm: &Rm, peer: Rm) {
    declare(rm);
    declare(&peer);
    let fence = lead(rm, "c");
    put_all(rm, "c", Some(4), "orders", &[("a", &order("open", "ann"))]);
    let parked = rm.park(&fence, 5, &letter("c", 5, "a")).unwrap();

    every_write_is_refused(&peer, &fence, parked);

    assert_eq!(rm.get("orders", "b").unwrap(), None);
    assert_eq!(rm.checkpoint("c").unwrap(), 5);
    let letters = rm.dead_letters(Some("c")).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, letter("c", 5, "a").attempts);
    assert_eq!(rm.get("orders", "a").unwrap().as_deref(), Some(order("open", "ann").as_str()));

    // Once the leader resigns and the peer takes over, the roles swap.
    rm.resign("c");
    eventually("the peer takes c over", || takes(&peer, "c"));
    put_all(&peer, "c", Some(6), "orders", &[("b", "{}")]);
    every_write_is_refused(rm, &fence, parked);
    assert_eq!(rm.checkpoint("c").unwrap(), 6);
}

/// A deposed term's fence is refused for every kind of write even in the process that
/// leads the consumer again (a task of the old term still running): only the live
/// term's fence writes, and a fence of one consumer is no proof for another.
pub fn a_stale_fence_writes_nothing(rm: &Rm) {
    declare(rm);
    let old = lead(rm, "c");
    put_all(rm, "c", Some(4), "orders", &[("a", &order("open", "ann"))]);
    let parked = rm.park(&old, 5, &letter("c", 5, "a")).unwrap();
    rm.resign("c");
    let new = lead(rm, "c");
    assert!(new.epoch() > old.epoch(), "{old:?} then {new:?}");

    every_write_is_refused(rm, &old, parked);
    let stale = rm.transact(&old, "c", Some(99), &mut |_| Ok(()));
    assert!(matches!(stale, Err(ReadModelError::Fenced { .. })), "{stale:?}");
    assert_eq!(rm.get("orders", "b").unwrap(), None, "nothing of the old term landed");
    assert_eq!(rm.checkpoint("c").unwrap(), 5);
    assert_eq!(rm.dead_letters(Some("c")).unwrap().len(), 1);
    assert_eq!(rm.dead_letters(Some("c")).unwrap()[0].attempts, letter("c", 5, "a").attempts);

    // The live term writes; another consumer's fence proves nothing about this one.
    put_all(rm, "c", Some(7), "orders", &[("b", "{}")]);
    assert_eq!(rm.checkpoint("c").unwrap(), 7);
    let other = lead(rm, "d");
    assert!(deposed(rm.transact(&other, "c", Some(99), &mut |_| Ok(()))));
    assert_eq!(rm.checkpoint("c").unwrap(), 7);
}

/// A rebuild's shadow belongs to the term that made it: once the consumer changed hands,
/// the old term cannot fill, swap or drop it, and the new term's `create_shadow` starts
/// over from an empty shadow.
pub fn a_deposed_rebuild_cannot_swap(rm: &Rm) {
    declare(rm);
    let old = lead(rm, "c");
    put_all(rm, "c", Some(10), "orders", &[("live", &order("open", "ann"))]);
    let rebuild = format!("c{REBUILD_SUFFIX}");
    rm.create_shadow(&old, "c", &["orders"]).unwrap();
    rm.transact_shadow(&old, &rebuild, Some(3), &mut |txn| txn.put("orders", "half", "{}"))
        .unwrap();
    rm.resign("c");
    let new = lead(rm, "c");

    assert!(deposed(rm.swap_shadow(&old, &["orders"], "c", &rebuild)));
    assert!(deposed(rm.transact_shadow(&old, &rebuild, Some(4), &mut |_| Ok(()))));
    assert!(deposed(rm.abort_shadow(&old, &["orders"], &rebuild)));
    assert_eq!(rm.get("orders", "live").unwrap().as_deref(), Some(order("open", "ann").as_str()));
    assert_eq!(rm.checkpoint("c").unwrap(), 10, "no swap happened");

    rm.create_shadow(&new, "c", &["orders"]).unwrap();
    rm.transact_shadow(&new, &rebuild, Some(10), &mut |txn| txn.put("orders", "fresh", "{}"))
        .unwrap();
    rm.swap_shadow(&new, &["orders"], "c", &rebuild).unwrap();
    assert_eq!(rm.get("orders", "half").unwrap(), None, "the old term's shadow was emptied");
    assert!(rm.get("orders", "fresh").unwrap().is_some());
    assert_eq!(rm.checkpoint("c").unwrap(), 10);
}

/// Every process on the store is counted (partitions are spread by it).
pub fn live_members_counts_every_process(rm: &Rm, peer: Rm) {
    eventually("both processes are members", || {
        rm.live_members().unwrap() >= 2 && peer.live_members().unwrap() >= 2
    });
}
