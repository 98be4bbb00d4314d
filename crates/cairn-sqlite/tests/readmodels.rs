//! SQLite's read models pass the read-model conformance suite. Without the checks that
//! need a second process: the data directory's lock admits one.

use std::sync::Arc;

use cairn_conformance::readmodel::RmHarness;
use cairn_sqlite::SqliteReadModels;

#[allow(clippy::unused_async)] // the suite takes async factories; this one needs no await
async fn sqlite() -> RmHarness {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteReadModels::open(dir.path()).expect("open read models");
    RmHarness::new(Arc::new(store), None, dir)
}

cairn_conformance::readmodel_suite!(sqlite);
