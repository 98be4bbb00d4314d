//! Process managers (sagas): consume events like a projection, keep durable per-instance
//! state, and issue commands whose idempotency keys derive from the causing event.
//!
//! Redelivery is the normal case, not an error: after a crash the runner hands the same
//! event again, the manager re-issues the same commands with the same keys, and the store
//! answers each with its first outcome. A manager persists a decision that must not be
//! re-made (e.g. "compensating") before acting on it.

use std::sync::Arc;

use async_trait::async_trait;
use cairn_core::readmodel::{DocTxnExt, ReadModelError, ReadModelStore, TableSpec};
use cairn_core::{EventStore, RecordedEvent};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::consumer::{self, BatchHandler, ConsumerHandle, HandleError};
use crate::metadata::CommandMetadata;
use crate::repository::{CommandOptions, Repository};

/// A process manager.
#[async_trait]
pub trait ProcessManager: Send + Sync + 'static {
    /// Unique name; also its checkpoint key.
    fn name(&self) -> &'static str;
    /// Tables holding its instance state.
    fn tables(&self) -> Vec<TableSpec>;
    /// Event types it reacts to.
    fn event_types(&self) -> Vec<&'static str>;
    /// Reacts to one event. Must be safe to run again for the same event.
    async fn handle(&self, event: &RecordedEvent, ctx: &ProcessContext) -> Result<(), String>;
}

/// What a process manager can use while handling an event.
#[derive(Clone)]
pub struct ProcessContext {
    /// Runs commands.
    pub repository: Repository,
    readmodels: Arc<dyn ReadModelStore>,
    name: &'static str,
}

impl ProcessContext {
    /// Loads an instance's state.
    pub async fn load<T: DeserializeOwned + Send + 'static>(
        &self,
        table: &'static str,
        key: &str,
    ) -> Result<Option<T>, String> {
        let (rm, key) = (Arc::clone(&self.readmodels), key.to_owned());
        let json = tokio::task::spawn_blocking(move || rm.get(table, &key))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e: ReadModelError| e.to_string())?;
        json.map(|j| serde_json::from_str(&j).map_err(|e| e.to_string())).transpose()
    }

    /// Saves an instance's state durably, now.
    pub async fn save<T: Serialize + Send + Sync + 'static>(
        &self,
        table: &'static str,
        key: &str,
        state: T,
    ) -> Result<(), String> {
        let (rm, key, name) = (Arc::clone(&self.readmodels), key.to_owned(), self.name);
        tokio::task::spawn_blocking(move || {
            rm.transact(name, None, &mut |txn| txn.save(table, &key, &state))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    /// Runs a command for the process manager (every command it issues goes through here).
    pub async fn execute<A: crate::Aggregate>(
        &self,
        id: &str,
        command: &A::Command,
        options: &CommandOptions,
    ) -> Result<crate::CommandOutcome, crate::CommandError> {
        if let Some(delay) = fault_command_delay() {
            tokio::time::sleep(delay).await;
        }
        self.repository.execute::<A>(id, command, options).await
    }

    /// Options for a command caused by `event`: a key unique to (this manager, the event,
    /// `step`), and metadata continuing the event's correlation.
    #[must_use]
    pub fn options_for(&self, event: &RecordedEvent, step: &str) -> CommandOptions {
        let parent = CommandMetadata::of_event(event.metadata.get());
        CommandOptions {
            expected_version: None,
            idempotency_key: Some(format!("{}:{}:{step}", self.name, event.event_id)),
            metadata: CommandMetadata::caused_by(&parent, &event.event_id.to_string()),
        }
    }
}

/// Fault injection for crash tests: `CAIRN_FAULT_PM_COMMAND_DELAY_MS` delays every
/// process-manager command, so a test can kill the process between two of them.
fn fault_command_delay() -> Option<std::time::Duration> {
    static DELAY: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    *DELAY.get_or_init(|| {
        std::env::var("CAIRN_FAULT_PM_COMMAND_DELAY_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(std::time::Duration::from_millis)
    })
}

struct ProcessHandler {
    manager: Arc<dyn ProcessManager>,
    ctx: ProcessContext,
}

async fn commit_checkpoint(
    rm: &Arc<dyn ReadModelStore>,
    name: &'static str,
    checkpoint: u64,
) -> Result<(), HandleError> {
    let rm = Arc::clone(rm);
    tokio::task::spawn_blocking(move || rm.transact(name, Some(checkpoint), &mut |_| Ok(())))
        .await
        .map_err(|e| HandleError::Transient(e.to_string()))?
        .map_err(|e| HandleError::Transient(e.to_string()))
}

#[async_trait]
impl BatchHandler for ProcessHandler {
    fn name(&self) -> &str {
        self.manager.name()
    }

    fn event_types(&self) -> Vec<String> {
        self.manager.event_types().into_iter().map(str::to_owned).collect()
    }

    fn readmodels(&self) -> &Arc<dyn ReadModelStore> {
        &self.ctx.readmodels
    }

    async fn handle(&self, events: Vec<RecordedEvent>, scanned_to: u64) -> Result<(), HandleError> {
        for event in &events {
            self.manager.handle(event, &self.ctx).await.map_err(HandleError::Event)?;
            // One event at a time: a crash redelivers at most the event in progress.
            commit_checkpoint(&self.ctx.readmodels, self.manager.name(), event.position).await?;
        }
        commit_checkpoint(&self.ctx.readmodels, self.manager.name(), scanned_to).await
    }

    async fn retry(&self, event: RecordedEvent, letter_id: i64) -> Result<(), HandleError> {
        self.manager.handle(&event, &self.ctx).await.map_err(HandleError::Event)?;
        let rm = Arc::clone(&self.ctx.readmodels);
        tokio::task::spawn_blocking(move || rm.resolve_dead_letter(letter_id, &mut |_| Ok(())))
            .await
            .map_err(|e| HandleError::Transient(e.to_string()))?
            .map_err(|e| HandleError::Transient(e.to_string()))
    }
}

/// Creates the manager's tables and starts it from its checkpoint.
pub fn spawn_process_manager(
    repository: Repository,
    readmodels: Arc<dyn ReadModelStore>,
    manager: Arc<dyn ProcessManager>,
    shutdown: watch::Receiver<bool>,
) -> Result<ConsumerHandle, ReadModelError> {
    spawn_process_manager_with(repository, readmodels, manager, shutdown, false)
}

/// Like [`spawn_process_manager`]; with `start_paused` it issues no command until resumed
/// (`cairn serve --pause-process-managers`, for importing another store's history: the
/// history's commands were issued there, and its instances come with the import).
pub fn spawn_process_manager_with(
    repository: Repository,
    readmodels: Arc<dyn ReadModelStore>,
    manager: Arc<dyn ProcessManager>,
    shutdown: watch::Receiver<bool>,
    start_paused: bool,
) -> Result<ConsumerHandle, ReadModelError> {
    readmodels.ensure_tables(&manager.tables())?;
    let store: Arc<dyn EventStore> = Arc::clone(repository.store());
    let ctx = ProcessContext { repository, readmodels, name: manager.name() };
    Ok(consumer::spawn_with(
        store,
        Arc::new(ProcessHandler { manager, ctx }),
        shutdown,
        None,
        start_paused,
    ))
}
