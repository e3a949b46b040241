//! The life of one process (a container's init or an exec), changed only through transitions.
//!
//! The runtime calls that move a process along (runc start, runc delete) run *between* two
//! transitions, with no lock held: `begin_*` claims the move, `*_succeeded`/`*_failed` settles
//! it. An exit can arrive in between; while a start is in flight it is held back and handed to
//! the caller after the start is settled, so `TaskStart` is always published before `TaskExit`.

use crust_proto::task::Status;

use crate::error::{Result, ShimError};
use crate::reaper::Exit;

/// Where a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Created by runc, not started.
    Created,
    /// `runc start` (or exec) is running.
    Starting,
    /// Running.
    Running,
    /// `runc pause` is running.
    Pausing,
    /// Frozen.
    Paused,
    /// `runc resume` is running.
    Resuming,
    /// Exited; the exit is known.
    Stopped,
    /// `runc delete` is running.
    Deleting,
    /// Gone from runc; only the record remains until it is dropped.
    Deleted,
}

/// What the caller must do with an exit it reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitOutcome {
    /// The process is now stopped: record the exit and publish `TaskExit`.
    Publish,
    /// A start is in flight: the start's settlement returns the exit; do nothing now.
    Deferred,
    /// The process is being deleted or was already stopped: record, but publish nothing.
    Quiet,
}

/// A process's state plus the exit that may have arrived during a start.
#[derive(Debug)]
pub struct Lifecycle {
    state: State,
    exit: Option<Exit>,
    deferred_exit: Option<Exit>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    /// A process runc has just created.
    pub fn new() -> Self {
        Self {
            state: State::Created,
            exit: None,
            deferred_exit: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The exit, once the process stopped.
    pub fn exit(&self) -> Option<Exit> {
        self.exit
    }

    /// The state as containerd's `State` RPC reports it.
    pub fn status(&self) -> Status {
        match self.state {
            State::Created | State::Starting => Status::CREATED,
            State::Running => Status::RUNNING,
            State::Pausing => Status::PAUSING,
            State::Paused | State::Resuming => Status::PAUSED,
            State::Stopped | State::Deleting | State::Deleted => Status::STOPPED,
        }
    }

    fn refuse(&self, action: &str) -> ShimError {
        let state = format!("{:?}", self.state).to_lowercase();
        ShimError::FailedPrecondition(format!("cannot {action} a {state} process"))
    }

    /// Created → Starting.
    pub fn begin_start(&mut self) -> Result<()> {
        match self.state {
            State::Created => {
                self.state = State::Starting;
                Ok(())
            }
            _ => Err(self.refuse("start")),
        }
    }

    /// Starting → Running. Returns an exit that arrived during the start, which the caller
    /// reports with [`Lifecycle::exited`] after publishing `TaskStart`.
    pub fn start_succeeded(&mut self) -> Option<Exit> {
        debug_assert_eq!(self.state, State::Starting);
        self.state = State::Running;
        self.deferred_exit.take()
    }

    /// Starting → Created, when the start failed. Returns an exit that arrived meanwhile.
    pub fn start_failed(&mut self) -> Option<Exit> {
        debug_assert_eq!(self.state, State::Starting);
        self.state = State::Created;
        self.deferred_exit.take()
    }

    /// Reports the process's exit.
    pub fn exited(&mut self, exit: Exit) -> ExitOutcome {
        match self.state {
            State::Starting => {
                self.deferred_exit = Some(exit);
                ExitOutcome::Deferred
            }
            State::Created | State::Running | State::Pausing | State::Paused | State::Resuming => {
                self.state = State::Stopped;
                self.exit = Some(exit);
                ExitOutcome::Publish
            }
            State::Deleting => {
                self.exit.get_or_insert(exit);
                ExitOutcome::Quiet
            }
            State::Stopped | State::Deleted => ExitOutcome::Quiet,
        }
    }

    /// Running → Pausing.
    pub fn begin_pause(&mut self) -> Result<()> {
        match self.state {
            State::Running => {
                self.state = State::Pausing;
                Ok(())
            }
            _ => Err(self.refuse("pause")),
        }
    }

    /// Paused → Resuming.
    pub fn begin_resume(&mut self) -> Result<()> {
        match self.state {
            State::Paused => {
                self.state = State::Resuming;
                Ok(())
            }
            _ => Err(self.refuse("resume")),
        }
    }

    /// Settles a pause or resume: on success the process is Paused (or Running again), on
    /// failure it is back where it was. Returns whether the change happened, which is false
    /// also when the process exited meanwhile (then it is Stopped and stays so).
    pub fn settle_freeze(&mut self, succeeded: bool) -> bool {
        let (done, undone) = match self.state {
            State::Pausing => (State::Paused, State::Running),
            State::Resuming => (State::Running, State::Paused),
            _ => return false,
        };
        self.state = if succeeded { done } else { undone };
        succeeded
    }

    /// Whether the process is stopped (its exit known).
    pub fn is_stopped(&self) -> bool {
        matches!(
            self.state,
            State::Stopped | State::Deleting | State::Deleted
        )
    }

    /// Refuses a signal to a process that is no longer there.
    pub fn check_signalable(&self) -> Result<()> {
        match self.state {
            State::Created
            | State::Starting
            | State::Running
            | State::Pausing
            | State::Paused
            | State::Resuming => Ok(()),
            State::Stopped | State::Deleting | State::Deleted => {
                Err(ShimError::NotFound("process already finished".into()))
            }
        }
    }

    /// Created or Stopped → Deleting. Returns the state to restore if the delete fails.
    pub fn begin_delete(&mut self) -> Result<State> {
        match self.state {
            State::Created | State::Stopped => {
                let previous = self.state;
                self.state = State::Deleting;
                Ok(previous)
            }
            State::Deleting | State::Deleted => Err(ShimError::NotFound(
                "process is already being deleted".into(),
            )),
            State::Starting | State::Running | State::Pausing | State::Paused | State::Resuming => {
                Err(self.refuse("delete"))
            }
        }
    }

    /// Deleting → Deleted.
    pub fn delete_succeeded(&mut self) {
        debug_assert_eq!(self.state, State::Deleting);
        self.state = State::Deleted;
    }

    /// Deleting → the state before, when the delete failed.
    pub fn delete_failed(&mut self, previous: State) {
        debug_assert_eq!(self.state, State::Deleting);
        self.state = match (previous, self.exit) {
            // It was killed while the delete ran: it is stopped now, whatever it was before.
            (State::Created, Some(_)) => State::Stopped,
            _ => previous,
        };
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn exit(status: u32) -> Exit {
        Exit {
            pid: 42,
            status,
            signal: None,
            at: SystemTime::now(),
        }
    }

    #[test]
    fn normal_life_created_running_stopped_deleted() {
        let mut life = Lifecycle::new();
        assert_eq!(life.status(), Status::CREATED);
        assert!(!life.is_stopped(), "created");
        life.begin_start().unwrap();
        assert_eq!(life.status(), Status::CREATED);
        assert!(!life.is_stopped(), "starting");
        assert_eq!(life.start_succeeded(), None);
        assert_eq!(life.status(), Status::RUNNING);
        assert!(!life.is_stopped(), "running");
        life.check_signalable().unwrap();
        assert_eq!(life.exited(exit(3)), ExitOutcome::Publish);
        assert_eq!(life.status(), Status::STOPPED);
        assert!(life.is_stopped(), "exited");
        assert_eq!(life.exit().map(|e| e.status), Some(3));
        assert!(matches!(
            life.check_signalable(),
            Err(ShimError::NotFound(_))
        ));
        assert_eq!(life.begin_delete().unwrap(), State::Stopped);
        assert!(life.is_stopped(), "deleting");
        life.delete_succeeded();
        assert_eq!(life.state(), State::Deleted);
        assert!(life.is_stopped(), "deleted");
    }

    #[test]
    fn exit_during_start_is_held_until_the_start_settles() {
        let mut life = Lifecycle::new();
        life.begin_start().unwrap();
        assert_eq!(life.exited(exit(0)), ExitOutcome::Deferred);
        assert_eq!(
            life.status(),
            Status::CREATED,
            "not stopped before TaskStart"
        );
        let held = life.start_succeeded().unwrap();
        assert_eq!(life.exited(held), ExitOutcome::Publish);
        assert_eq!(life.state(), State::Stopped);

        let mut failed = Lifecycle::new();
        failed.begin_start().unwrap();
        failed.exited(exit(1));
        let held = failed.start_failed().unwrap();
        assert_eq!(failed.state(), State::Created);
        assert_eq!(failed.exited(held), ExitOutcome::Publish);
    }

    #[test]
    fn refusals_carry_failed_precondition_or_not_found() {
        let mut life = Lifecycle::new();
        life.begin_start().unwrap();
        assert!(matches!(
            life.begin_start(),
            Err(ShimError::FailedPrecondition(_))
        ));
        assert!(matches!(
            life.begin_delete(),
            Err(ShimError::FailedPrecondition(_))
        ));
        life.start_succeeded();
        assert!(matches!(
            life.begin_start(),
            Err(ShimError::FailedPrecondition(_))
        ));
        let err = life.begin_delete().unwrap_err();
        assert_eq!(err.to_string(), "cannot delete a running process");
        life.exited(exit(0));
        life.begin_delete().unwrap();
        assert!(matches!(life.begin_delete(), Err(ShimError::NotFound(_))));
    }

    #[test]
    fn a_created_process_can_be_killed_and_deleted() {
        let mut life = Lifecycle::new();
        assert_eq!(life.exited(exit(137)), ExitOutcome::Publish);
        assert_eq!(life.state(), State::Stopped);

        let mut never_started = Lifecycle::new();
        assert_eq!(never_started.begin_delete().unwrap(), State::Created);
        // runc delete kills the waiting init; its exit is recorded but not published.
        assert_eq!(never_started.exited(exit(137)), ExitOutcome::Quiet);
        assert_eq!(never_started.exit().map(|e| e.status), Some(137));
        never_started.delete_failed(State::Created);
        assert_eq!(never_started.state(), State::Stopped);
    }

    #[test]
    fn pause_and_resume_settle_or_roll_back() {
        let mut life = Lifecycle::new();
        assert!(matches!(
            life.begin_pause(),
            Err(ShimError::FailedPrecondition(_))
        ));
        life.begin_start().unwrap();
        life.start_succeeded();
        life.begin_pause().unwrap();
        assert_eq!(life.status(), Status::PAUSING);
        assert!(life.settle_freeze(true));
        assert_eq!(life.status(), Status::PAUSED);
        assert!(matches!(
            life.begin_pause(),
            Err(ShimError::FailedPrecondition(_))
        ));
        assert!(matches!(
            life.begin_delete(),
            Err(ShimError::FailedPrecondition(_))
        ));
        life.check_signalable().unwrap();
        life.begin_resume().unwrap();
        assert!(
            !life.settle_freeze(false),
            "a failed resume leaves it paused"
        );
        assert_eq!(life.state(), State::Paused);
        life.begin_resume().unwrap();
        assert!(life.settle_freeze(true));
        assert_eq!(life.state(), State::Running);
    }

    #[test]
    fn an_exit_during_pause_wins() {
        let mut life = Lifecycle::new();
        life.begin_start().unwrap();
        life.start_succeeded();
        life.begin_pause().unwrap();
        assert_eq!(life.exited(exit(137)), ExitOutcome::Publish);
        assert!(!life.settle_freeze(true));
        assert_eq!(life.state(), State::Stopped);
        assert!(life.is_stopped());
    }

    #[test]
    fn duplicate_exits_are_quiet() {
        let mut life = Lifecycle::new();
        life.begin_start().unwrap();
        life.start_succeeded();
        assert_eq!(life.exited(exit(0)), ExitOutcome::Publish);
        assert_eq!(life.exited(exit(1)), ExitOutcome::Quiet);
        assert_eq!(life.exit().map(|e| e.status), Some(0));
    }
}
