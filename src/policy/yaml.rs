//! Turns a serde_norway error (syntax, unknown key, wrong shape) into one [`PolicyError`] with the
//! key path as `key` and the line in the message.
//!
//! serde_norway keeps its path private and only prints it as a "path: " prefix of the message, so
//! the prefix is split off here; the location comes from `Error::location()`.

use std::path::Path;

use crate::policy::PolicyError;

pub(super) fn yaml_error(file: &Path, err: &serde_yaml::Error) -> PolicyError {
    let mut text = err.to_string();
    // The Display form ends with " at line L column C"; the line goes first in our message.
    // Syntax errors from libyaml word their locations differently and are left as they are.
    let line = err.location().and_then(|l| {
        let suffix = format!(" at line {} column {}", l.line(), l.column());
        let stripped = text.strip_suffix(&suffix)?.to_string();
        text = stripped;
        Some(l.line())
    });
    let (path, message) = split_path(&text);
    let message = readable(message);
    let at = line.map(|l| format!("line {l}: ")).unwrap_or_default();

    // "unknown field `hgh`, expected one of ..." is the common typo: name the key itself.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((field, expected)) = rest.split_once('`') {
            let key = under(path, field);
            let expected = expected.trim_start_matches(", ");
            return PolicyError::new(
                file,
                key,
                format!("{at}unknown key: {expected}; fix the spelling or remove it"),
            );
        }
    }
    if let Some(rest) = message.strip_prefix("duplicate field `") {
        if let Some((field, _)) = rest.split_once('`') {
            return PolicyError::new(
                file,
                under(path, field),
                format!("{at}is set twice: keep one"),
            );
        }
    }
    PolicyError::new(file, path.unwrap_or("(yaml)"), format!("{at}{message}"))
}

fn under(path: Option<&str>, field: &str) -> String {
    match path {
        Some(p) => format!("{p}.{field}"),
        None => field.to_string(),
    }
}

/// Splits "memory.high: invalid type ..." into the path and the rest. A prefix counts as a path
/// only if it looks like one, so messages that merely contain ": " are left whole.
fn split_path(text: &str) -> (Option<&str>, &str) {
    if let Some((head, rest)) = text.split_once(": ") {
        let path_char = |c: char| c.is_ascii_alphanumeric() || "_-.[]?".contains(c);
        if !head.is_empty() && head.chars().all(path_char) {
            return (Some(head), rest);
        }
    }
    (None, text)
}

/// serde names our private raw types ("expected struct RawMemory"); say what to write instead.
fn readable(message: &str) -> String {
    match message.find("struct Raw") {
        Some(start) => {
            let tail = &message[start + "struct Raw".len()..];
            let end = tail
                .find(|c: char| !c.is_ascii_alphanumeric())
                .unwrap_or(tail.len());
            format!(
                "{}a mapping of keys (key: value lines){}",
                &message[..start],
                &tail[end..]
            )
        }
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_prefix_is_split_only_when_it_looks_like_a_path() {
        assert_eq!(split_path("memory: bad"), (Some("memory"), "bad"));
        assert_eq!(
            split_path("run.command[0]: invalid type: map"),
            (Some("run.command[0]"), "invalid type: map")
        );
        assert_eq!(split_path("invalid type: map"), (None, "invalid type: map"));
    }

    #[test]
    fn private_type_names_are_replaced() {
        assert_eq!(
            readable("invalid type: integer `5`, expected struct RawMemory"),
            "invalid type: integer `5`, expected a mapping of keys (key: value lines)"
        );
    }
}
