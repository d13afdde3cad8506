//! Inside a container (issue 20): `/sys/fs/cgroup` is the container's own cgroup namespace root.
//! `detect` tells a container from a host and a writable mount from a read-only one; `fit` says
//! whether policies fit under the workers' envelope (the container's memory.max minus a reserve
//! for the daemon); `setup` is what `run` calls; `init` the PID 1 duties (orphans, signals, the exit status); `signals` the read-only mode's
//! decision. See docs/containers.md.

pub mod detect;
pub mod fit;
pub mod init;
pub mod setup;
pub mod signals;
pub mod writable;
