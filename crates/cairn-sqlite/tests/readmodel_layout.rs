//! The on-disk layout of SQLite's read models: a rebuild's fixed-name shadow, renamed
//! into place, and the migration of files written with numbered generations.

use std::path::Path;

use cairn_core::readmodel::{
    Checkpoints, Documents, Generations, Leases, ListQuery, REBUILD_SUFFIX, TableSpec,
};
use cairn_sqlite::SqliteReadModels;
use cairn_sqlite::readmodel::READ_MODEL_FILE;
use cairn_sqlite::schema::READ_MODEL_SCHEMA_VERSION;
use rusqlite::Connection;

const ORDERS: TableSpec = TableSpec { name: "orders", indexed: &["status", "customer"] };
const LINES: TableSpec = TableSpec { name: "lines", indexed: &[] };

fn order(status: &str, customer: &str) -> String {
    format!(r#"{{"status":"{status}","customer":"{customer}"}}"#)
}

fn raw(dir: &Path) -> Connection {
    Connection::open(dir.join(READ_MODEL_FILE)).unwrap()
}

/// Names in `sqlite_master` of `kind` (`table`, `index`) matching the LIKE `pattern`.
fn names(dir: &Path, kind: &str, pattern: &str) -> Vec<String> {
    let conn = raw(dir);
    let mut s = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = ?1 AND name LIKE ?2 ESCAPE '\\' ORDER BY name")
        .unwrap();
    s.query_map([kind, pattern], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
}

/// How many indexes `table` has on `field` (by what they index, whatever their name).
fn indexes_on(dir: &Path, table: &str, field: &str) -> i64 {
    raw(dir)
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1 AND instr(sql, ?2) > 0",
            [table, &format!("'$.{field}'")],
            |r| r.get(0),
        )
        .unwrap()
}

/// Whether SQLite answers a filter on `field` of `table` through an index.
fn filter_uses_an_index(dir: &Path, table: &str, field: &str) -> bool {
    let conn = raw(dir);
    let mut s = conn
        .prepare(&format!(
            "EXPLAIN QUERY PLAN SELECT key FROM {table} WHERE json_extract(doc, '$.{field}') = 'x'"
        ))
        .unwrap();
    let plan: Vec<String> =
        s.query_map([], |r| r.get(3)).unwrap().collect::<Result<_, _>>().unwrap();
    plan.iter().any(|step| step.contains("USING INDEX") || step.contains("USING COVERING INDEX"))
}

fn keys(rm: &SqliteReadModels, table: &str, filter: Option<(&str, &str)>) -> Vec<String> {
    rm.list(&ListQuery {
        table: table.to_owned(),
        filters: filter.map(|(f, v)| vec![(f.to_owned(), v.to_owned())]).unwrap_or_default(),
        after: None,
        limit: 100,
    })
    .unwrap()
    .into_iter()
    .map(|(k, _)| k)
    .collect()
}

/// Fills a shadow of `orders` and `lines` with `docs` under a fresh rebuild and swaps it in.
fn rebuild(rm: &SqliteReadModels, checkpoint: u64, docs: &[(&str, String)]) {
    let fence = rm.try_lead("p").unwrap().unwrap();
    let shadow = format!("p{REBUILD_SUFFIX}");
    rm.create_shadow(&fence, "p", &["orders", "lines"]).unwrap();
    rm.transact_shadow(&fence, &shadow, Some(checkpoint), &mut |txn| {
        for (key, json) in docs {
            txn.put("orders", key, json)?;
        }
        Ok(())
    })
    .unwrap();
    rm.swap_shadow(&fence, &["orders", "lines"], "p", &shadow).unwrap();
}

/// A file of the numbered-generation layout (`rm_orders__g2` live, per
/// `table_generations`; `rm_orders__g3` and `rm_lines__g1` shadows of rebuilds that never
/// swapped) opens with its live documents under the live names, the stale generations
/// gone, and rebuilds as usual after.
#[test]
fn a_file_of_numbered_generations_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    raw(dir.path())
        .execute_batch(&format!(
            "CREATE TABLE checkpoints (consumer TEXT PRIMARY KEY, position INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE leases (consumer TEXT PRIMARY KEY, epoch INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE table_generations (name TEXT PRIMARY KEY, generation INTEGER NOT NULL) WITHOUT ROWID;
             INSERT INTO table_generations VALUES ('orders', 2);
             INSERT INTO checkpoints VALUES ('p', 40), ('p#rebuild', 5);
             INSERT INTO leases VALUES ('p', 3);
             CREATE TABLE rm_orders__g2 (key TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID;
             CREATE INDEX rm_orders__g2_status ON rm_orders__g2 (json_extract(doc, '$.status'), key);
             CREATE INDEX rm_orders__g2_customer ON rm_orders__g2 (json_extract(doc, '$.customer'), key);
             INSERT INTO rm_orders__g2 VALUES ('a', '{a}'), ('b', '{b}');
             CREATE TABLE rm_orders__g3 (key TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID;
             CREATE INDEX rm_orders__g3_status ON rm_orders__g3 (json_extract(doc, '$.status'), key);
             INSERT INTO rm_orders__g3 VALUES ('half', '{{}}');
             CREATE TABLE rm_lines (key TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID;
             INSERT INTO rm_lines VALUES ('l1', '{{}}');
             CREATE TABLE rm_lines__g1 (key TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID;
             INSERT INTO rm_lines__g1 VALUES ('half', '{{}}');",
            a = order("open", "ann").replace('\'', "''"),
            b = order("paid", "bob").replace('\'', "''"),
        ))
        .unwrap();

    let rm = SqliteReadModels::open(dir.path()).unwrap();
    rm.ensure_tables(&[ORDERS, LINES]).unwrap();
    assert_eq!(keys(&rm, "orders", None), ["a", "b"], "generation 2 is live");
    assert_eq!(keys(&rm, "orders", Some(("status", "paid"))), ["b"]);
    assert_eq!(keys(&rm, "lines", None), ["l1"]);
    assert_eq!(rm.checkpoint("p").unwrap(), 40);
    assert!(names(dir.path(), "table", "%\\_\\_g%").is_empty(), "no generation left");
    assert!(names(dir.path(), "table", "table_generations").is_empty());
    for field in ["status", "customer"] {
        assert_eq!(indexes_on(dir.path(), "rm_orders", field), 1, "{field}: no duplicate index");
        assert!(filter_uses_an_index(dir.path(), "rm_orders", field), "{field}");
    }
    let version: i64 = raw(dir.path()).query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, READ_MODEL_SCHEMA_VERSION);

    rebuild(&rm, 41, &[("c", order("open", "cy"))]);
    assert_eq!(keys(&rm, "orders", None), ["c"]);
    assert_eq!(keys(&rm, "orders", Some(("customer", "cy"))), ["c"]);
    assert_eq!(rm.checkpoint("p").unwrap(), 41);
    drop(rm);

    // Opening again migrates nothing more and finds the same.
    let rm = SqliteReadModels::open(dir.path()).unwrap();
    rm.ensure_tables(&[ORDERS, LINES]).unwrap();
    assert_eq!(keys(&rm, "orders", Some(("status", "open"))), ["c"]);
}

/// A rebuild that crashed (its shadow created and half filled, never swapped) leaves
/// its shadow in the file; the next rebuild after the restart starts from an empty one,
/// and swap after swap each field has one index, which filters use.
#[test]
fn a_crashed_rebuild_is_discarded_and_swaps_keep_one_index_per_field() {
    let dir = tempfile::tempdir().unwrap();
    let rm = SqliteReadModels::open(dir.path()).unwrap();
    rm.ensure_tables(&[ORDERS, LINES]).unwrap();
    let fence = rm.try_lead("p").unwrap().unwrap();
    rm.transact(&fence, "p", Some(9), &mut |txn| txn.put("orders", "live", &order("open", "ann")))
        .unwrap();
    rm.create_shadow(&fence, "p", &["orders"]).unwrap();
    rm.transact_shadow(&fence, &format!("p{REBUILD_SUFFIX}"), Some(4), &mut |txn| {
        txn.put("orders", "half", &order("open", "bob"))
    })
    .unwrap();
    drop(rm);
    assert_eq!(names(dir.path(), "table", "rm\\_orders\\_\\_shadow"), ["rm_orders__shadow"]);

    let rm = SqliteReadModels::open(dir.path()).unwrap();
    rm.ensure_tables(&[ORDERS, LINES]).unwrap();
    assert_eq!(keys(&rm, "orders", None), ["live"], "the leftover shadow is not live");
    for round in 0..3_u64 {
        let key = format!("round{round}");
        rebuild(&rm, 10 + round, &[(&key, order("paid", "cy"))]);
        assert_eq!(keys(&rm, "orders", None), [key.as_str()], "nothing of the crashed rebuild");
        assert_eq!(keys(&rm, "orders", Some(("status", "paid"))), [key.as_str()]);
        assert!(names(dir.path(), "table", "%shadow%").is_empty());
        for field in ["status", "customer"] {
            assert_eq!(indexes_on(dir.path(), "rm_orders", field), 1, "round {round}: {field}");
            assert!(filter_uses_an_index(dir.path(), "rm_orders", field));
        }
    }
    drop(rm);
    let rm = SqliteReadModels::open(dir.path()).unwrap();
    rm.ensure_tables(&[ORDERS, LINES]).unwrap();
    assert_eq!(indexes_on(dir.path(), "rm_orders", "status"), 1, "declaring again adds none");
    assert_eq!(keys(&rm, "orders", Some(("customer", "cy"))), ["round2"]);
}

/// A file written by a newer Cairn is refused rather than misread.
#[test]
fn a_newer_read_model_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    raw(dir.path())
        .execute_batch(&format!("PRAGMA user_version = {};", READ_MODEL_SCHEMA_VERSION + 1))
        .unwrap();
    assert!(SqliteReadModels::open(dir.path()).is_err());
}
