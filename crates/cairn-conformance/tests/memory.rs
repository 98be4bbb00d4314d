//! The in-memory reference store passes the conformance suite.

use std::sync::Arc;

use cairn_conformance::Harness;
use cairn_core::MemoryEventStore;

#[allow(clippy::unused_async)] // the suite takes async factories; this one needs no await
async fn memory() -> Harness {
    Harness::new(Arc::new(MemoryEventStore::new()))
}

cairn_conformance::conformance_suite!(memory);

/// The shared `$all` reader (`cairn_core::tail_cache`) in front of the reference store
/// passes the same suite: answers from its window are the store's answers.
mod tail_cache {
    use std::sync::Arc;

    use cairn_conformance::Harness;
    use cairn_core::MemoryEventStore;
    use cairn_core::tail_cache::TailCache;

    #[allow(clippy::unused_async)] // the suite takes async factories; this one needs no await
    async fn cached_memory() -> Harness {
        Harness::new(Arc::new(TailCache::new(Arc::new(MemoryEventStore::new()))))
    }

    cairn_conformance::conformance_suite!(cached_memory);
}
