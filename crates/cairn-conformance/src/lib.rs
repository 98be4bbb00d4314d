//! The conformance suites: one set of behavioural tests that every `EventStore` backend
//! runs, and one that every read-model backend runs ([`readmodel`]).
//!
//! A backend's test file calls [`conformance_suite!`] with an async factory that returns a
//! fresh, empty [`Harness`]; the macro expands to one `#[tokio::test]` per check, so each
//! check shows up (and fails) by name. One module per capability, as in the TiKV
//! engine-traits tests.

// Every public function here is a check whose failure is a panic; documenting that on
// each one would only repeat it.
#![allow(clippy::missing_panics_doc)]

pub mod aggregate_type;
pub mod atomicity;
pub mod concurrency;
pub mod fixtures;
pub mod idempotency;
pub mod keys;
pub mod lifecycle;
pub mod model;
pub mod readmodel;
pub mod reads;
pub mod subscription;
pub mod versions;

use std::sync::Arc;

use cairn_core::EventStore;

/// A fresh, empty store plus whatever keeps it alive (e.g. a temporary directory).
pub struct Harness {
    /// The store under test.
    pub store: Arc<dyn EventStore>,
    /// Dropped after the test; holds temp dirs, databases, etc.
    pub guard: Box<dyn std::any::Any + Send + Sync>,
    /// The backend is not enabled on this machine: the check does not run (the backend's
    /// factory has already said so, loudly).
    pub skipped: bool,
}

impl Harness {
    /// A harness with nothing to clean up.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self { store, guard: Box::new(()), skipped: false }
    }

    /// A store kept alive by `guard` (a temporary directory, a test database).
    pub fn with_guard(store: Arc<dyn EventStore>, guard: impl std::any::Any + Send + Sync) -> Self {
        Self { store, guard: Box::new(guard), skipped: false }
    }

    /// A harness for a backend that is not enabled here.
    #[must_use]
    pub fn skipped() -> Self {
        Self {
            store: Arc::new(cairn_core::MemoryEventStore::default()),
            guard: Box::new(()),
            skipped: true,
        }
    }
}

/// Expands to one test per conformance check, each on a fresh store from `$factory`
/// (an expression that evaluates to `async fn() -> Harness`-like future producer).
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr) => {
        $crate::conformance_suite!(@tests $factory;
            versions::versions_count_from_one_without_holes,
            versions::expected_version_cases,
            versions::wrong_expected_version_reports_actual,
            concurrency::sixteen_racers_at_one_expected_version_one_wins,
            concurrency::eight_writers_and_a_catch_up_reader_see_everything_once_in_order,
            concurrency::concurrent_appends_to_one_stream_with_any_keep_versions_dense,
            idempotency::retried_append_returns_original_outcome,
            idempotency::retry_is_recognised_after_other_writes,
            idempotency::reused_id_in_another_stream_is_refused,
            idempotency::changed_content_under_stored_ids_is_refused,
            idempotency::partial_overlap_is_refused_and_stores_nothing,
            idempotency::idempotency_key_is_recorded_with_the_append,
            keys::recorded_refusal_answers_a_later_append,
            keys::refusal_after_an_append_returns_the_appended_record,
            keys::refusals_and_appends_racing_on_one_key_agree,
            keys::another_fingerprint_under_a_key_is_refused,
            keys::an_expired_record_counts_as_absent,
            atomicity::failed_append_stores_none_of_its_events,
            atomicity::batch_gets_consecutive_versions_and_positions,
            reads::backward_reads_and_paging,
            reads::forward_paging_reports_next_version,
            reads::missing_stream_is_not_found,
            reads::read_all_filters_by_event_and_aggregate_type,
            reads::read_all_pages_and_scanned_to,
            reads::stream_stats_rank_by_event_count,
            reads::data_and_metadata_are_returned_byte_for_byte,
            reads::timestamps_never_decrease_along_all,
            subscription::catch_up_then_live_without_gap_or_duplicate,
            subscription::filtered_subscription_moves_past_unwanted_events,
            aggregate_type::stream_type_is_fixed_for_life,
            lifecycle::soft_delete_hides_the_stream_until_its_next_append,
            lifecycle::delete_and_append_against_expected_versions,
            lifecycle::tombstone_refuses_every_later_write,
            lifecycle::retry_of_an_append_from_before_a_delete_is_recognised,
            lifecycle::truncate_hides_versions_below_it,
            lifecycle::max_count_keeps_the_last_versions,
            lifecycle::max_age_hides_old_events,
            lifecycle::metadata_has_its_own_optimistic_concurrency,
            lifecycle::delete_and_append_racing_at_one_version_one_wins,
            lifecycle::scavenge_redacts_only_hidden_events_in_place,
        );

        #[test]
        fn model_random_append_sequences_match_the_reference() {
            $crate::model::check_against_model(|| $factory());
        }
    };
    (@tests $factory:expr; $($module:ident :: $test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let harness: $crate::Harness = ($factory)().await;
                if harness.skipped {
                    return;
                }
                $crate::$module::$test(::std::sync::Arc::clone(&harness.store)).await;
                harness.store.close().await;
                drop(harness);
            }
        )*
    };
}
