//! The process groups of the programs the hub runs. Each program leads a group of its own
//! ([`crate::command`]), so a Ctrl-C in the hub's terminal reaches the hub alone and what a
//! program starts goes with it when it is killed. The live groups are registered here so a hub
//! that exits without its orderly stop (a second signal) can still end them: [`kill_all`].

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use rustix::process::{Pid, Signal, kill_process_group};

/// Groups whose leader is running, or ended and not yet waited for (its id is still reserved).
static LIVE: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Sends `signal` to the group `pid` leads. A group that is gone already is not an error.
pub(crate) fn signal_group(pid: u32, signal: Signal) {
    let Some(group) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    match kill_process_group(group, signal) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => {}
        Err(e) => {
            tracing::warn!(pid, ?signal, error = %e, "Could not signal the program's process group.");
        }
    }
}

/// A registered group: in [`kill_all`]'s reach until dropped.
#[derive(Debug)]
pub(crate) struct LiveGroup(Option<u32>);

impl LiveGroup {
    /// Registers the group `pid` leads (none: nothing to register).
    pub(crate) fn new(pid: Option<u32>) -> Self {
        if let Some(p) = pid.and_then(|p| i32::try_from(p).ok()) {
            LIVE.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(p);
        }
        Self(pid)
    }

    /// The leader's pid, while registered.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.0
    }

    /// The leader was waited for: its id may be reused, so it is no longer signalled.
    pub(crate) fn release(&mut self) {
        if let Some(p) = self.0.take().and_then(|p| i32::try_from(p).ok()) {
            LIVE.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&p);
        }
    }
}

impl Drop for LiveGroup {
    fn drop(&mut self) {
        self.release();
    }
}

/// SIGKILL to every program the hub runs and what they started: for a hub that exits at once
/// (a second signal) without stopping its consumers, whose programs, in groups of their own,
/// would otherwise live on. Returns how many groups were signalled.
pub fn kill_all() -> usize {
    let live: Vec<i32> = LIVE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .copied()
        .collect();
    for &p in &live {
        signal_group(p.unsigned_abs(), Signal::KILL);
    }
    live.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn kill_all_ends_a_registered_group_and_what_it_started() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30; wait"])
            .process_group(0)
            .spawn()
            .expect("sh runs");
        let group = child.id();
        // Both sleeps started, so the kill has something besides the shell to reach.
        let deadline = Instant::now() + Duration::from_secs(10);
        while running_in_group(group).len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(running_in_group(group).len(), 3, "sh and its two sleeps");
        let live = LiveGroup::new(Some(group));
        assert!(kill_all() >= 1);
        let status = child.wait().expect("waited");
        assert!(!status.success(), "killed: {status:?}");
        drop(live);
        // The background `sleep`s went with their group. A killed member may stay a zombie
        // until whoever inherited it reaps it (a container's init may never do), so only
        // members still running count; a SIGKILL takes effect when the member next runs.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut left = running_in_group(group);
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            left = running_in_group(group);
        }
        assert!(left.is_empty(), "still running in the group: {left:?}");
    }

    /// The pids in process group `group` that are not zombies, read from /proc.
    fn running_in_group(group: u32) -> Vec<u32> {
        let group = group.to_string();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.first() != Some(&"Z") && fields.get(2) == Some(&group.as_str()) {
                found.push(pid);
            }
        }
        found
    }
}
