//! The embedded SQLite store passes the conformance suite.

use std::sync::Arc;

use cairn_conformance::Harness;
use cairn_sqlite::{SqliteEventStore, SqliteOptions};

#[allow(clippy::unused_async)] // the suite takes async factories; this one needs no await
async fn sqlite() -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteEventStore::open(dir.path(), &SqliteOptions::default()).expect("open store");
    Harness::with_guard(Arc::new(store), dir)
}

cairn_conformance::conformance_suite!(sqlite);
