//! oomguard: runs worker instances in cgroup v2 groups and restarts them gracefully before the
//! kernel's OOM killer would act.
//!
//! Layout, from the outside in:
//! - `cli` parses the command line; `main.rs` only calls it.
//! - `policy` and `units` turn YAML into a validated [`policy::Policy`]; nothing else sees raw YAML.
//! - `engine` is the pure decision core: numbers and events in, decisions out. No I/O, no clock.
//! - `cgroupfs`, `psi`, `watch` and `spawn` are the only code that touches the kernel (the OS seam).
//! - `instance` runs one task per worker and carries out the engine's decisions (a restart is
//!   `Instance::restart` in instance/shutdown.rs); `supervisor` is the fleet of them; `holder` keeps the
//!   workers' cgroups in a systemd unit of their own; `layout` says where those cgroups are.
//! - `daemon` wires it together; `server`, `client` and `protocol` are the unix-socket surface.
//!   `metrics` (Prometheus text) and `table` (the CLI's human output) are pure renderings of a status.
//! - `observations` records worker lifetimes; `recommend` (pure) proposes limits from them.

pub mod cgroupfs;
pub mod children;
pub mod cli;
pub mod client;
pub mod container;
pub mod daemon;
pub mod deadline;
pub mod describe;
pub mod engine;
pub mod events;
pub mod exec;
pub mod fdbudget;
pub mod holder;
pub mod hooks;
pub mod hostcheck;
pub mod instance;
pub mod layout;
pub mod logging;
pub mod metrics;
pub mod observations;
pub mod placement;
pub mod policy;
pub mod procfs;
pub mod protocol;
pub mod psi;
pub mod recommend;
pub mod sampler;
pub mod sentinel;
pub mod server;
pub mod shutdown;
pub mod spawn;
pub mod supervisor;
pub mod table;
#[doc(hidden)]
pub mod testing;
pub mod units;
pub mod vocabulary;
pub mod watch;
