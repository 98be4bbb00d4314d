//! Leadership: one process runs each consumer; the others follow its checkpoint until
//! they can take over, and a leader can hand the consumer over (rebalancing partitions).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use cairn_core::readmodel::Fence;
use cairn_core::timestamp::Timestamp;
use serde::Serialize;
use tokio::sync::watch;

use super::runner::Runner;
use super::status::Transition;
use super::{ConsumerHandle, blocking};

/// How often a process that does not lead a consumer tries to take it over.
const TAKEOVER_INTERVAL: Duration = Duration::from_secs(1);
/// How often a follower re-reads the leader's checkpoint without a notification.
const FOLLOW_POLL: Duration = Duration::from_millis(500);

/// Whether this process leads a consumer, since when, and in which term.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaderInfo {
    /// Whether this process runs the consumer (the others sharing its database follow).
    pub leading: bool,
    /// When this process last became its leader (RFC 3339); `null` while it does not lead.
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<String>, format = DateTime, required = true)
    )]
    pub since: Option<Timestamp>,
    /// The epoch of this process's latest term as the consumer's leader (0 = it never
    /// led it): the store's count of terms of the consumer across every process. Each
    /// write the consumer makes carries this term's fence, which the store compares with
    /// the current term inside the write's transaction.
    pub fence: u64,
}

/// This process's side of a consumer's leadership.
#[derive(Default)]
pub(super) struct Leadership {
    /// One lock, so that `leading`, `since`, `fence` and the fence itself are always read
    /// together.
    term: Mutex<Term>,
    /// Set to hand leadership over to another process (rebalancing partitions).
    handover: watch::Sender<bool>,
    /// After a handover, this process does not try to lead again before this.
    hold_off_until: Mutex<Option<Instant>>,
}

/// What is known of the current term: the info served, and the fence writes carry
/// (`None` while this process does not lead).
#[derive(Default)]
struct Term {
    info: LeaderInfo,
    fence: Option<Fence>,
}

impl Leadership {
    pub(super) fn info(&self) -> LeaderInfo {
        self.term.lock().unwrap_or_else(PoisonError::into_inner).info
    }

    pub(super) fn is_leader(&self) -> bool {
        self.info().leading
    }

    /// The fence of the term this process is in, if it leads the consumer: what every
    /// write of the consumer carries.
    pub(super) fn fence(&self) -> Option<Fence> {
        self.term.lock().unwrap_or_else(PoisonError::into_inner).fence.clone()
    }

    fn took(&self, fence: Fence) {
        let mut term = self.term.lock().unwrap_or_else(PoisonError::into_inner);
        let info =
            LeaderInfo { leading: true, since: Some(Timestamp::now()), fence: fence.epoch() };
        *term = Term { info, fence: Some(fence) };
    }

    /// Keeps the epoch: it names the last term this process had. The fence goes: nothing
    /// this process starts from now on can write under it.
    pub(super) fn lost(&self) {
        let mut term = self.term.lock().unwrap_or_else(PoisonError::into_inner);
        (term.info.leading, term.info.since, term.fence) = (false, None, None);
    }

    pub(super) fn handover(&self) -> watch::Receiver<bool> {
        self.handover.subscribe()
    }

    /// A handover asked for has been seen: the flag is down again for the next term.
    pub(super) fn handed_over(&self) {
        self.handover.send_replace(false);
    }

    fn held_off(&self) -> bool {
        self.hold_off_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|t| Instant::now() < t)
    }
}

impl ConsumerHandle {
    /// Whether this process runs the consumer; when several processes share a database,
    /// one leads each consumer and the others mirror its progress.
    #[must_use]
    pub fn is_leader(&self) -> bool {
        self.shared.leadership.is_leader()
    }

    /// Whether this process leads the consumer, since when, and its fence.
    #[must_use]
    pub fn leadership(&self) -> LeaderInfo {
        self.shared.leadership.info()
    }

    /// The fence of this process's current term as the consumer's leader (`None` when it
    /// does not lead): for a write that belongs to the consumer's term, such as its row
    /// in the server's leader registry, which a deposed process must not overwrite.
    #[must_use]
    pub fn fence(&self) -> Option<Fence> {
        self.shared.leadership.fence()
    }

    /// Gives leadership up at the end of the batch in hand and does not take it back for
    /// `hold_off`, so that another process can (rebalancing partitions).
    pub fn hand_over(&self, hold_off: Duration) {
        let leadership = &self.shared.leadership;
        *leadership.hold_off_until.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Instant::now() + hold_off);
        leadership.handover.send_replace(true);
    }

    /// The fence of this process's term, or `Err(NotLeader)` unless it runs the consumer.
    pub(super) fn require_leader(&self) -> Result<Fence, super::ControlError> {
        self.shared
            .leadership
            .fence()
            .ok_or_else(|| super::ControlError::NotLeader { consumer: self.name.clone() })
    }
}

impl Runner {
    /// Until this process leads the consumer: mirror the leader's checkpoint and dead
    /// letter count. `false` = shutting down; `true` = this process now leads it.
    pub(super) async fn follow(&mut self) -> bool {
        let rm = Arc::clone(self.shared.handler.readmodels());
        let name = self.shared.name().to_owned();
        let mut changes = rm.changes();
        let mut next_try = tokio::time::Instant::now();
        let mut announced = false;
        loop {
            if *self.shutdown.borrow() {
                return false;
            }
            if !self.shared.leadership.held_off() && tokio::time::Instant::now() >= next_try {
                let (rm, candidate) = (Arc::clone(&rm), name.clone());
                match blocking(move || rm.try_lead(&candidate)).await {
                    Ok(Some(fence)) => {
                        self.shared.leadership.took(fence);
                        return true;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(consumer = %name, error = %e, "cannot try to lead"),
                }
                next_try = tokio::time::Instant::now() + TAKEOVER_INTERVAL;
                if !announced {
                    tracing::info!(consumer = %name, "another process leads this consumer; following it");
                    announced = true;
                }
            }
            let (rm2, name2) = (Arc::clone(&rm), name.clone());
            if let Ok((p, depth)) = blocking(move || {
                Ok((rm2.checkpoint(&name2)?, rm2.dead_letters(Some(&name2))?.len() as u64))
            })
            .await
            {
                self.publish_forward(p);
                self.shared.letters.mirror(depth);
                self.shared.apply(Transition::Mirrored);
            }
            let wait =
                FOLLOW_POLL.min(next_try.saturating_duration_since(tokio::time::Instant::now()));
            let checkpoint_moved = async {
                match changes.as_mut() {
                    Some(c) => {
                        let _ = c.changed().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = checkpoint_moved => {}
                () = tokio::time::sleep(wait) => {}
                _ = self.shutdown.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cairn_core::readmodel::{Leases, MemoryReadModels};

    use super::{LeaderInfo, Leadership};

    #[test]
    fn the_fence_is_the_stores_term_and_since_holds_only_while_leading() {
        let (rm, l) = (MemoryReadModels::new(), Leadership::default());
        assert_eq!(l.info(), LeaderInfo { leading: false, since: None, fence: 0 });
        assert_eq!(l.fence(), None);
        l.took(rm.try_lead("c").unwrap().unwrap());
        let first = l.info();
        assert!(first.leading && first.since.is_some() && first.fence == 1, "{first:?}");
        assert_eq!(l.fence().map(|f| f.epoch()), Some(1));
        l.lost();
        assert_eq!(l.info(), LeaderInfo { leading: false, since: None, fence: 1 });
        assert_eq!(l.fence(), None, "a lost term's fence is not handed out");
        rm.resign("c");
        l.took(rm.try_lead("c").unwrap().unwrap());
        let second = l.info();
        assert_eq!((second.leading, second.fence), (true, 2));
        assert!(second.since >= first.since);
    }
}
