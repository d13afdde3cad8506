//! `--log-format json`: one JSON object per line on stderr, for container log pipelines
//! (`kubectl logs`, Fluent Bit, Vector, Loki, ...).
//!
//! Each line starts with `timestamp` (RFC 3339, UTC, microseconds), `level`, `target` and
//! `message`, then the line's own fields at the top level. An event (`crate::events::journal`)
//! is written from its journal copy, so it carries the same figures and `message_id` the
//! journal gets, under the names without the journal's `oomguard_` prefix (`instance`,
//! `policy`, `reason`, `memory_current`, ...), with `target` "oomguard::event". Numbers stay
//! numbers. A small layer rather than tracing-subscriber's `json` feature: it renames the
//! journal's fields and keeps the line flat, which that formatter does not.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::SystemTime;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use crate::events::journal::{JOURNAL_TARGET, PLAIN_TARGET};

/// The keys every line starts with: a field of the same name is written as `field_<name>`.
const RESERVED: [&str; 4] = ["timestamp", "level", "target", "message"];
/// What the journal copy of an event prefixes its own fields with.
const JOURNAL_PREFIX: &str = "oomguard_";

/// Writes each event as one JSON line to `make_writer`.
pub struct JsonLayer<W> {
    make_writer: W,
}

impl<W> JsonLayer<W> {
    pub fn new(make_writer: W) -> Self {
        JsonLayer { make_writer }
    }
}

impl<S, W> Layer<S> for JsonLayer<W>
where
    S: Subscriber,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        // The plain copy of an event says less than its journal copy: drop it.
        if meta.target() == PLAIN_TARGET {
            return;
        }
        let journal = meta.target() == JOURNAL_TARGET;
        let mut fields = Fields {
            strip_prefix: journal,
            ..Fields::default()
        };
        event.record(&mut fields);
        let target = if journal { PLAIN_TARGET } else { meta.target() };
        let line = render(
            SystemTime::now(),
            meta.level().as_str(),
            target,
            &fields.message,
            &fields.others,
        );
        // A log line that cannot be written has nowhere to be reported.
        let _ = self
            .make_writer
            .make_writer_for(meta)
            .write_all(line.as_bytes());
    }
}

/// One line, newline included. serde_json escapes control characters, so a message with a
/// newline in it still makes one line.
pub fn render(
    at: SystemTime,
    level: &str,
    target: &str,
    message: &str,
    fields: &[(String, Value)],
) -> String {
    let timestamp = humantime::format_rfc3339_micros(at).to_string();
    let mut line = String::with_capacity(128 + message.len());
    line.push('{');
    for (i, (key, value)) in [
        ("timestamp", timestamp.as_str()),
        ("level", level),
        ("target", target),
        ("message", message),
    ]
    .into_iter()
    .enumerate()
    {
        if i > 0 {
            line.push(',');
        }
        push_pair(&mut line, key, &Value::from(value));
    }
    for (key, value) in fields {
        line.push(',');
        if RESERVED.contains(&key.as_str()) {
            push_pair(&mut line, &format!("field_{key}"), value);
        } else {
            push_pair(&mut line, key, value);
        }
    }
    line.push_str("}\n");
    line
}

fn push_pair(line: &mut String, key: &str, value: &Value) {
    // Serializing a str or a Value into a String cannot fail.
    let _ = write!(
        line,
        "{}:{}",
        Value::from(key),
        serde_json::to_string(value).unwrap_or_else(|_| "null".into())
    );
}

/// The message and the other fields of one event, in the order they were logged.
#[derive(Default)]
struct Fields {
    strip_prefix: bool,
    message: String,
    others: Vec<(String, Value)>,
}

impl Fields {
    fn push(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if name == "message" {
            self.message = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            return;
        }
        let name = match name.strip_prefix(JOURNAL_PREFIX) {
            Some(short) if self.strip_prefix => short,
            _ => name,
        };
        self.others.push((name.to_string(), value));
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // NaN and infinities are not JSON numbers.
        let v = serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number);
        self.push(field, v);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, Value::from(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, Value::from(value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        // `%x` fields and the message arrive here already formatted for display.
        self.push(field, Value::from(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, UNIX_EPOCH};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::events::journal;

    /// A writer the test reads back: every line the layer wrote.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    fn lines_of(log: impl FnOnce()) -> Vec<serde_json::Map<String, Value>> {
        let out = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(JsonLayer::new(out.clone()));
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with('\n'), "{text:?}");
        text.lines()
            .map(|l| match serde_json::from_str(l) {
                Ok(Value::Object(m)) => m,
                other => panic!("not a JSON object: {l:?} ({other:?})"),
            })
            .collect()
    }

    #[test]
    fn an_ordinary_line_is_one_object_with_its_fields() {
        let lines = lines_of(|| {
            tracing::warn!(policy = "celery", instance = %"celery/1", pid = 4242u32, ratio = 0.5,
                level = "shadowed", "open-files limit 1024 is low\nsecond line");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let l = &lines[0];
        let keys: Vec<&str> = l.keys().map(String::as_str).collect();
        for k in [
            "timestamp",
            "level",
            "target",
            "message",
            "policy",
            "instance",
        ] {
            assert!(keys.contains(&k), "{k} missing: {l:?}");
        }
        assert_eq!(l["level"], "WARN");
        assert_eq!(l["target"], module_path!());
        assert_eq!(l["message"], "open-files limit 1024 is low\nsecond line");
        assert_eq!(l["policy"], "celery");
        assert_eq!(l["instance"], "celery/1");
        assert_eq!(l["pid"], 4242);
        assert_eq!(l["ratio"], 0.5);
        // A field named like a fixed key does not replace it.
        assert_eq!(l["field_level"], "shadowed");
        let ts = l["timestamp"].as_str().unwrap();
        humantime::parse_rfc3339(ts).unwrap_or_else(|e| panic!("{ts}: {e}"));
    }

    #[test]
    fn an_event_is_one_object_with_its_message_id_and_figures() {
        let lines = lines_of(|| journal::log(&journal::tests::restart_event()));
        // One line, not the plain copy and the journal copy.
        assert_eq!(lines.len(), 1, "{lines:?}");
        let l = &lines[0];
        assert_eq!(l["level"], "INFO");
        assert_eq!(l["target"], PLAIN_TARGET);
        assert_eq!(l["message"], "restart (pressure): held 1.1s");
        assert_eq!(l["message_id"], journal::message_id("restart"));
        assert_eq!(l["instance"], "celery/0");
        assert_eq!(l["policy"], "celery");
        assert_eq!(l["reason"], "pressure");
        assert_eq!(l["action"], "restart");
        assert_eq!(l["seq"], 7);
        assert_eq!(l["memory_current"], 53_687_091);
        assert_eq!(l["psi_some_avg10"], 5.4);
        assert_eq!(l["exit_code"], 0);
        assert_eq!(l["replacement_pid"], 5151);
        assert!(
            !l.contains_key("memory_peak"),
            "unknown figures are left out: {l:?}"
        );
        assert!(
            l.keys().all(|k| !k.starts_with(JOURNAL_PREFIX)),
            "journal prefix kept: {l:?}"
        );
    }

    #[test]
    fn render_starts_with_the_fixed_keys_and_escapes() {
        let at = UNIX_EPOCH + Duration::from_micros(1_765_119_849_123_456);
        let line = render(
            at,
            "ERROR",
            "oomguard::daemon",
            "say \"no\"",
            &[("nan".into(), Value::Null), ("n".into(), Value::from(3))],
        );
        assert_eq!(
            line,
            "{\"timestamp\":\"2025-12-07T15:04:09.123456Z\",\"level\":\"ERROR\",\
             \"target\":\"oomguard::daemon\",\"message\":\"say \\\"no\\\"\",\"nan\":null,\"n\":3}\n"
        );
    }
}
