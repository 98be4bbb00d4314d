//! The PostgreSQL store passes the conformance suite (each test in its own database).

use std::sync::Arc;

use cairn_conformance::Harness;
use cairn_postgres::testing::TestDatabase;
use cairn_postgres::{PgOptions, open};

async fn postgres() -> Harness {
    let Some(db) = TestDatabase::create().await else {
        return Harness::skipped();
    };
    let (store, _readmodels) = open(&db.url, &PgOptions::default()).await.expect("open store");
    Harness::with_guard(Arc::new(store), db)
}

cairn_conformance::conformance_suite!(postgres);
