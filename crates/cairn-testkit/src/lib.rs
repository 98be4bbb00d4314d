//! Test support: one test body, every storage backend.
//!
//! A test written as `async fn name(backend: Backend)` and listed in
//! [`backend_tests!`] runs once on the embedded store and once on PostgreSQL (each in a
//! fresh directory or database). Without `CAIRN_TEST_POSTGRES_URL` the PostgreSQL
//! variants return at once and the binary says so on the terminal.

// Test support: every failure is a panic by design.
#![allow(clippy::missing_panics_doc)]

pub mod serve;

use std::path::Path;
use std::sync::Arc;

use cairn_core::EventStore;
use cairn_core::readmodel::ReadModelStore;
use cairn_core::snapshot::SnapshotStore;
use cairn_postgres::testing::TestDatabase;

/// A storage backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded store (a temporary directory).
    Sqlite,
    /// PostgreSQL (a database created for the test).
    Postgres,
}

/// Where a test's data lives; dropped (deleted) after the test.
pub enum Place {
    /// A temporary data directory.
    Dir(tempfile::TempDir),
    /// A test database.
    Database(TestDatabase),
}

/// Open stores of one backend.
pub struct Stores {
    /// The event store.
    pub events: Arc<dyn EventStore>,
    /// Read models, checkpoints, dead letters.
    pub readmodels: Arc<dyn ReadModelStore>,
    /// Snapshots.
    pub snapshots: Arc<dyn SnapshotStore>,
}

impl Backend {
    /// Whether the backend can run here (PostgreSQL needs `CAIRN_TEST_POSTGRES_URL`).
    #[must_use]
    pub fn enabled(self) -> bool {
        match self {
            Self::Sqlite => true,
            Self::Postgres => cairn_postgres::testing::admin_url().is_some(),
        }
    }

    /// A fresh, empty place for this backend.
    ///
    /// # Panics
    /// When the place cannot be created (an enabled backend must work).
    pub async fn place(self) -> Place {
        match self {
            Self::Sqlite => Place::Dir(tempfile::tempdir().expect("temp dir")),
            Self::Postgres => {
                Place::Database(TestDatabase::create().await.expect("PostgreSQL tests are enabled"))
            }
        }
    }

    /// Fresh stores; keep the place alive for as long as they are used.
    pub async fn open(self) -> (Stores, Place) {
        let place = self.place().await;
        let stores = place.open().await;
        (stores, place)
    }
}

impl Place {
    /// Opens (or reopens, after the previous stores were closed) the stores here.
    ///
    /// # Panics
    /// When the stores cannot be opened.
    pub async fn open(&self) -> Stores {
        match self {
            Self::Dir(dir) => open_sqlite(dir.path()),
            Self::Database(db) => {
                let (events, readmodels) =
                    cairn_postgres::open(&db.url, &cairn_postgres::PgOptions::default())
                        .await
                        .expect("open the PostgreSQL store");
                let readmodels = Arc::new(readmodels);
                Stores {
                    events: Arc::new(events),
                    readmodels: readmodels.clone(),
                    snapshots: readmodels,
                }
            }
        }
    }

    /// Read models only (e.g. beside an in-memory event store).
    pub async fn readmodels(&self) -> Arc<dyn ReadModelStore> {
        match self {
            Self::Dir(dir) => Arc::new(
                cairn_sqlite::SqliteReadModels::open(dir.path()).expect("open read models"),
            ),
            Self::Database(_) => self.open().await.readmodels,
        }
    }

    /// The PostgreSQL URL, for child processes (`None` for the embedded store).
    #[must_use]
    pub fn database_url(&self) -> Option<&str> {
        match self {
            Self::Dir(_) => None,
            Self::Database(db) => Some(&db.url),
        }
    }

    /// The data directory, for child processes (`None` for PostgreSQL).
    #[must_use]
    pub fn dir(&self) -> Option<&Path> {
        match self {
            Self::Dir(d) => Some(d.path()),
            Self::Database(_) => None,
        }
    }
}

fn open_sqlite(dir: &Path) -> Stores {
    let events = cairn_sqlite::SqliteEventStore::open(dir, &cairn_sqlite::SqliteOptions::default())
        .expect("open the embedded store");
    let readmodels = Arc::new(cairn_sqlite::SqliteReadModels::open(dir).expect("open read models"));
    Stores { events: Arc::new(events), readmodels: readmodels.clone(), snapshots: readmodels }
}

/// Expands `async fn name(backend: Backend)` test bodies into one `#[tokio::test]` per
/// backend: `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if $crate::Backend::Postgres.enabled() {
                        super::$name($crate::Backend::Postgres).await;
                    }
                }
            )*
        }
    };
}
