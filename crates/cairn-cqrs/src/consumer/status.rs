//! The consumer's status as one state machine.
//!
//! The served status used to be pieced together from three places locked one by one (the
//! loop's own status, the operator's pause flag, the rebuild progress), so a reader could
//! see a mix no moment ever had. Here every input is a [`Transition`] applied under one
//! lock, and [`Machine::served`] is a single match: what the contract calls the status is
//! a function of one value.

use serde::Serialize;

/// What a consumer is doing (contract §6 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ConsumerStatus {
    /// Loading its checkpoint.
    Starting,
    /// Following `$all`.
    Running,
    /// Rebuilding from position 0.
    Rebuilding,
    /// Stopped by an operator.
    Paused,
    /// Its storage keeps failing; it retries with backoff.
    Stalled,
    /// Stopped for good (e.g. its storage is gone).
    Failed,
}

/// Where the loop itself is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Nothing read yet.
    Starting,
    /// Another process leads: this one mirrors its checkpoint.
    Following,
    /// Leading and handling batches.
    Running,
    /// Its storage failed; retrying with backoff.
    Stalled,
    /// Sitting between batches until an operator resumes it.
    Paused,
}

/// Whether a rebuild is under way beside the live tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rebuild {
    Idle,
    /// Asked for before this process leads the consumer: starts once it does.
    AwaitingLeadership,
    Running,
}

/// Something that moves the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    /// A follower read the leader's checkpoint.
    Mirrored,
    /// The leader read its checkpoint, or a batch went through.
    Progressed,
    /// Its storage failed (it retries).
    StorageFailed,
    /// An operator asked for a pause: the batch in hand still finishes.
    PauseRequested,
    /// An operator resumed it.
    ResumeRequested,
    /// The loop stopped between batches for a pause.
    SatDown,
    /// A rebuild was asked for; it waits for leadership.
    RebuildQueued,
    /// A rebuild started (from queued or idle).
    RebuildStarted,
    /// A queued rebuild could not start (dead letters wait, say): it is not waiting any more.
    RebuildDropped,
    /// A rebuild swapped in or was given up.
    RebuildEnded,
}

/// The whole status state: the loop's phase, the operator's pause request and the rebuild.
///
/// Invariant: `phase == Paused` implies `pause_requested` — a resume moves the phase out
/// of `Paused` at once, so a resumed consumer says `running` before its loop wakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Machine {
    phase: Phase,
    pause_requested: bool,
    rebuild: Rebuild,
}

impl Machine {
    pub(crate) const fn new(start_paused: bool) -> Self {
        Self { phase: Phase::Starting, pause_requested: start_paused, rebuild: Rebuild::Idle }
    }

    /// Applies `t`; `true` when anything changed (watchers are woken only then).
    pub(crate) fn apply(&mut self, t: Transition) -> bool {
        let before = *self;
        match t {
            Transition::Mirrored => {
                // A follower is not paused by its own loop; a pause asked of a previous
                // leadership term still shows through `served`.
                self.phase = Phase::Following;
            }
            Transition::Progressed => {
                if self.phase != Phase::Paused {
                    self.phase = Phase::Running;
                }
            }
            Transition::StorageFailed => self.phase = Phase::Stalled,
            Transition::PauseRequested => self.pause_requested = true,
            Transition::ResumeRequested => {
                self.pause_requested = false;
                if self.phase == Phase::Paused {
                    self.phase = Phase::Running;
                }
            }
            Transition::SatDown => {
                // A resume that raced the loop to the pause wins: nothing to sit out.
                if self.pause_requested {
                    self.phase = Phase::Paused;
                }
            }
            Transition::RebuildQueued => {
                if self.rebuild == Rebuild::Idle {
                    self.rebuild = Rebuild::AwaitingLeadership;
                }
            }
            Transition::RebuildStarted => self.rebuild = Rebuild::Running,
            Transition::RebuildDropped => {
                if self.rebuild == Rebuild::AwaitingLeadership {
                    self.rebuild = Rebuild::Idle;
                }
            }
            Transition::RebuildEnded => self.rebuild = Rebuild::Idle,
        }
        *self != before
    }

    /// Whether an operator asked it to stop (the loop stops at the end of the batch in hand).
    pub(crate) const fn pause_requested(self) -> bool {
        self.pause_requested
    }

    pub(crate) const fn rebuild(self) -> Rebuild {
        self.rebuild
    }

    /// The status the contract serves.
    pub(crate) const fn served(self) -> ConsumerStatus {
        match (self.phase, self.pause_requested, self.rebuild) {
            (Phase::Starting, ..) => ConsumerStatus::Starting,
            (Phase::Stalled, ..) => ConsumerStatus::Stalled,
            (Phase::Paused, ..) | (Phase::Running | Phase::Following, true, _) => {
                ConsumerStatus::Paused
            }
            (Phase::Running | Phase::Following, false, Rebuild::Idle) => ConsumerStatus::Running,
            (Phase::Running | Phase::Following, false, _) => ConsumerStatus::Rebuilding,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ConsumerStatus as S, Machine, Transition as T};

    fn after(start_paused: bool, ts: &[T]) -> Machine {
        let mut m = Machine::new(start_paused);
        for t in ts {
            m.apply(*t);
        }
        m
    }

    #[test]
    fn a_resumed_consumer_is_running_before_its_loop_wakes() {
        let m = after(false, &[T::Progressed, T::PauseRequested, T::SatDown, T::ResumeRequested]);
        assert_eq!(m.served(), S::Running);
        assert!(!m.pause_requested());
    }

    #[test]
    fn a_pause_shows_at_once_and_holds_until_resumed() {
        let mut m = after(false, &[T::Progressed, T::PauseRequested]);
        assert_eq!(m.served(), S::Paused, "paused while the batch in hand finishes");
        m.apply(T::SatDown);
        assert_eq!(m.served(), S::Paused);
        assert!(!m.apply(T::Progressed), "no batch moves a paused loop");
        assert_eq!(m.served(), S::Paused);
    }

    #[test]
    fn a_resume_racing_the_pause_leaves_nothing_to_sit_out() {
        let m = after(false, &[T::Progressed, T::PauseRequested, T::ResumeRequested, T::SatDown]);
        assert_eq!(m.served(), S::Running);
    }

    #[test]
    fn started_paused_it_reports_paused_once_loaded() {
        assert_eq!(after(true, &[]).served(), S::Starting);
        assert_eq!(after(true, &[T::Progressed]).served(), S::Paused);
        assert_eq!(after(true, &[T::Progressed, T::ResumeRequested]).served(), S::Running);
    }

    #[test]
    fn a_rebuild_shows_while_running_and_yields_to_stalls_and_pauses() {
        let mut m = after(false, &[T::Progressed, T::RebuildQueued]);
        assert_eq!(m.served(), S::Rebuilding, "queued counts as started");
        m.apply(T::RebuildStarted);
        assert_eq!(m.served(), S::Rebuilding);
        m.apply(T::StorageFailed);
        assert_eq!(m.served(), S::Stalled);
        m.apply(T::Progressed);
        m.apply(T::PauseRequested);
        assert_eq!(m.served(), S::Paused);
        m.apply(T::ResumeRequested);
        m.apply(T::RebuildEnded);
        assert_eq!(m.served(), S::Running);
    }

    #[test]
    fn a_follower_runs_and_stalls_like_a_leader() {
        assert_eq!(after(false, &[T::Mirrored]).served(), S::Running);
        assert_eq!(after(false, &[T::Mirrored, T::StorageFailed]).served(), S::Stalled);
        assert_eq!(after(false, &[T::StorageFailed, T::Mirrored]).served(), S::Running);
    }

    #[test]
    fn only_real_changes_wake_watchers() {
        let mut m = after(false, &[T::Progressed]);
        assert!(!m.apply(T::Progressed));
        assert!(m.apply(T::StorageFailed));
        assert!(!m.apply(T::RebuildEnded));
    }
}
