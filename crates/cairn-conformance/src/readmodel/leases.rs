//! Leases: each consumer is led by one process at a time, and only its leader writes
//! under its name.

use std::time::{Duration, Instant};

use cairn_core::readmodel::{REBUILD_SUFFIX, ReadModelError};

use super::{Rm, declare, lead, letter, order, put_all};

/// Polls `condition` for up to ten seconds (a networked backend learns of a closed
/// session, or of a heartbeat, a little later).
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A process leads what it takes, again and again, and after resigning can take it back.
pub fn a_store_leads_what_it_takes(rm: &Rm) {
    assert!(rm.try_lead("c").unwrap());
    assert!(rm.try_lead("c").unwrap(), "taking what it leads is no error");
    assert!(rm.leads("c"));
    rm.resign("c");
    assert!(rm.try_lead("c").unwrap(), "nobody else took it");
    assert!(rm.leads("c"));
}

/// A store counts at least its own process.
pub fn live_members_counts_this_process(rm: &Rm) {
    eventually("this process is a member", || rm.live_members().unwrap() >= 1);
}

/// Two processes: exactly one leads a consumer; leadership is per consumer.
pub fn one_process_leads_a_consumer(rm: &Rm, peer: Rm) {
    assert!(rm.try_lead("c").unwrap());
    assert!(!peer.try_lead("c").unwrap(), "c has a leader");
    assert!(!peer.try_lead("c").unwrap(), "still");
    assert!(rm.leads("c"));
    assert!(!peer.leads("c"));
    assert!(peer.try_lead("d").unwrap(), "d is another consumer");
    assert!(!rm.try_lead("d").unwrap());
    assert!(rm.leads("c") && peer.leads("d") && !rm.leads("d"));
}

/// Resigning hands the consumer to the next process that tries; the one that resigned
/// no longer leads it and cannot take it back.
pub fn resign_hands_over(rm: &Rm, peer: Rm) {
    lead(rm, "c");
    assert!(!peer.try_lead("c").unwrap());
    rm.resign("c");
    assert!(!rm.leads("c"));
    eventually("the peer takes c over", || peer.try_lead("c").unwrap());
    assert!(peer.leads("c"));
    assert!(!rm.try_lead("c").unwrap(), "the peer leads c now");
    assert!(!rm.leads("c"));
    peer.resign("nothing-led");
    assert!(peer.leads("c"), "resigning another consumer changes nothing");
}

/// A process that ends (its handle dropped, its sessions closed) releases what it led.
pub fn a_process_that_ends_releases_its_leases(rm: &Rm, peer: Rm) {
    assert!(peer.try_lead("c").unwrap());
    assert!(!rm.try_lead("c").unwrap());
    drop(peer);
    eventually("c is free once its leader is gone", || rm.try_lead("c").unwrap());
    assert!(rm.leads("c"));
}

/// A process that does not lead a consumer cannot write under its name (nor under its
/// rebuild's): nothing it tried is stored.
pub fn a_follower_cannot_write(rm: &Rm, peer: Rm) {
    declare(rm);
    declare(&peer);
    lead(rm, "c");
    put_all(rm, "c", Some(4), "orders", &[("a", &order("open", "ann"))]);
    let parked = rm.park(5, &letter("c", 5, "a")).unwrap();
    let not_leader = |r: Result<(), ReadModelError>| matches!(r, Err(ReadModelError::NotLeader(_)));

    assert!(not_leader(peer.transact("c", Some(99), &mut |txn| txn.put("orders", "b", "{}"))));
    assert!(not_leader(peer.park(100, &letter("c", 100, "b")).map(|_| ())));
    assert!(not_leader(peer.resolve_dead_letter("c", parked, &mut |_| Ok(()))));
    assert!(not_leader(peer.dead_letter_failed("c", parked, "x")));
    assert!(not_leader(peer.create_shadow("c", &["orders"])));
    let rebuild = format!("c{REBUILD_SUFFIX}");
    assert!(not_leader(peer.transact_shadow(&rebuild, Some(1), &mut |_| Ok(()))));
    assert!(not_leader(peer.swap_shadow(&["orders"], "c", &rebuild)));
    assert!(not_leader(peer.abort_shadow(&["orders"], &rebuild)));

    assert_eq!(rm.get("orders", "b").unwrap(), None);
    assert_eq!(rm.checkpoint("c").unwrap(), 5);
    let letters = rm.dead_letters(Some("c")).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, letter("c", 5, "a").attempts);
    assert_eq!(rm.get("orders", "a").unwrap().as_deref(), Some(order("open", "ann").as_str()));

    // Once the leader resigns and the peer takes over, the roles swap.
    rm.resign("c");
    eventually("the peer takes c over", || peer.try_lead("c").unwrap());
    put_all(&peer, "c", Some(6), "orders", &[("b", "{}")]);
    assert!(not_leader(rm.transact("c", Some(99), &mut |_| Ok(()))));
    assert_eq!(rm.checkpoint("c").unwrap(), 6);
}

/// Every process on the store is counted (partitions are spread by it).
pub fn live_members_counts_every_process(rm: &Rm, peer: Rm) {
    eventually("both processes are members", || {
        rm.live_members().unwrap() >= 2 && peer.live_members().unwrap() >= 2
    });
}
