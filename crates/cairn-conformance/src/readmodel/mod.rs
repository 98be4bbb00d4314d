//! The read-model conformance suite: one set of behavioural checks every
//! [`ReadModelStore`] backend runs (memory, SQLite, PostgreSQL), one module per small
//! trait.
//!
//! A backend's test file calls [`crate::readmodel_suite!`] with an async factory that
//! returns a fresh, empty [`RmHarness`]; with `peers`, the checks that need two processes
//! on one store (leadership, fencing) run too, on [`RmHarness::peer`]. A backend that one
//! process owns (SQLite: the directory's lock) has no peer and leaves them out.
//!
//! The checks are blocking (so are the traits); the macro runs each on a blocking thread
//! of a multi-threaded runtime, where the networked backends may block on their I/O.

// Every check with a peer owns it: one of them ends that process by dropping it.
#![allow(clippy::needless_pass_by_value)]

pub mod checkpoints;
pub mod dead_letters;
pub mod documents;
pub mod generations;
pub mod leases;
pub mod schemas;
pub mod tokens;

use std::sync::Arc;

use cairn_core::readmodel::{
    DeadLetter, Fence, MemoryReadModels, ReadModelError, ReadModelStore, TableSpec, leadership_key,
};
use cairn_core::timestamp::Timestamp;

/// A fresh, empty read-model store plus whatever keeps it alive.
pub struct RmHarness {
    /// The store under test: this process's handle.
    pub store: Arc<dyn ReadModelStore>,
    /// Another process's handle on the same store (`None`: the backend admits one
    /// process).
    pub peer: Option<Arc<dyn ReadModelStore>>,
    /// Dropped after the test; holds temp dirs, databases, event stores, etc.
    pub guard: Box<dyn std::any::Any + Send + Sync>,
    /// The backend is not enabled on this machine: the check does not run (the backend's
    /// factory has already said so, loudly).
    pub skipped: bool,
}

impl RmHarness {
    /// A store (and maybe a peer) kept alive by `guard`.
    pub fn new(
        store: Arc<dyn ReadModelStore>,
        peer: Option<Arc<dyn ReadModelStore>>,
        guard: impl std::any::Any + Send + Sync,
    ) -> Self {
        Self { store, peer, guard: Box::new(guard), skipped: false }
    }

    /// A harness for a backend that is not enabled here.
    #[must_use]
    pub fn skipped() -> Self {
        Self {
            store: Arc::new(MemoryReadModels::new()),
            peer: None,
            guard: Box::new(()),
            skipped: true,
        }
    }
}

/// The store under test, as the checks take it.
pub type Rm = Arc<dyn ReadModelStore>;

/// Orders, filterable by status and customer.
pub const ORDERS: TableSpec = TableSpec { name: "orders", indexed: &["status", "customer"] };
/// Lines, with no index.
pub const LINES: TableSpec = TableSpec { name: "lines", indexed: &[] };

/// Declares [`ORDERS`] and [`LINES`].
pub fn declare(rm: &Rm) {
    rm.ensure_tables(&[ORDERS, LINES]).expect("ensure_tables");
}

/// Takes `consumer`'s leadership, which a shared backend requires before any write.
pub fn lead(rm: &Rm, consumer: &str) -> Fence {
    rm.try_lead(consumer)
        .expect("try_lead")
        .unwrap_or_else(|| panic!("a fresh store grants {consumer}"))
}

/// The fence of this process's current term of the consumer that covers `consumer`
/// (taking the lead if nobody has it): what the checks write under.
pub fn fence(rm: &Rm, consumer: &str) -> Fence {
    lead(rm, leadership_key(consumer))
}

/// An order document.
#[must_use]
pub fn order(status: &str, customer: &str) -> String {
    format!(r#"{{"status":"{status}","customer":"{customer}","total":"10.10"}}"#)
}

/// Stores `docs` in `table` under `consumer`, moving its checkpoint to `checkpoint`.
pub fn put_all(
    rm: &Rm,
    consumer: &str,
    checkpoint: Option<u64>,
    table: &str,
    docs: &[(&str, &str)],
) {
    rm.transact(&fence(rm, consumer), consumer, checkpoint, &mut |txn| {
        for (key, json) in docs {
            txn.put(table, key, json)?;
        }
        Ok(())
    })
    .expect("transact");
}

/// A dead letter of `consumer` (its id is assigned by `park`).
#[must_use]
pub fn letter(consumer: &str, position: u64, aggregate_id: &str) -> DeadLetter {
    let at = Timestamp::from_micros(1_700_000_000_000_000 + position as i64);
    DeadLetter {
        id: 0,
        projection: consumer.to_owned(),
        position,
        aggregate_id: aggregate_id.to_owned(),
        event_type: "OrderPlaced".to_owned(),
        error: format!("bad event at {position}"),
        attempts: 3,
        first_failed_at: at,
        last_failed_at: at,
    }
}

/// The refusal every check's failing closure returns.
#[must_use]
pub fn refused() -> ReadModelError {
    ReadModelError::Handler("refused".to_owned())
}

/// Runs a blocking check on a blocking thread, keeping its panic message.
pub async fn run_blocking(check: impl FnOnce() + Send + 'static) {
    if let Err(e) = tokio::task::spawn_blocking(check).await {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Expands to one test per read-model check, each on a fresh store from `$factory`; with
/// `peers`, also the checks that need a second process on the same store.
#[macro_export]
macro_rules! readmodel_suite {
    ($factory:expr) => {
        $crate::readmodel_suite!(@one $factory;
            documents::put_get_and_delete,
            documents::documents_are_kept_byte_for_byte,
            documents::a_transaction_reads_its_own_writes,
            documents::list_orders_pages_and_filters,
            documents::find_returns_matches_by_key,
            documents::integer_fields_match_their_digits,
            documents::unknown_tables_and_fields_are_refused,
            documents::failed_transaction_writes_nothing,
            documents::failed_transaction_after_a_find_writes_nothing,
            documents::panicking_transaction_writes_nothing,
            documents::ensure_tables_again_keeps_documents,
            documents::prefetch_does_not_hide_writes,
            checkpoints::checkpoint_moves_with_its_batch,
            checkpoints::checkpoints_lists_every_consumer,
            checkpoints::changes_tick_on_commit,
            checkpoints::derived_batches_commit_with_their_checkpoint,
            dead_letters::park_lists_and_moves_the_checkpoint_forward_only,
            dead_letters::dead_letters_are_kept_per_consumer,
            dead_letters::resolve_runs_the_change_and_removes_the_letter,
            dead_letters::resolving_a_gone_letter_rolls_back,
            dead_letters::failed_retry_is_counted,
            dead_letters::pages_walk_every_letter_once,
            generations::swap_replaces_live_tables_and_hands_over_the_checkpoint,
            generations::failed_shadow_transaction_writes_nothing,
            generations::abort_drops_the_shadow,
            generations::leftover_shadow_is_emptied,
            generations::rebuilds_in_a_row,
            generations::swap_without_a_rebuild_checkpoint_starts_from_zero,
            generations::swap_without_a_shadow_is_refused,
            generations::shadows_of_an_unknown_table_are_all_refused,
            generations::projection_versions,
            generations::a_refused_swap_changes_nothing,
            generations::a_shadow_after_an_abort_starts_clean,
            generations::indexes_answer_after_two_swaps,
            generations::a_stale_fence_cannot_touch_the_shadow,
            leases::a_store_leads_what_it_takes,
            leases::live_members_counts_this_process,
            leases::a_stale_fence_writes_nothing,
            leases::a_deposed_rebuild_cannot_swap,
            schemas::put_schema_registers_each_version_once,
            tokens::tokens_are_created_once_and_found_by_hash,
            tokens::revoking_a_token_keeps_its_first_time,
        );
    };
    ($factory:expr, peers) => {
        $crate::readmodel_suite!($factory);
        $crate::readmodel_suite!(@peer $factory;
            leases::one_process_leads_a_consumer,
            leases::resign_hands_over,
            leases::a_process_that_ends_releases_its_leases,
            leases::a_follower_cannot_write,
            leases::live_members_counts_every_process,
            generations::another_process_sees_the_swap,
            generations::a_crashed_rebuilds_shadow_is_discarded,
            schemas::another_process_sees_schemas,
            tokens::another_process_sees_tokens,
        );
    };
    (@one $factory:expr; $($module:ident :: $test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let harness: $crate::readmodel::RmHarness = ($factory)().await;
                if harness.skipped {
                    return;
                }
                let store = ::std::sync::Arc::clone(&harness.store);
                $crate::readmodel::run_blocking(move || $crate::readmodel::$module::$test(&store)).await;
                drop(harness);
            }
        )*
    };
    (@peer $factory:expr; $($module:ident :: $test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let mut harness: $crate::readmodel::RmHarness = ($factory)().await;
                if harness.skipped {
                    return;
                }
                let store = ::std::sync::Arc::clone(&harness.store);
                let peer = harness.peer.take().expect("a backend run with `peers` gives one");
                $crate::readmodel::run_blocking(move || $crate::readmodel::$module::$test(&store, peer)).await;
                drop(harness);
            }
        )*
    };
}
