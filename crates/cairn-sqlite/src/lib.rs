//! The embedded default backend: one SQLite database file, WAL mode, durable by default.
//!
//! One writer thread owns the only write connection and commits concurrent appends in
//! groups (one fsync for many appends); readers use their own connections and never block
//! it. Positions are assigned by that single writer in commit order, which is what makes
//! `$all` gap-free for readers. See `docs/design/storage.md`.

mod codec;
mod dir_lock;
mod reader;
pub mod readmodel;
pub mod schema;
mod store;
mod writer;

pub use readmodel::SqliteReadModels;
pub use store::{
    CommitStats, HEAP_SOFT_LIMIT_BYTES, OpenError, SqliteEventStore, SqliteOptions, Synchronous,
};
