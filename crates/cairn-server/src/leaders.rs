//! Where each consumer's leader can be reached: the leader registry.
//!
//! When several `cairn serve` processes share one database, one process leads each consumer
//! and only it can pause, resume or rebuild it, or retry and discard its dead letters. So
//! that an admin request sent to any process works, every leader publishes, per consumer it
//! leads, a row `(consumer, advertised URL, since, status)` in a reserved read-model table;
//! a process that is asked to act on a consumer it does not lead looks the row up and
//! forwards the request there (`routes/admin.rs`).
//!
//! The row is written with [`Documents::transact`] under the consumer's own name, so a
//! backend shared by several processes accepts it only from the consumer's current leader
//! (the same fence as the consumer's own writes): a process that lost the lead cannot
//! overwrite its successor's row. The [`Leases`](cairn_core::readmodel::Leases) trait is
//! left alone on purpose.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use cairn_core::readmodel::{ListQuery, ReadModelError, ReadModelStore, TableSpec};
use cairn_core::timestamp::Timestamp;
use cairn_cqrs::consumer::ConsumerStatus;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::consumers::Consumers;

/// The reserved table of the registry (one row per consumer, keyed by its name).
pub const LEADERS_TABLE: &str = "cairn_leaders";

/// How often a process checks whether the consumers it leads changed leader, URL or
/// status since it last published them. A change made through the admin API is published
/// at once ([`LeaderRegistry::changed`]); this bounds the staleness of the others (a
/// takeover, a rebuild that ended).
pub const LEADER_PUBLISH_INTERVAL: Duration = Duration::from_millis(500);

/// Most rows read when listing the registry (one per consumer and partition).
const LEADERS_LIST_MAX: usize = 10_000;

/// The table's declaration.
const SPEC: TableSpec = TableSpec { name: LEADERS_TABLE, indexed: &[] };

/// One consumer's row: what its leader last said of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The leader's advertised base URL (`cairn serve --advertise-url`); `None` when that
    /// process does not know how it is reached (it listens on an unspecified address and
    /// was given no `--advertise-url`).
    pub url: Option<String>,
    /// When it took the lead.
    pub since: Option<Timestamp>,
    /// The consumer's status on its leader (contract §6 names).
    pub status: String,
}

impl LeaderRecord {
    /// The status it names, when it is one this version knows.
    #[must_use]
    pub fn consumer_status(&self) -> Option<ConsumerStatus> {
        Some(match self.status.as_str() {
            "starting" => ConsumerStatus::Starting,
            "running" => ConsumerStatus::Running,
            "rebuilding" => ConsumerStatus::Rebuilding,
            "paused" => ConsumerStatus::Paused,
            "stalled" => ConsumerStatus::Stalled,
            "failed" => ConsumerStatus::Failed,
            _ => return None,
        })
    }
}

fn status_name(status: ConsumerStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// This process's side of the registry: its own URL, and a nudge to publish now.
#[derive(Debug, Default)]
pub struct LeaderRegistry {
    advertise_url: Option<String>,
    changed: Notify,
    /// Forwards admin requests to the leaders (one pool of connections for all).
    client: reqwest::Client,
}

impl LeaderRegistry {
    /// The registry of a process reached at `advertise_url`.
    #[must_use]
    pub fn new(advertise_url: Option<String>) -> Self {
        Self::with_client(advertise_url, reqwest::Client::new())
    }

    /// The registry of a process reached at `advertise_url`, forwarding through `client`
    /// (one that trusts the other processes' certificates when they serve HTTPS).
    #[must_use]
    pub fn with_client(advertise_url: Option<String>, client: reqwest::Client) -> Self {
        Self { advertise_url, changed: Notify::new(), client }
    }

    /// The HTTP client that forwards admin requests.
    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// This process's advertised base URL.
    #[must_use]
    pub fn advertise_url(&self) -> Option<&str> {
        self.advertise_url.as_deref()
    }

    /// Something an operator did changed a consumer's status here: publish it now rather
    /// than at the next tick, so that the other processes show it at once.
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    /// The row of `consumer`, read from the database now (`None`: no leader has published
    /// one, or the database cannot say).
    pub async fn lookup(
        readmodels: &Arc<dyn ReadModelStore>,
        consumer: &str,
    ) -> Option<LeaderRecord> {
        let (rm, key) = (Arc::clone(readmodels), consumer.to_owned());
        let doc = tokio::task::spawn_blocking(move || rm.get(LEADERS_TABLE, &key)).await;
        match doc {
            Ok(Ok(Some(doc))) => serde_json::from_str(&doc).ok(),
            Ok(Err(e)) => {
                tracing::warn!(consumer, error = %e, "cannot read the leader registry");
                None
            }
            Ok(Ok(None)) | Err(_) => None,
        }
    }

    /// Every published row, by consumer (empty when the database cannot say: the rows
    /// only add information to an answer, they never make it fail).
    pub async fn all(readmodels: &Arc<dyn ReadModelStore>) -> BTreeMap<String, LeaderRecord> {
        let rm = Arc::clone(readmodels);
        let query = ListQuery {
            table: LEADERS_TABLE.to_owned(),
            filters: Vec::new(),
            after: None,
            limit: LEADERS_LIST_MAX,
        };
        match tokio::task::spawn_blocking(move || rm.list(&query)).await {
            Ok(Ok(rows)) => rows
                .into_iter()
                .filter_map(|(k, doc)| Some((k, serde_json::from_str(&doc).ok()?)))
                .collect(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the leader registry");
                BTreeMap::new()
            }
            Err(_) => BTreeMap::new(),
        }
    }
}

/// Declares the registry's table (blocking; at start).
pub fn ensure_table(readmodels: &dyn ReadModelStore) -> Result<(), ReadModelError> {
    readmodels.ensure_tables(&[SPEC])
}

/// Publishes, until shutdown, the row of every consumer this process leads whenever its
/// leadership term, URL or status changed since it was last published.
pub fn spawn_publisher(
    registry: Arc<LeaderRegistry>,
    consumers: Arc<Consumers>,
    readmodels: Arc<dyn ReadModelStore>,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        // What this process last wrote, per consumer: written again only when it differs
        // (a write per tick per consumer would load the database for nothing).
        let mut published: HashMap<String, LeaderRecord> = HashMap::new();
        loop {
            if *shutdown.borrow() {
                return;
            }
            for (_, consumer) in consumers.all() {
                let name = consumer.name().to_owned();
                let leader = consumer.leadership();
                let Some(fence) = consumer.fence().filter(|_| leader.leading) else {
                    // Written again when it leads again, whatever it last wrote.
                    published.remove(&name);
                    continue;
                };
                let record = LeaderRecord {
                    url: registry.advertise_url.clone(),
                    since: leader.since,
                    status: status_name(consumer.status()),
                };
                if published.get(&name) == Some(&record) {
                    continue;
                }
                let (rm, key, doc) = (
                    Arc::clone(&readmodels),
                    name.clone(),
                    serde_json::to_string(&record).unwrap_or_default(),
                );
                let written = tokio::task::spawn_blocking(move || {
                    rm.transact(&fence, &key, None, &mut |txn| txn.put(LEADERS_TABLE, &key, &doc))
                })
                .await;
                match written {
                    Ok(Ok(())) => {
                        published.insert(name, record);
                    }
                    // Lost the lead in between (the next leader publishes its own row), or
                    // the database failed: tried again at the next tick.
                    Ok(Err(e)) => {
                        tracing::debug!(consumer = %name, error = %e, "leader row not published");
                    }
                    Err(_) => {}
                }
            }
            tokio::select! {
                () = tokio::time::sleep(LEADER_PUBLISH_INTERVAL) => {}
                () = registry.changed.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use cairn_cqrs::consumer::ConsumerStatus as S;

    use super::{LeaderRecord, status_name};

    #[test]
    fn every_status_published_is_read_back() {
        for status in [S::Starting, S::Running, S::Rebuilding, S::Paused, S::Stalled, S::Failed] {
            let record = LeaderRecord { url: None, since: None, status: status_name(status) };
            assert_eq!(record.consumer_status(), Some(status), "{}", record.status);
        }
        let newer = LeaderRecord { url: None, since: None, status: "hibernating".into() };
        assert_eq!(newer.consumer_status(), None, "a status of a newer version is not guessed");
    }
}
