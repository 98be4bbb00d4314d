//! The in-memory read models pass the read-model conformance suite, two "processes"
//! (handles on one store) included.

use std::sync::Arc;

use cairn_conformance::readmodel::RmHarness;
use cairn_core::readmodel::MemoryReadModels;

#[allow(clippy::unused_async)] // the suite takes async factories; this one needs no await
async fn memory() -> RmHarness {
    let store = MemoryReadModels::new();
    let peer = store.another_process();
    RmHarness::new(Arc::new(store), Some(Arc::new(peer)), ())
}

cairn_conformance::readmodel_suite!(memory, peers);
