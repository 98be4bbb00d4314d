//! Property test: random append sequences against a plain in-memory model give the same
//! outcomes, errors and reads as the backend.

use std::future::Future;
use std::sync::Arc;

use cairn_core::{AllFilter, AppendError, EventStore, ExpectedVersion, StreamRead};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use uuid::Uuid;

use crate::Harness;
use crate::fixtures::{append_of, event_with_id};

/// One generated operation.
#[derive(Debug, Clone)]
enum Op {
    /// A fresh append of `count` new events.
    Fresh { stream: u8, expected: ExpectedVersion, count: u8 },
    /// Re-send the `nth` earlier request exactly (ids and stream), with another expectation.
    Resend { nth: usize, expected: ExpectedVersion },
    /// A fresh append that smuggles in the id of an earlier event at `slot`.
    Clash { stream: u8, count: u8, nth_event: usize, slot: u8 },
}

fn expected() -> impl Strategy<Value = ExpectedVersion> {
    prop_oneof![
        Just(ExpectedVersion::Any),
        Just(ExpectedVersion::NoStream),
        Just(ExpectedVersion::StreamExists),
        (0u64..6).prop_map(ExpectedVersion::Exact),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, expected(), 1u8..4).prop_map(|(stream, expected, count)| Op::Fresh { stream, expected, count }),
        2 => (any::<usize>(), expected()).prop_map(|(nth, expected)| Op::Resend { nth, expected }),
        1 => (0u8..4, 1u8..4, any::<usize>(), any::<u8>())
            .prop_map(|(stream, count, nth_event, slot)| Op::Clash { stream, count, nth_event, slot }),
    ]
}

/// The reference: a list of `(stream, event id)` in `$all` order.
#[derive(Default)]
struct Model {
    log: Vec<(String, Uuid)>,
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ok { first: u64, last: u64, log_index: usize },
    WrongVersion(u64),
    Duplicate,
}

impl Model {
    fn version(&self, stream: &str) -> u64 {
        self.log.iter().filter(|(s, _)| s == stream).count() as u64
    }

    fn locate(&self, id: Uuid) -> Option<(usize, String, u64)> {
        let index = self.log.iter().position(|(_, e)| *e == id)?;
        let stream = self.log[index].0.clone();
        let version = self.log[..=index].iter().filter(|(s, _)| *s == stream).count() as u64;
        Some((index, stream, version))
    }

    fn append(&mut self, stream: &str, expected: ExpectedVersion, ids: &[Uuid]) -> Outcome {
        if self.locate(ids[0]).is_some() {
            let found: Vec<_> = ids.iter().map(|id| self.locate(*id)).collect();
            let faithful = found.iter().all(|f| f.as_ref().is_some_and(|(_, s, _)| s == stream))
                && found.windows(2).all(|w| match (&w[0], &w[1]) {
                    (Some((_, _, a)), Some((_, _, b))) => *b == a + 1,
                    _ => false,
                });
            return match (faithful, found.first(), found.last()) {
                (true, Some(Some((_, _, first))), Some(Some((index, _, last)))) => {
                    Outcome::Ok { first: *first, last: *last, log_index: *index }
                }
                _ => Outcome::Duplicate,
            };
        }
        // The expected version is checked before the other ids: backends find a clash on
        // a later id only when they insert it.
        let actual = self.version(stream);
        let ok = match expected {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => actual == 0,
            ExpectedVersion::StreamExists => actual > 0,
            ExpectedVersion::Exact(n) => actual == n,
        };
        if !ok {
            return Outcome::WrongVersion(actual);
        }
        if ids.iter().any(|id| self.locate(*id).is_some()) {
            return Outcome::Duplicate;
        }
        self.log.extend(ids.iter().map(|id| (stream.to_owned(), *id)));
        Outcome::Ok {
            first: actual + 1,
            last: actual + ids.len() as u64,
            log_index: self.log.len() - 1,
        }
    }
}

/// Runs random operation sequences on fresh stores from `factory` and on the model.
///
/// # Panics
/// When the backend and the model disagree (that is the test failing).
pub fn check_against_model<F, Fut>(factory: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Harness>,
{
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let config = Config { cases: 32, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    runner
        .run(&proptest::collection::vec(op(), 1..40), |ops| {
            rt.block_on(async {
                let harness = factory().await;
                if harness.skipped {
                    return;
                }
                run_case(&harness.store, &ops).await;
                harness.store.close().await;
            });
            Ok(())
        })
        .unwrap();
}

async fn run_case(store: &Arc<dyn EventStore>, ops: &[Op]) {
    let mut model = Model::default();
    let mut requests: Vec<(String, Vec<Uuid>)> = Vec::new();
    let mut positions: Vec<u64> = Vec::new(); // positions by model log index
    for op in ops {
        let (stream, expected, ids) = match op {
            Op::Fresh { stream, expected, count } => (
                format!("m-{stream}"),
                *expected,
                (0..*count).map(|_| Uuid::new_v4()).collect::<Vec<_>>(),
            ),
            Op::Resend { nth, expected } if !requests.is_empty() => {
                let (s, ids) = requests[nth % requests.len()].clone();
                (s, *expected, ids)
            }
            Op::Clash { stream, count, nth_event, slot } if !model.log.is_empty() => {
                let mut ids: Vec<Uuid> = (0..*count).map(|_| Uuid::new_v4()).collect();
                let reused = model.log[nth_event % model.log.len()].1;
                let at = *slot as usize % ids.len();
                ids[at] = reused;
                (format!("m-{stream}"), ExpectedVersion::Any, ids)
            }
            _ => continue,
        };
        let expect = model.append(&stream, expected, &ids);
        let events = ids.iter().map(|id| event_with_id(*id, "Tick", 0)).collect();
        let got = store.append(append_of(&stream, expected, events)).await;
        match (&expect, got) {
            (Outcome::Ok { first, last, log_index }, Ok(o)) => {
                assert_eq!(
                    (o.first_version, o.last_version),
                    (*first, *last),
                    "versions for {op:?}"
                );
                if *log_index >= positions.len() {
                    // A fresh append: remember its positions (holes are allowed, order is not).
                    let first_new = positions.len();
                    assert_eq!(*log_index + 1 - first_new, ids.len());
                    let prev = positions.last().copied().unwrap_or(0);
                    assert!(o.position > prev, "positions must increase");
                    for k in 0..ids.len() as u64 {
                        positions.push(o.position - (ids.len() as u64 - 1 - k));
                    }
                } else {
                    assert_eq!(
                        o.position, positions[*log_index],
                        "retry must report the original position"
                    );
                }
            }
            (
                Outcome::WrongVersion(actual),
                Err(AppendError::WrongExpectedVersion { actual: a, .. }),
            ) => {
                assert_eq!(a, *actual);
            }
            (Outcome::Duplicate, Err(AppendError::DuplicateEventId { .. })) => {}
            (expect, got) => panic!("model says {expect:?}, store says {got:?} for {op:?}"),
        }
        requests.push((stream, ids));
    }
    // Final state: `$all` and every stream read back exactly as the model says.
    let all = store.read_all(0, 10_000, &AllFilter::default()).await.unwrap();
    let got: Vec<(String, Uuid)> =
        all.events.iter().map(|e| (e.aggregate_id.clone(), e.event_id)).collect();
    assert_eq!(got, model.log);
    assert_eq!(all.events.iter().map(|e| e.position).collect::<Vec<_>>(), positions);
    for s in 0..4 {
        let stream = format!("m-{s}");
        let v = model.version(&stream);
        assert_eq!(store.stream_version(&stream).await.unwrap(), v);
        if v > 0 {
            let slice =
                store.read_stream(&stream, StreamRead::forward_from(1, 1000)).await.unwrap();
            let ids: Vec<Uuid> = slice.events.iter().map(|e| e.event_id).collect();
            let want: Vec<Uuid> =
                model.log.iter().filter(|(x, _)| *x == stream).map(|(_, id)| *id).collect();
            assert_eq!(ids, want);
        }
    }
}
