//! PostgreSQL's read models pass the read-model conformance suite (each test in its own
//! schema), with a second process: another pool on the same schema.

use std::sync::Arc;

use cairn_conformance::readmodel::RmHarness;
use cairn_postgres::testing::TestDatabase;
use cairn_postgres::{PgOptions, open};

async fn postgres() -> RmHarness {
    let Some(db) = TestDatabase::create().await else {
        return RmHarness::skipped();
    };
    let (store, readmodels) = open(&db.url, &PgOptions::default()).await.expect("open");
    let (peer_store, peer) = open(&db.url, &PgOptions::default()).await.expect("open the peer");
    // Dropped in order: the stores' sessions before the schema.
    RmHarness::new(Arc::new(readmodels), Some(Arc::new(peer)), (store, peer_store, db))
}

cairn_conformance::readmodel_suite!(postgres, peers);
