//! The in-memory reference store passes the conformance suite.

use std::sync::Arc;

use cairn_conformance::Harness;
use cairn_core::MemoryEventStore;

#[allow(clippy::unused_async)] // the suite takes async factories; this one needs no await
async fn memory() -> Harness {
    Harness::new(Arc::new(MemoryEventStore::new()))
}

cairn_conformance::conformance_suite!(memory);
