//! An operator's pause and resume: the handle's side (asking) and the loop's (sitting a
//! pause out between batches).

use cairn_core::readmodel::Fence;
use tokio::sync::watch;

use super::runner::{Runner, Stop};
use super::status::{Machine, Transition};
use super::{ConsumerHandle, ControlError, DEAD_LETTER_GATE_WAIT};

impl ConsumerHandle {
    /// Pauses the consumer: it stops between batches (its checkpoint stays where the last
    /// batch left it) and reports `paused` until [`ConsumerHandle::resume`]. Held in
    /// memory: a restarted process runs it again.
    pub fn pause(&self) -> Result<(), ControlError> {
        self.require_leader()?;
        self.shared.apply(Transition::PauseRequested);
        Ok(())
    }

    /// Resumes a paused consumer from its checkpoint; it reports `running` at once.
    pub fn resume(&self) -> Result<(), ControlError> {
        self.require_leader()?;
        self.shared.apply(Transition::ResumeRequested);
        Ok(())
    }

    /// Holds the paused consumer still: waits (at most [`DEAD_LETTER_GATE_WAIT`]) until the
    /// batch in hand when it was paused is done, and keeps it so while the guard lives —
    /// nothing is handled, nor any checkpoint written, until it is dropped. For an operator
    /// rewriting the consumer's state (a process manager's import), which it writes under
    /// the fence that comes with the gate.
    pub async fn hold_paused(
        &self,
    ) -> Result<(tokio::sync::MutexGuard<'_, ()>, Fence), ControlError> {
        let fence = self.require_leader()?;
        if !self.is_paused() {
            return Err(ControlError::NotPaused { consumer: self.name.clone() });
        }
        // Paused is a request; the batch in hand when it was made may still be running.
        let gate = tokio::time::timeout(DEAD_LETTER_GATE_WAIT, self.shared.gate.lock())
            .await
            .map_err(|_| ControlError::Busy { consumer: self.name.clone() })?;
        Ok((gate, fence))
    }

    /// Whether an operator paused it (it stops at the end of the batch in hand).
    #[must_use]
    pub fn is_paused(&self) -> bool {
        self.shared.status.borrow().pause_requested()
    }
}

impl Runner {
    /// Paused between batches (nothing in hand, the checkpoint still): waits for a resume
    /// and answers the position to go on from (`None`: woken by shutdown instead).
    pub(super) async fn sit_out_pause(
        &mut self,
        control: &mut watch::Receiver<Machine>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<u64>, Stop> {
        self.shared.apply(Transition::SatDown);
        tokio::select! {
            resumed = control.wait_for(|m| !m.pause_requested()) => if resumed.is_err() { return Err(Stop::Shutdown) },
            _ = shutdown.changed() => return Ok(None),
        }
        // While paused, an operator may have moved the checkpoint (a process manager's
        // state imported with `cairn import`): go on from the stored one.
        let position = self.start_position(shutdown).await?;
        // Never backwards for `wait_for`: a stored checkpoint can trail the published
        // position only over skipped events, which nothing waits on.
        self.publish_forward(position);
        self.shared.apply(Transition::Progressed);
        Ok(Some(position))
    }
}
