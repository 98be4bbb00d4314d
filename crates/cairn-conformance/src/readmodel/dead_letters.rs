//! Dead letters: parked with the checkpoint, listed per consumer, resolved or retried.

use cairn_core::readmodel::{DeadLetter, DeadLetterCursor, ReadModelError};

use super::{Rm, declare, fence, lead, letter, order, refused};

fn without_id(letters: Vec<DeadLetter>) -> Vec<DeadLetter> {
    letters.into_iter().map(|l| DeadLetter { id: 0, ..l }).collect()
}

/// Parking stores the letter as given and moves the consumer's checkpoint past it, and
/// never back.
pub fn park_lists_and_moves_the_checkpoint_forward_only(rm: &Rm) {
    declare(rm);
    lead(rm, "c");
    let (first, second, late) =
        (letter("c", 10, "a1"), letter("c", 12, "a2"), letter("c", 11, "a1"));
    let id1 = rm.park(&fence(rm, &first.projection), 10, &first).unwrap();
    assert_eq!(rm.checkpoint("c").unwrap(), 10);
    let id2 = rm.park(&fence(rm, &second.projection), 12, &second).unwrap();
    assert_ne!(id1, id2, "each letter has its own id");
    assert_eq!(rm.checkpoint("c").unwrap(), 12);
    let id3 = rm.park(&fence(rm, &late.projection), 11, &late).unwrap();
    assert_eq!(rm.checkpoint("c").unwrap(), 12, "parking never moves a checkpoint back");
    let listed = rm.dead_letters(Some("c")).unwrap();
    assert_eq!(listed.iter().map(|l| l.id).collect::<Vec<_>>(), [id1, id3, id2], "by position");
    assert_eq!(without_id(listed), [first, late, second], "stored as given");
}

/// Letters belong to their consumer: listed with it, resolved only by it.
pub fn dead_letters_are_kept_per_consumer(rm: &Rm) {
    declare(rm);
    lead(rm, "b");
    lead(rm, "a");
    let ib = rm.park(&fence(rm, &letter("b", 5, "x").projection), 5, &letter("b", 5, "x")).unwrap();
    let ia = rm.park(&fence(rm, &letter("a", 7, "x").projection), 7, &letter("a", 7, "x")).unwrap();
    assert_eq!(rm.dead_letters(Some("a")).unwrap().iter().map(|l| l.id).collect::<Vec<_>>(), [ia]);
    assert_eq!(rm.dead_letters(Some("b")).unwrap().iter().map(|l| l.id).collect::<Vec<_>>(), [ib]);
    assert!(rm.dead_letters(Some("nobody")).unwrap().is_empty());
    assert_eq!(
        rm.dead_letters(None).unwrap().iter().map(|l| l.id).collect::<Vec<_>>(),
        [ia, ib],
        "all of them, by consumer"
    );
    assert_eq!(rm.checkpoint("a").unwrap(), 7);
    assert_eq!(rm.checkpoint("b").unwrap(), 5);
    let wrong = rm.resolve_dead_letter(&fence(rm, "a"), "a", ib, &mut |_| Ok(()));
    assert_eq!(wrong, Err(ReadModelError::NoSuchDeadLetter(ib)), "b's letter is not a's");
    assert_eq!(rm.dead_letters(Some("b")).unwrap().len(), 1);
    let wrong = rm.dead_letter_failed(&fence(rm, "a"), "a", ib, "nope");
    assert_eq!(wrong, Err(ReadModelError::NoSuchDeadLetter(ib)));
}

/// Resolving runs the retry's change and removes the letter in one transaction; a retry
/// that fails changes nothing.
pub fn resolve_runs_the_change_and_removes_the_letter(rm: &Rm) {
    declare(rm);
    lead(rm, "c");
    let id =
        rm.park(&fence(rm, &letter("c", 4, "a1").projection), 4, &letter("c", 4, "a1")).unwrap();
    let other =
        rm.park(&fence(rm, &letter("c", 6, "a2").projection), 6, &letter("c", 6, "a2")).unwrap();
    let failed = rm.resolve_dead_letter(&fence(rm, "c"), "c", id, &mut |txn| {
        txn.put("orders", "a1", &order("open", "ann"))?;
        Err(refused())
    });
    assert_eq!(failed, Err(refused()));
    assert_eq!(rm.get("orders", "a1").unwrap(), None, "a failed retry writes nothing");
    assert_eq!(rm.dead_letters(Some("c")).unwrap().len(), 2, "and keeps its letter");
    rm.resolve_dead_letter(&fence(rm, "c"), "c", id, &mut |txn| {
        txn.put("orders", "a1", &order("open", "ann"))
    })
    .unwrap();
    assert!(rm.get("orders", "a1").unwrap().is_some());
    assert_eq!(
        rm.dead_letters(Some("c")).unwrap().iter().map(|l| l.id).collect::<Vec<_>>(),
        [other]
    );
    assert_eq!(rm.checkpoint("c").unwrap(), 6, "resolving does not move the checkpoint");
}

/// A letter resolved meanwhile (another call, another process) is reported, and the
/// change that came with the second resolution is rolled back.
pub fn resolving_a_gone_letter_rolls_back(rm: &Rm) {
    declare(rm);
    lead(rm, "c");
    let id =
        rm.park(&fence(rm, &letter("c", 4, "a1").projection), 4, &letter("c", 4, "a1")).unwrap();
    rm.resolve_dead_letter(&fence(rm, "c"), "c", id, &mut |_| Ok(())).unwrap();
    let again = rm.resolve_dead_letter(&fence(rm, "c"), "c", id, &mut |txn| {
        txn.put("orders", "twice", &order("open", "ann"))
    });
    assert_eq!(again, Err(ReadModelError::NoSuchDeadLetter(id)));
    assert_eq!(rm.get("orders", "twice").unwrap(), None, "rolled back");
    assert!(rm.dead_letters(None).unwrap().is_empty());
}

/// A failed retry counts one more attempt and keeps the latest error.
pub fn failed_retry_is_counted(rm: &Rm) {
    declare(rm);
    lead(rm, "c");
    let parked = letter("c", 4, "a1");
    let id = rm.park(&fence(rm, &parked.projection), 4, &parked).unwrap();
    rm.dead_letter_failed(&fence(rm, "c"), "c", id, "still bad").unwrap();
    rm.dead_letter_failed(&fence(rm, "c"), "c", id, "worse").unwrap();
    let stored = rm.dead_letters(Some("c")).unwrap().remove(0);
    assert_eq!(stored.attempts, parked.attempts + 2);
    assert_eq!(stored.error, "worse");
    assert_eq!(stored.first_failed_at, parked.first_failed_at);
    assert!(stored.last_failed_at > parked.last_failed_at, "the retry's time is recorded");
    assert_eq!(
        rm.dead_letter_failed(&fence(rm, "c"), "c", id + 1000, "x"),
        Err(ReadModelError::NoSuchDeadLetter(id + 1000))
    );
}

/// Pages walk every letter once, in (consumer, position, id) order, whatever the page
/// size, of one consumer or of all; a letter resolved between pages does not lose the
/// place; consumer names with `-` survive the cursor's text.
pub fn pages_walk_every_letter_once(rm: &Rm) {
    declare(rm);
    for consumer in ["relay:x-1", "a", "b"] {
        lead(rm, consumer);
        for position in [9, 3, 5, 7, 1] {
            let l = letter(consumer, position, &format!("agg-{position}"));
            rm.park(&fence(rm, consumer), position, &l).unwrap();
        }
    }
    let key = |l: &DeadLetter| (l.projection.clone(), l.position, l.id);
    let all = rm.dead_letters(None).unwrap();
    assert_eq!(all.len(), 15);
    let mut sorted = all.clone();
    sorted.sort_by_key(key);
    for limit in [1, 2, 4, 15, 100] {
        let mut seen = Vec::new();
        let mut after: Option<DeadLetterCursor> = None;
        loop {
            let page = rm.dead_letters_page(None, after.as_ref(), limit).unwrap();
            assert!(page.len() <= limit);
            let Some(last) = page.last() else { break };
            // The cursor goes through its text form, as over HTTP.
            after = DeadLetterCursor::decode(&DeadLetterCursor::after(last).encode());
            assert!(after.is_some());
            seen.extend(page);
        }
        assert_eq!(seen, sorted, "limit {limit}: every letter once, in order");
    }
    let of_b = rm.dead_letters_page(Some("b"), None, 100).unwrap();
    assert_eq!(of_b, rm.dead_letters(Some("b")).unwrap());
    let of_relay = rm.dead_letters_page(Some("relay:x-1"), None, 2).unwrap();
    assert_eq!(of_relay.len(), 2);
    assert!(of_relay.iter().all(|l| l.projection == "relay:x-1"));
    // The letter the cursor names is gone: the next page starts where it would have.
    let page = rm.dead_letters_page(Some("a"), None, 2).unwrap();
    let cursor = DeadLetterCursor::after(&page[1]);
    rm.resolve_dead_letter(&fence(rm, "a"), "a", page[1].id, &mut |_| Ok(())).unwrap();
    let next = rm.dead_letters_page(Some("a"), Some(&cursor), 100).unwrap();
    let expected: Vec<_> = rm
        .dead_letters(Some("a"))
        .unwrap()
        .into_iter()
        .filter(|l| key(l) > key(&page[1]))
        .collect();
    assert_eq!(next, expected);
    assert_eq!(next.len(), 3);
}
