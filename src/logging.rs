//! Where the daemon's log goes (`--log-format`): by default (`auto`) the systemd journal with
//! structured fields when its stderr is the journal, plain text on stderr everywhere else;
//! `text` is always plain text, `json` one JSON object per line on stderr (`json`).
//!
//! The journal is detected the way systemd documents it (systemd.exec(5), `$JOURNAL_STREAM`): the
//! variable holds the device and inode of the stream systemd connected to stderr, and only if
//! stderr is still that stream are we logging to the journal. A child of the service that
//! inherited the variable but not the stream, or a service whose stderr goes to a file, logs
//! plain text.
//!
//! In the journal, ordinary lines carry their tracing fields with an `OOMGUARD_` prefix
//! (`instance` becomes `OOMGUARD_INSTANCE`); events (`crate::events::journal`) carry
//! `MESSAGE_ID` and the figures under their own names. The journal write never waits
//! (`journald`): what a stalled journald does not take is dropped and counted.

use std::io::IsTerminal;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::Metadata;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::events::journal::{JOURNAL_TARGET, PLAIN_TARGET};

mod journald;

pub use journald::dropped_total;

mod json;

/// `--log-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// The journal when stderr is the journal (under systemd), else plain text.
    #[default]
    Auto,
    /// Plain text on stderr, even under systemd.
    Text,
    /// One JSON object per line on stderr, for container log pipelines.
    Json,
}

/// Prefix of ordinary lines' fields in the journal.
const FIELD_PREFIX: &str = "OOMGUARD";

/// Set once the daemon logs to the journal: workers then get streams of their own
/// (`crate::spawn::stream`).
static TO_JOURNAL: AtomicBool = AtomicBool::new(false);

/// Whether the daemon's log goes to the journal.
pub fn to_journal() -> bool {
    TO_JOURNAL.load(Ordering::Relaxed)
}

/// Whether `journal_stream` (the value of `$JOURNAL_STREAM`, "DEV:INODE" in decimal) names the
/// file whose device and inode are `stderr`.
pub fn is_journal_stream(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    let (Some(value), Some((dev, ino))) = (journal_stream, stderr) else {
        return false;
    };
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

/// Device and inode of our stderr; `None` if it is closed.
fn stderr_dev_ino() -> Option<(u64, u64)> {
    let st = nix::sys::stat::fstat(std::io::stderr().as_raw_fd()).ok()?;
    Some((st.st_dev, st.st_ino))
}

fn not_journal_event(m: &Metadata<'_>) -> bool {
    m.target() != JOURNAL_TARGET
}

/// Installs the global subscriber. `RUST_LOG` filters as usual (default `info`).
pub fn init(format: LogFormat) {
    match format {
        LogFormat::Auto => {}
        LogFormat::Text => return init_plain(),
        LogFormat::Json => return init_json(),
    }
    let journal_stream = std::env::var("JOURNAL_STREAM").ok();
    if is_journal_stream(journal_stream.as_deref(), stderr_dev_ino()) {
        match journal_layers() {
            Ok(()) => {
                TO_JOURNAL.store(true, Ordering::Relaxed);
                return;
            }
            // The journal's socket is not there (a container with the variable passed in):
            // plain text on stderr, which systemd still collects, and say why once.
            Err(e) => {
                init_plain();
                tracing::warn!("JOURNAL_STREAM is set but the journal cannot be reached ({e}): logging plain text");
                return;
            }
        }
    }
    init_plain();
}

fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

fn init_plain() {
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        // Colour only for a person at a terminal: a pipe, a file, `docker logs` or a journal
        // stream would get the escape codes as text. NO_COLOR (no-color.org) turns it off too.
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        .with_writer(std::io::stderr)
        .with_filter(filter_fn(not_journal_event));
    // Fails only if a subscriber is already installed (tests): keep that one.
    let _ = tracing_subscriber::registry()
        .with(env_filter())
        .with(fmt)
        .try_init();
}

/// Whether plain-text lines get ANSI colours.
fn colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn init_json() {
    let _ = tracing_subscriber::registry()
        .with(env_filter())
        .with(json::JsonLayer::new(std::io::stderr))
        .try_init();
}

fn journal_layers() -> std::io::Result<()> {
    let sink =
        journald::Sink::connect(Path::new(journald::JOURNAL_SOCKET), &journald::identifier())?;
    // Ordinary lines, and not the plain copy of an event (its journal copy says more).
    let lines =
        journald::Layer::new(sink.clone(), Some(FIELD_PREFIX)).with_filter(filter_fn(|m| {
            m.target() != PLAIN_TARGET && m.target() != JOURNAL_TARGET
        }));
    // Events: their field names are already the journal's.
    let events =
        journald::Layer::new(sink, None).with_filter(filter_fn(|m| m.target() == JOURNAL_TARGET));
    let _ = tracing_subscriber::registry()
        .with(env_filter())
        .with(lines)
        .with(events)
        .try_init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_at_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None), "a pipe gets no escape codes");
        assert!(!colour(true, Some("1".into())));
        // no-color.org: an empty NO_COLOR is as if unset.
        assert!(colour(true, Some("".into())));
    }

    #[test]
    fn the_journal_is_stderr_only_when_dev_and_inode_match() {
        let stderr = Some((25, 46_113));
        assert!(is_journal_stream(Some("25:46113"), stderr));
        assert!(is_journal_stream(Some("25:46113\n"), stderr));
        // Inherited by a child whose stderr is something else, or no stderr at all.
        assert!(!is_journal_stream(Some("25:46114"), stderr));
        assert!(!is_journal_stream(Some("26:46113"), stderr));
        assert!(!is_journal_stream(Some("25:46113"), None));
        // Not under systemd, or garbage.
        assert!(!is_journal_stream(None, stderr));
        for bad in ["", "25", "25:", ":46113", "x:y", "25:46113:1", "-25:46113"] {
            assert!(!is_journal_stream(Some(bad), stderr), "{bad:?}");
        }
    }

    #[test]
    fn our_own_stderr_matches_a_journal_stream_naming_it() {
        let (dev, ino) = stderr_dev_ino().expect("stderr is open under cargo test");
        let named = format!("{dev}:{ino}");
        assert!(is_journal_stream(Some(&named), stderr_dev_ino()));
        let other = format!("{dev}:{}", ino + 1);
        assert!(!is_journal_stream(Some(&other), stderr_dev_ino()));
    }
}
