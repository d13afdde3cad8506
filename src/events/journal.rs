//! Each event as one log line: plain text on stderr, or a journal entry with structured fields
//! (`MESSAGE_ID`, `OOMGUARD_INSTANCE`, `OOMGUARD_REASON`, memory figures) when the daemon's
//! stderr is the journal. `crate::logging` routes the two copies: [`PLAIN_TARGET`] to the text
//! output, [`JOURNAL_TARGET`] to the journal, each layer dropping the other's copy, so an event
//! is logged exactly once wherever the logs go.
//!
//! The `MESSAGE_ID`s are a contract with operators' journal queries and alerts
//! (docs/install.md lists them): never change one; a new kind of event gets a new id.

use tracing::Level;

use crate::protocol::EventRecord;

use crate::vocabulary::Ending;

/// The target of an event's plain-text line.
pub const PLAIN_TARGET: &str = "oomguard::event";
/// The target of an event's journal entry. Its field names are journal field names: the layer
/// that writes it adds no prefix.
pub const JOURNAL_TARGET: &str = "oomguard::event::journal";

/// `MESSAGE_ID` per event kind (the event's `action`), as `journalctl MESSAGE_ID=...` takes it.
pub const MESSAGE_IDS: [(&str, &str); 11] = [
    ("restart", "931ff1f3ccd24e48ab311b16fb7477f2"),
    ("would_restart", "79f388907e1d4e0384c39df781f8eb24"),
    ("exit", "47bb7d090763419d8c660ede1820900e"),
    ("oom_kill", "8ce02bd028ea4b449ec4d90d607bd247"),
    ("failed", "c9f37464be7944439a2a9c8e83c9cca6"),
    ("start_failed", "9a4272f20d9843fe929d8cbf4d008978"),
    ("child_recycle", "b0cd6edd96ca488498ce47c164c28636"),
    ("would_recycle", "7424ded9aa2e440c980a1872d8a4bba0"),
    ("child_escalation", "1cde28a828774c9eaa763be630808678"),
    ("after_hook", "b128c37014d64514a021a12665ea9c02"),
    ("unarmed", "5b28377e5c6a410eb699baaa0a24c041"),
];

/// Any other kind: still findable, and a sign that this table needs a row.
pub const OTHER_MESSAGE_ID: &str = "891e3a5ef62747cc8f35a9ff87f55031";

pub fn message_id(action: &str) -> &'static str {
    MESSAGE_IDS
        .iter()
        .find(|(a, _)| *a == action)
        .map_or(OTHER_MESSAGE_ID, |(_, id)| id)
}

/// How loud an event is: a kernel OOM kill means oomguard acted too late, a failed instance
/// needs an operator.
pub fn level(action: &str) -> Level {
    match action {
        "oom_kill" => Level::WARN,
        "failed" | "start_failed" => Level::ERROR,
        _ => Level::INFO,
    }
}

/// tracing's macros take their level as a constant.
macro_rules! at_level {
    ($level:expr, $($args:tt)+) => {
        match $level {
            Level::ERROR => tracing::error!($($args)+),
            Level::WARN => tracing::warn!($($args)+),
            _ => tracing::info!($($args)+),
        }
    };
}

/// Logs `ev` once (the layers pick the copy for their output).
pub fn log(ev: &EventRecord) {
    let level = level(&ev.action);
    at_level!(level, target: PLAIN_TARGET, instance = %ev.instance, reason = ev.reason.as_str(), "{}", ev.message);

    let (policy, index) = ev.instance.split_once('/').unwrap_or((&ev.instance, ""));
    let (ending, exit_code, exit_signal) = match &ev.ending {
        Some(Ending::Exited { code, signal, .. }) => (Some("exited"), *code, *signal),
        Some(Ending::KilledAfterGrace { .. }) => (Some("killed_after_grace"), None, None),
        Some(Ending::OomKilled) => (Some("oom_killed"), None, None),
        None => (None, None, None),
    };
    // "high=5273 max=2": the memory.events counters that rose during the worker's life.
    let memory_events = (!ev.memory_events_delta.is_empty()).then(|| {
        ev.memory_events_delta
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    });
    // "before hook /usr/local/bin/lb-drain: exit 0 in 212 ms": how each restart hook went.
    let hooks = (!ev.hooks.is_empty()).then(|| {
        ev.hooks
            .iter()
            .map(crate::hooks::describe)
            .collect::<Vec<_>>()
            .join("; ")
    });
    at_level!(
        level,
        target: JOURNAL_TARGET,
        message_id = message_id(&ev.action),
        oomguard_instance = %ev.instance,
        oomguard_policy = policy,
        oomguard_index = index,
        oomguard_reason = ev.reason.as_str(),
        oomguard_action = %ev.action,
        oomguard_seq = ev.seq,
        oomguard_memory_current = ev.memory_current,
        oomguard_memory_peak = ev.memory_peak,
        oomguard_memory_events = memory_events,
        oomguard_psi_some_avg10 = ev.psi_some_avg10,
        oomguard_psi_full_avg10 = ev.psi_full_avg10,
        oomguard_ending = ending,
        oomguard_exit_code = exit_code,
        oomguard_exit_signal = exit_signal,
        oomguard_trigger_to_signal_us = ev.trigger_to_signal_us,
        oomguard_signal_to_exit_ms = ev.signal_to_exit_ms,
        oomguard_exit_to_exec_ms = ev.exit_to_exec_ms,
        oomguard_overlap_ms = ev.overlap_ms,
        oomguard_dead_time_ms = ev.dead_time_ms,
        oomguard_replacement_pid = ev.replacement_pid,
        oomguard_child_pid = ev.child_pid,
        oomguard_child_leaf = ev.child_leaf.as_deref(),
        oomguard_hooks = hooks.as_deref(),
        "{}",
        ev.message
    );
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::Layer;

    use super::*;
    use crate::vocabulary::Reason;

    #[test]
    fn message_ids_are_distinct_128_bit_hex() {
        let mut seen = HashSet::new();
        for (action, id) in MESSAGE_IDS
            .iter()
            .copied()
            .chain([("other", OTHER_MESSAGE_ID)])
        {
            assert_eq!(id.len(), 32, "{action}");
            assert!(id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert!(seen.insert(id), "{action}: {id} used twice");
            assert!(seen.insert(action), "{action} listed twice");
        }
        assert_eq!(message_id("restart"), "931ff1f3ccd24e48ab311b16fb7477f2");
        assert_eq!(message_id("hook_ran"), OTHER_MESSAGE_ID);
    }

    /// What each target received: (target, level, fields).
    type Seen = Arc<Mutex<Vec<(String, Level, BTreeMap<String, String>)>>>;

    struct Recorder(Seen);

    impl<S: tracing::Subscriber> Layer<S> for Recorder {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            struct Fields(BTreeMap<String, String>);
            impl Visit for Fields {
                fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
                    self.0.insert(f.name().to_string(), format!("{v:?}"));
                }
                fn record_str(&mut self, f: &Field, v: &str) {
                    self.0.insert(f.name().to_string(), v.to_string());
                }
            }
            let mut fields = Fields(BTreeMap::new());
            event.record(&mut fields);
            let m = event.metadata();
            let mut seen = self.0.lock().unwrap();
            seen.push((m.target().to_string(), *m.level(), fields.0));
        }
    }

    pub(crate) fn restart_event() -> EventRecord {
        EventRecord {
            seq: 7,
            time_ms: 1,
            instance: "celery/0".into(),
            reason: Reason::Pressure,
            action: "restart".into(),
            memory_current: Some(53_687_091),
            memory_peak: None,
            memory_events_delta: [("high".to_string(), 12), ("oom_kill".to_string(), 0)]
                .into_iter()
                .collect(),
            psi_some_avg10: Some(5.4),
            psi_full_avg10: Some(0.0),
            ending: Some(Ending::Exited {
                code: Some(0),
                signal: None,
                after_ms: 481,
            }),
            trigger_to_signal_us: Some(250),
            signal_to_exit_ms: Some(481),
            exit_to_exec_ms: Some(37),
            overlap_ms: None,
            dead_time_ms: Some(37),
            replacement_pid: Some(5151),
            message: "restart (pressure): held 1.1s".into(),
            child_pid: None,
            child_leaf: None,
            hooks: Vec::new(),
        }
    }

    #[test]
    fn an_event_is_one_plain_line_and_one_journal_entry_with_its_figures() {
        let seen: Seen = Arc::default();
        let subscriber = tracing_subscriber::registry().with(Recorder(Arc::clone(&seen)));
        tracing::subscriber::with_default(subscriber, || log(&restart_event()));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        let (target, level, plain) = &seen[0];
        assert_eq!((target.as_str(), *level), (PLAIN_TARGET, Level::INFO));
        assert_eq!(plain["instance"], "celery/0");
        assert_eq!(plain["message"], "restart (pressure): held 1.1s");

        let (target, _, j) = &seen[1];
        assert_eq!(target, JOURNAL_TARGET);
        let want = [
            ("message", "restart (pressure): held 1.1s"),
            ("message_id", "931ff1f3ccd24e48ab311b16fb7477f2"),
            ("oomguard_instance", "celery/0"),
            ("oomguard_policy", "celery"),
            ("oomguard_index", "0"),
            ("oomguard_reason", "pressure"),
            ("oomguard_action", "restart"),
            ("oomguard_memory_current", "53687091"),
            ("oomguard_memory_events", "high=12 oom_kill=0"),
            ("oomguard_psi_some_avg10", "5.4"),
            ("oomguard_ending", "exited"),
            ("oomguard_exit_code", "0"),
            ("oomguard_trigger_to_signal_us", "250"),
            ("oomguard_signal_to_exit_ms", "481"),
            ("oomguard_exit_to_exec_ms", "37"),
            ("oomguard_dead_time_ms", "37"),
            ("oomguard_replacement_pid", "5151"),
        ];
        for (k, v) in want {
            assert_eq!(j.get(k).map(String::as_str), Some(v), "{k} in {j:?}");
        }
        // Unknown figures are left out, not written as empty or zero.
        for absent in [
            "oomguard_memory_peak",
            "oomguard_exit_signal",
            "oomguard_hooks",
            "oomguard_overlap_ms",
        ] {
            assert!(!j.contains_key(absent), "{absent} in {j:?}");
        }
    }

    #[test]
    fn hooks_are_one_field() {
        let seen: Seen = Arc::default();
        let subscriber = tracing_subscriber::registry().with(Recorder(Arc::clone(&seen)));
        let mut ev = restart_event();
        ev.action = "after_hook".into();
        ev.hooks = vec![crate::protocol::HookRecord {
            when: "after".into(),
            argv0: "/usr/local/bin/lb-undrain".into(),
            exit: None,
            signal: Some(9),
            timed_out: true,
            error: None,
            output: "x".into(),
            took_ms: 5000,
        }];
        tracing::subscriber::with_default(subscriber, || log(&ev));
        let seen = seen.lock().unwrap();
        let j = &seen[1].2;
        assert_eq!(
            j["oomguard_hooks"],
            "after hook /usr/local/bin/lb-undrain: timed out, killed in 5000 ms"
        );
        assert_eq!(j["message_id"], "b128c37014d64514a021a12665ea9c02");
    }

    #[test]
    fn oom_kills_warn_and_failures_are_errors() {
        assert_eq!(level("oom_kill"), Level::WARN);
        assert_eq!(level("failed"), Level::ERROR);
        assert_eq!(level("start_failed"), Level::ERROR);
        assert_eq!(level("restart"), Level::INFO);
        let seen: Seen = Arc::default();
        let subscriber = tracing_subscriber::registry().with(Recorder(Arc::clone(&seen)));
        let mut ev = restart_event();
        ev.action = "failed".into();
        tracing::subscriber::with_default(subscriber, || log(&ev));
        let seen = seen.lock().unwrap();
        assert!(seen.iter().all(|(_, l, _)| *l == Level::ERROR), "{seen:?}");
        assert_eq!(seen[1].2["message_id"], "c9f37464be7944439a2a9c8e83c9cca6");
    }
}
