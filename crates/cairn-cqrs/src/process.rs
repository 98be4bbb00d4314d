//! Process managers (sagas): consume events like a projection, keep durable per-instance
//! state, and issue commands whose idempotency keys derive from the causing event.
//!
//! Redelivery is the normal case, not an error: after a crash the runner hands the same
//! event again, the manager re-issues the same commands with the same keys, and the store
//! answers each with its first outcome. A manager persists a decision that must not be
//! re-made (e.g. "compensating") before acting on it.
//!
//! A batch's instances are handled concurrently (each instance's events one after another,
//! in `$all` order), and the checkpoint is committed once per batch: a crash redelivers the
//! whole batch, which is the same redelivery as above, for every event of it (see
//! docs/design/consumers.md, section 9).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use cairn_core::readmodel::{Fence, ReadModelError, ReadModelStore, TableSpec};
use cairn_core::{EventStore, RecordedEvent};
use futures_util::StreamExt as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::consumer::{self, BatchHandler, ConsumerHandle, HandleError};
use crate::metadata::CommandMetadata;
use crate::repository::{CommandOptions, Repository};

/// Instances of one process manager handled at once within a batch. Bounds the commands
/// and state saves in flight, so that a batch of many instances cannot crowd the HTTP
/// API's own commands out of the store's connections and writer.
pub const PM_INSTANCES_IN_FLIGHT_MAX: usize = 32;
/// Commands of one [`ProcessContext::execute_all`] in flight at once.
pub const PM_COMMANDS_IN_FLIGHT_MAX: usize = 8;
/// Locks a manager's commands queue on, by target aggregate (hashed). A fixed number, so
/// memory stays bounded whatever the number of aggregates.
const COMMAND_LANES: usize = 64;

/// A process manager.
#[async_trait]
pub trait ProcessManager: Send + Sync + 'static {
    /// Unique name; also its checkpoint key.
    fn name(&self) -> &'static str;
    /// Tables holding its instance state.
    fn tables(&self) -> Vec<TableSpec>;
    /// Event types it reacts to.
    fn event_types(&self) -> Vec<&'static str>;
    /// The instance an event belongs to (the key its state is saved under); `None`: not
    /// this manager's, so the runner skips it (the checkpoint moves on) and
    /// [`handle`](Self::handle) never sees it. One instance's events are handled one after
    /// another in `$all` order; different instances' events are handled concurrently (up
    /// to [`PM_INSTANCES_IN_FLIGHT_MAX`]), so whatever `handle` reads or writes for one
    /// instance must be keyed by this key and nothing else.
    fn instance_key(&self, event: &RecordedEvent) -> Option<String>;
    /// Where its instances live: admin listing, export/import, metrics by status.
    fn instances(&self) -> Instances;
    /// Reacts to one event. Must be safe to run again for the same event.
    async fn handle(&self, event: &RecordedEvent, ctx: &ProcessContext) -> Result<(), String>;
}

/// Where a process manager's instances live: one document per instance in `table`,
/// keyed by [`ProcessManager::instance_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instances {
    table: &'static str,
    statuses: &'static [&'static str],
}

impl Instances {
    /// Instances are the documents of `table` (one of the manager's [`ProcessManager::tables`]).
    #[must_use]
    pub const fn table(table: &'static str) -> Self {
        Self { table, statuses: &[] }
    }

    /// The documents carry an indexed `status` with one of these values, so instances can
    /// be counted and listed by status.
    #[must_use]
    pub const fn by_status(self, statuses: &'static [&'static str]) -> Self {
        Self { table: self.table, statuses }
    }

    /// The instance table.
    #[must_use]
    pub const fn table_name(&self) -> &'static str {
        self.table
    }

    /// The statuses an instance can have; empty when instances are not by status.
    #[must_use]
    pub const fn statuses(&self) -> &'static [&'static str] {
        self.statuses
    }
}

/// What a process manager can use while handling an event.
#[derive(Clone)]
pub struct ProcessContext {
    /// Runs commands.
    pub repository: Repository,
    readmodels: Arc<dyn ReadModelStore>,
    name: &'static str,
    /// Set when storage (not the event) made the handler fail, so that the failure is
    /// retried as a stall instead of dead-lettering a good event. Each handled event gets
    /// its own flags (shared only by that run's clones): runs of other instances go on
    /// concurrently, and their failures must not classify this one's.
    storage_failed: Arc<AtomicBool>,
    /// The leadership term the event is handled in: instance state is saved under it,
    /// and refused once that term is over. `None` only outside a handled event.
    fence: Option<Fence>,
    /// Set when a write was refused for want of leadership: the runner stops instead of
    /// retrying or dead-lettering.
    deposed: Arc<AtomicBool>,
    /// Where the manager's instances live: a save there also moves the status counts.
    instances: Instances,
    /// One command at a time per target aggregate (by lane), shared by every run of the
    /// manager. Concurrent instances often command one hot aggregate (many orders, one
    /// product): unqueued, every writer but one loses each optimistic round and reloads,
    /// so k writers cost k² attempts; queued, k.
    lanes: Arc<[tokio::sync::Mutex<()>]>,
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
            .map_err(|e: ReadModelError| self.note(&e))?;
        json.map(|j| serde_json::from_str(&j).map_err(|e| e.to_string())).transpose()
    }

    /// Remembers a storage failure (see `storage_failed`) and renders the error.
    fn note(&self, e: &ReadModelError) -> String {
        if e.is_deposed() {
            self.deposed.store(true, Ordering::SeqCst);
        }
        if e.is_storage() {
            self.storage_failed.store(true, Ordering::SeqCst);
        }
        e.to_string()
    }

    /// Saves an instance's state durably, now.
    pub async fn save<T: Serialize + Send + Sync + 'static>(
        &self,
        table: &'static str,
        key: &str,
        state: T,
    ) -> Result<(), String> {
        let (rm, key, name) = (Arc::clone(&self.readmodels), key.to_owned(), self.name);
        let Some(fence) = self.fence.clone() else {
            return Err(self.note(&ReadModelError::NotLeader(name.to_owned())));
        };
        let json = serde_json::to_string(&state).map_err(|e| e.to_string())?;
        let instances = self.instances;
        tokio::task::spawn_blocking(move || {
            rm.transact(&fence, name, None, &mut |txn| {
                crate::instance_counts::put_instance(txn, name, &instances, table, &key, &json)
            })
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| self.note(&e))
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
        // Not the fence of the append itself (see docs/design/consumers.md, "Fencing"), but
        // it stops a manager that has noticed it was deposed from issuing more commands.
        if self.fence.is_none() || !self.readmodels.leads(self.name) {
            self.storage_failed.store(true, Ordering::SeqCst);
            self.deposed.store(true, Ordering::SeqCst);
            return Err(crate::CommandError::NotLeader(self.name.to_owned()));
        }
        let lane = {
            use std::hash::{BuildHasher as _, Hasher as _};
            // Fixed keys: lanes only need to spread aggregates, not resist an adversary.
            let mut h = std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .build_hasher();
            h.write(A::TYPE.as_bytes());
            h.write(id.as_bytes());
            usize::try_from(h.finish() % COMMAND_LANES as u64).unwrap_or(0)
        };
        let result = {
            let _queued = self.lanes[lane].lock().await;
            self.repository.execute::<A>(id, command, options).await
        };
        if let Err(
            crate::CommandError::Contention
            | crate::CommandError::Read(_)
            | crate::CommandError::Store(
                cairn_core::AppendError::Unavailable(_)
                | cairn_core::AppendError::Poisoned
                | cairn_core::AppendError::ShuttingDown,
            ),
        ) = &result
        {
            self.storage_failed.store(true, Ordering::SeqCst);
        }
        result
    }

    /// Runs independent commands concurrently (at most [`PM_COMMANDS_IN_FLIGHT_MAX`] at
    /// once) and answers every outcome in the order given. Each command is
    /// [`execute`](Self::execute)d, so each is answered with its key's first outcome: a
    /// manager that decides on the whole list of outcomes decides the same way on a
    /// redelivery, whatever order the commands reached the store in.
    pub async fn execute_all<A: crate::Aggregate>(
        &self,
        commands: &[(String, A::Command, CommandOptions)],
    ) -> Vec<Result<crate::CommandOutcome, crate::CommandError>> {
        // By index: a closure over the slice's items would have to be general over their
        // lifetime, which `async_trait`'s `Send` check cannot prove.
        futures_util::stream::iter(0..commands.len())
            .map(|i| {
                let (id, command, options) = &commands[i];
                self.execute::<A>(id, command, options)
            })
            .buffered(PM_COMMANDS_IN_FLIGHT_MAX)
            .collect()
            .await
    }

    /// Options for a command caused by `event`: a key unique to (this manager, the event,
    /// `step`), and metadata continuing the event's correlation.
    #[must_use]
    pub fn options_for(&self, event: &RecordedEvent, step: &str) -> CommandOptions {
        let parent = CommandMetadata::of_event(event.metadata.get());
        CommandOptions {
            expected_version: None,
            // Unscoped, unfingerprinted and never expiring: the key names the command by
            // construction, and a re-handled event must meet its first outcome however late.
            idempotency: Some(cairn_core::IdempotencyKey::new(format!(
                "{}:{}:{step}",
                self.name, event.event_id
            ))),
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

impl ProcessHandler {
    /// Runs the manager on one event; a failure caused by storage is transient (retried),
    /// any other is the event's (dead-lettered after a few tries).
    async fn run(&self, fence: &Fence, event: &RecordedEvent) -> Result<(), HandleError> {
        let ctx = ProcessContext {
            fence: Some(fence.clone()),
            storage_failed: Arc::new(AtomicBool::new(false)),
            deposed: Arc::new(AtomicBool::new(false)),
            ..self.ctx.clone()
        };
        self.manager.handle(event, &ctx).await.map_err(|e| {
            if ctx.deposed.load(Ordering::SeqCst) {
                HandleError::Deposed(e)
            } else if ctx.storage_failed.load(Ordering::SeqCst) {
                HandleError::Transient(e)
            } else {
                HandleError::Event(e)
            }
        })
    }

    /// Runs one instance's events in order; stops at its first failure (a later event of
    /// the instance must not run before an earlier one has).
    async fn run_instance(
        &self,
        fence: &Fence,
        events: &[RecordedEvent],
        instance: Vec<usize>,
    ) -> Result<(), HandleError> {
        for i in instance {
            self.run(fence, &events[i]).await?;
        }
        Ok(())
    }
}

/// The batch's claimed events (their indexes) by instance: instances in order of their
/// first event, each instance's events in `$all` order. Events the manager disowns are
/// left out.
fn by_instance(manager: &dyn ProcessManager, events: &[RecordedEvent]) -> Vec<Vec<usize>> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, event) in events.iter().enumerate() {
        // Not one of this manager's instances: skipped like an event of another type,
        // and the batch's checkpoint moves over it.
        let Some(key) = manager.instance_key(event) else { continue };
        let slot = *index.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[slot].push(i);
    }
    groups
}

/// How bad a failure is for the runner: a deposed term must stop the runner whatever else
/// failed, a storage failure must be retried rather than blamed on an event.
const fn severity(e: &HandleError) -> u8 {
    match e {
        HandleError::Event(_) => 0,
        HandleError::Transient(_) => 1,
        HandleError::Deposed(_) => 2,
    }
}

async fn commit_checkpoint(
    rm: &Arc<dyn ReadModelStore>,
    fence: &Fence,
    name: &'static str,
    checkpoint: u64,
) -> Result<(), HandleError> {
    let (rm, fence) = (Arc::clone(rm), fence.clone());
    tokio::task::spawn_blocking(move || {
        rm.transact(&fence, name, Some(checkpoint), &mut |_| Ok(()))
    })
    .await
    .map_err(|e| HandleError::Transient(e.to_string()))?
    .map_err(|e| HandleError::of_write(&e))
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

    async fn handle(
        &self,
        fence: &Fence,
        events: Vec<RecordedEvent>,
        scanned_to: u64,
    ) -> Result<(), HandleError> {
        let groups = by_instance(self.manager.as_ref(), &events);
        // Instances concurrently, each instance's events in order. Once one instance has
        // failed no other is started (the batch is retried as a whole anyway), but those
        // in flight run to their end: none is cut between a command and its state save,
        // and the runner learns the worst of every failure, not only the first one.
        let halted = AtomicBool::new(false);
        let mut runs = futures_util::stream::iter(groups)
            .map(|instance| {
                let (halted, events) = (&halted, &events);
                async move {
                    if halted.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    let result = self.run_instance(fence, events, instance).await;
                    if result.is_err() {
                        halted.store(true, Ordering::SeqCst);
                    }
                    result
                }
            })
            .buffer_unordered(PM_INSTANCES_IN_FLIGHT_MAX);
        let mut failed: Option<HandleError> = None;
        while let Some(result) = runs.next().await {
            if let Err(e) = result
                && failed.as_ref().is_none_or(|f| severity(&e) > severity(f))
            {
                failed = Some(e);
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        // Once per batch: a crash before it redelivers the batch (at most
        // `BATCH_EVENTS_MAX` events), every event of which is safe to handle again.
        commit_checkpoint(&self.ctx.readmodels, fence, self.manager.name(), scanned_to).await
    }

    async fn retry(
        &self,
        fence: &Fence,
        event: RecordedEvent,
        letter_id: i64,
    ) -> Result<(), HandleError> {
        // A letter parked before the manager stopped claiming the event is released
        // without running it, as the event would be skipped if it came now.
        if self.manager.instance_key(&event).is_some() {
            self.run(fence, &event).await?;
        }
        let (rm, name, fence) =
            (Arc::clone(&self.ctx.readmodels), self.manager.name(), fence.clone());
        tokio::task::spawn_blocking(move || {
            rm.resolve_dead_letter(&fence, name, letter_id, &mut |_| Ok(()))
        })
        .await
        .map_err(|e| HandleError::Transient(e.to_string()))?
        .map_err(|e| HandleError::of_write(&e))
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
    let mut tables = manager.tables();
    tables.push(crate::instance_counts::COUNTS_SPEC);
    readmodels.ensure_tables(&tables)?;
    let store: Arc<dyn EventStore> = Arc::clone(repository.store());
    let ctx = ProcessContext {
        repository,
        readmodels,
        instances: manager.instances(),
        name: manager.name(),
        storage_failed: Arc::new(AtomicBool::new(false)),
        fence: None,
        deposed: Arc::new(AtomicBool::new(false)),
        lanes: (0..COMMAND_LANES).map(|_| tokio::sync::Mutex::new(())).collect(),
    };
    Ok(consumer::spawn_with(
        store,
        Arc::new(ProcessHandler { manager, ctx }),
        shutdown,
        None,
        start_paused,
    ))
}
