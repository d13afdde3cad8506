//! The JSON Schema of a policy file, printed by `oomguard schema` for editors (yaml-language-server).
//!
//! Generated from the parser's own serde mirror (`raw`, which derives `JsonSchema`), so a key added
//! there is in the schema without anyone remembering to: `deny_unknown_fields` becomes
//! `additionalProperties: false`, `rename = "for"` the key `for`. The leaf types' textual forms
//! (sizes, limits, durations) are described here, next to nothing else.
//!
//! The schema is structural: cross-field rules (`high` not above `max`, exactly one of
//! `some`/`full`, ranges) stay in `validate`, and `oomguard check` remains the authority.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use super::raw::{Field, RawPolicy};
use crate::units::{ByteSize, Dur, Limit};
use crate::vocabulary::Mode;

/// A byte size as `units` parses it: digits with an optional binary suffix, either case.
const SIZE_PATTERN: &str = "^[0-9]+[KMGTkmgt]?$";
/// humantime's grammar, loosely: "0", or numbers each with a unit, spaces optional ("1h 30m",
/// "1h30m", "1.5s"). Units are not listed: an editor must never flag a file the parser accepts.
const DURATION_PATTERN: &str =
    "^ *(0|[0-9]+(\\.[0-9]+)? *[A-Za-zµ]+( *[0-9]+(\\.[0-9]+)? *[A-Za-zµ]+)*) *$";

/// The schema of one policy file, as JSON.
pub fn schema() -> serde_json::Value {
    let mut schema = SchemaGenerator::default().into_root_schema_for::<RawPolicy>();
    schema.insert("title".into(), "oomguard policy".into());
    schema.insert(
        "description".into(),
        "One oomguard policy file (/etc/oomguard/policies.d/*.yaml). Reference: docs/policy.md; \
         `oomguard check FILE` is the authority (ranges and cross-field rules are checked there)."
            .into(),
    );
    schema.to_value()
}

/// Transparent: a `Field<T>` is written exactly as a `T`.
impl<T: JsonSchema> JsonSchema for Field<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Bytes, with an optional suffix K, M, G or T (powers of 1024): 4096, 512K, 1536M, 2G.",
            "oneOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": SIZE_PATTERN}
            ]
        })
    }
}

impl JsonSchema for Limit {
    fn schema_name() -> Cow<'static, str> {
        "Limit".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A byte size (512M, 2G; powers of 1024) or \"max\" (no limit).",
            "oneOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": SIZE_PATTERN},
                {"const": "max"}
            ]
        })
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration with a unit: 150ms, 30s, 5m, 1h 30m. A bare number needs a unit, except 0.",
            "oneOf": [
                {"const": 0},
                {"type": "string", "pattern": DURATION_PATTERN}
            ]
        })
    }
}

impl JsonSchema for Mode {
    fn schema_name() -> Cow<'static, str> {
        "Mode".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "enforce: restart offenders; observe: decide and report only, never signal.",
            "enum": ["enforce", "observe"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The patterns accept what the parser accepts (an editor must not flag a good file) and
    /// refuse the obvious typos.
    #[test]
    fn leaf_patterns_follow_the_parsers() {
        let size = regex_like(SIZE_PATTERN);
        for ok in ["0", "4096", "512K", "1536M", "2g", "1T"] {
            assert!(ok.parse::<ByteSize>().is_ok(), "{ok}");
            assert!(size(ok), "{ok}");
        }
        for bad in ["1.5G", "2GB", "2 G", "-1", ""] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
            assert!(!size(bad), "{bad}");
        }
        let dur = regex_like(DURATION_PATTERN);
        for ok in [
            "150ms", "30s", "5m", "1h", "1h 30m", "1h30m", "1.5s", "0", "2min",
        ] {
            assert!(ok.parse::<Dur>().is_ok(), "{ok}");
            assert!(dur(ok), "{ok}");
        }
        for bad in ["soon", "", "s", "30"] {
            assert!(bad.parse::<Dur>().is_err(), "{bad}");
            assert!(!dur(bad), "{bad}");
        }
    }

    /// The schema's validator is the judge of the patterns (tests/schema.rs); here, a check
    /// that needs no regex engine: compile the pattern into a tiny schema and validate.
    fn regex_like(pattern: &'static str) -> impl Fn(&str) -> bool {
        move |s| {
            let v = json_schema_pattern_matches(pattern, s);
            v.unwrap_or_else(|e| panic!("{pattern}: {e}"))
        }
    }

    fn json_schema_pattern_matches(pattern: &str, s: &str) -> Result<bool, String> {
        let schema = serde_json::json!({"type": "string", "pattern": pattern});
        let v = jsonschema::validator_for(&schema).map_err(|e| e.to_string())?;
        Ok(v.is_valid(&serde_json::json!(s)))
    }

    #[test]
    fn every_raw_section_is_closed_and_for_is_spelt_for() {
        let s = schema();
        let defs = s["$defs"].as_object().expect("$defs");
        for (name, def) in defs {
            if def.get("properties").is_some() {
                assert_eq!(
                    def["additionalProperties"],
                    serde_json::json!(false),
                    "{name} must refuse unknown keys, as deny_unknown_fields does"
                );
            }
        }
        assert_eq!(s["additionalProperties"], serde_json::json!(false));
        let pressure = &defs["RawPressure"]["properties"];
        assert!(pressure.get("for").is_some(), "{pressure}");
        assert!(pressure.get("sustain").is_none(), "{pressure}");
    }
}
