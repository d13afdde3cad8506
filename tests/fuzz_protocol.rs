//! Bounded fuzzing of the protocol decoder: any request line in, a `Request` or an error body
//! out, never a panic; and a line that decodes re-encodes to the same request. Random bytes,
//! and JSON-aware mutations of every JSON example in docs/protocol.md and of the seed corpus
//! (tests/fuzz/corpus/protocol/, one document per line), which `corpus_replays` also runs as it
//! is. Responses go through the client's decoder the same way, and then through what the CLI
//! prints (status table, event lines, metrics). PROPTEST_CASES=N runs longer.

use std::sync::OnceLock;

use oomguard::protocol::{EventRecord, Request, Response, StatusReport};
use oomguard::{metrics, table};
use proptest::prelude::*;
use serde_json::{Map, Number, Value};

#[path = "fuzz/common.rs"]
mod common;
use common::{apply, config, corpus, edit, Edit};

/// Decodes `line` as the daemon and the client would; a request that decodes must survive a
/// round trip through its own encoding.
fn check(line: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(req) = Request::parse(line) {
        let again = Request::parse(req.to_line().as_bytes());
        prop_assert_eq!(again.as_ref().ok(), Some(&req), "{}", req.to_line());
    }
    if let Ok(resp) = Response::parse(line) {
        render(resp);
    }
    Ok(())
}

/// What the CLI does with a reply it decoded: the table, the event line, the metrics text.
fn render(resp: Response) {
    if let Ok(report) = resp.clone().into_result::<StatusReport>() {
        let _ = table::render_status(&report, 1_700_000_000);
        let _ = table::render_status(&report, 0);
        let _ = metrics::render(&report);
    }
    if let Ok(event) = resp.clone().into_result::<EventRecord>() {
        let _ = table::render_event(&event);
    }
    if let Ok(events) = resp.into_result::<Vec<EventRecord>>() {
        events.iter().for_each(|e| {
            let _ = table::render_event(e);
        });
    }
}

/// Every JSON document in docs/protocol.md's ```json blocks, and every line of the corpus.
fn seeds() -> &'static [Value] {
    static SEEDS: OnceLock<Vec<Value>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let doc = include_str!("../docs/protocol.md");
        let mut seeds: Vec<Value> = doc
            .split("```json")
            .skip(1)
            .filter_map(|block| block.split("```").next())
            .flat_map(|block| {
                serde_json::Deserializer::from_str(block)
                    .into_iter::<Value>()
                    .filter_map(Result::ok)
                    .collect::<Vec<_>>()
            })
            .collect();
        for (_, bytes) in corpus("protocol") {
            for line in bytes.split(|b| *b == b'\n') {
                if let Ok(v) = serde_json::from_slice(line) {
                    seeds.push(v);
                }
            }
        }
        assert!(seeds.len() >= 30, "lost the seeds: {}", seeds.len());
        seeds
    })
}

const KEYS: &[&str] = &[
    "v", "cmd", "target", "last", "follow", "ok", "data", "error", "code", "message", "details",
    "", "V", "cmd ", "\u{0}",
];

const STRINGS: &[&str] = &[
    "status",
    "events",
    "restart",
    "reload",
    "metrics",
    "observations",
    "celery",
    "celery/0",
    "celery/",
    "/0",
    "celery/01",
    "celery/-1",
    "celery/18446744073709551616",
    "../etc",
    "Celery/0",
    "a/b/c",
    "é",
    "\u{0}",
    "busy",
    "lagged",
    "shutting_down",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(STRINGS).prop_map(Value::from),
        "\\PC{0,16}".prop_map(Value::from),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..4).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// One change to a JSON document.
#[derive(Clone, Debug)]
enum JsonEdit {
    Set(&'static str, Value),
    Remove(usize),
    /// Replaces the whole document with `[doc]` or `{"k": doc}`.
    Wrap(bool),
    /// Replaces a field's value with itself nested `n` arrays deep.
    Nest(usize, usize),
    /// Replaces the `i`-th leaf (any depth, depth-first) with a value: reaches nested fields
    /// such as an event's `time_ms` or an instance's `memory_max`.
    Leaf(usize, Value),
}

/// Numbers at the edges of what the fields hold.
fn extreme() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::from(u64::MAX)),
        Just(Value::from(i64::MIN)),
        Just(Value::from(0)),
        Just(Value::from(-1)),
        Just(Value::from(f64::MAX)),
        Just(Value::from(-0.0)),
        Just(Value::from(253_402_300_800_000u64)),
        leaf(),
    ]
}

fn leaves(v: &mut Value) -> Vec<&mut Value> {
    match v {
        Value::Array(items) => items.iter_mut().flat_map(leaves).collect(),
        Value::Object(map) => map.values_mut().flat_map(leaves).collect(),
        leaf => vec![leaf],
    }
}

fn json_edit() -> impl Strategy<Value = JsonEdit> {
    prop_oneof![
        4 => (prop::sample::select(KEYS), json()).prop_map(|(k, v)| JsonEdit::Set(k, v)),
        2 => any::<usize>().prop_map(JsonEdit::Remove),
        1 => any::<bool>().prop_map(JsonEdit::Wrap),
        1 => (any::<usize>(), 1usize..200).prop_map(|(i, n)| JsonEdit::Nest(i, n)),
        4 => (any::<usize>(), extreme()).prop_map(|(i, v)| JsonEdit::Leaf(i, v)),
    ]
}

fn mutate(mut doc: Value, edits: &[JsonEdit]) -> Value {
    for e in edits {
        match (e, &mut doc) {
            (JsonEdit::Set(k, v), Value::Object(map)) => {
                map.insert((*k).to_string(), v.clone());
            }
            (JsonEdit::Remove(i), Value::Object(map)) if !map.is_empty() => {
                let key = map.keys().nth(i % map.len()).cloned();
                if let Some(key) = key {
                    map.remove(&key);
                }
            }
            (JsonEdit::Nest(i, n), Value::Object(map)) if !map.is_empty() => {
                let key = map.keys().nth(i % map.len()).cloned();
                if let Some(v) = key.and_then(|k| map.get_mut(&k)) {
                    for _ in 0..*n {
                        *v = Value::Array(vec![v.take()]);
                    }
                }
            }
            (JsonEdit::Leaf(i, v), doc) => {
                let mut all = leaves(doc);
                let n = all.len();
                if n > 0 {
                    *all[i % n] = v.clone();
                }
            }
            (JsonEdit::Wrap(true), _) => doc = Value::Array(vec![doc.take()]),
            (JsonEdit::Wrap(false), _) => {
                doc = Value::Object(Map::from_iter([("k".to_string(), doc.take())]));
            }
            _ => {}
        }
    }
    doc
}

proptest! {
    #![proptest_config(config(5000))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check(&bytes)?;
    }

    #[test]
    fn random_json_never_panics(doc in json()) {
        check(doc.to_string().as_bytes())?;
    }

    #[test]
    fn mutated_examples_never_panic(
        seed in any::<prop::sample::Index>(),
        json_edits in prop::collection::vec(json_edit(), 1..5),
        edits in prop::collection::vec(edit(), 0..3),
    ) {
        let doc = mutate(seed.get(seeds()).clone(), &json_edits);
        let mut bytes = doc.to_string().into_bytes();
        check(&bytes)?;
        apply(&mut bytes, &edits);
        check(&bytes)?;
    }
}

/// Every corpus line as it is; none may panic. `ok-*` files hold requests that must decode,
/// `bad-*` files lines that must be refused.
#[test]
fn corpus_replays() {
    let corpus = corpus("protocol");
    assert!(corpus.len() >= 5, "the corpus went missing");
    for (path, bytes) in &corpus {
        let name = path.file_name().expect("a file name").to_string_lossy();
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let shown = String::from_utf8_lossy(line);
            let decoded = Request::parse(line);
            if let Ok(resp) = Response::parse(line) {
                render(resp);
            }
            if name.starts_with("ok-") {
                assert!(decoded.is_ok(), "{name}: {shown}: {:?}", decoded.err());
            } else if name.starts_with("bad-") {
                assert!(decoded.is_err(), "{name}: {shown} was accepted");
            }
        }
    }
}

#[test]
fn edits_reach_every_kind() {
    // Guards the generator itself: a mutation that never changes anything finds nothing.
    let doc = serde_json::json!({"v": 1, "cmd": "status"});
    let nested = mutate(doc.clone(), &[JsonEdit::Nest(0, 3)]);
    assert_ne!(nested, doc);
    let mut bytes = doc.to_string().into_bytes();
    apply(&mut bytes, &[Edit::Truncate(3)]);
    assert_eq!(bytes, b"{\"c");
}
