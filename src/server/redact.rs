//! What read-only peers do not see: the worker's command line.
//!
//! A `start_failed` event's message quotes the whole argv (`cannot start "/srv/app/bin/worker
//! --token=...": No such file or directory`), and argv is where operators put API keys and broker
//! passwords. Root and admins (who can read the policy files anyway) get it whole; readers get
//! `command[0]` and how many arguments were hidden. The daemon's log keeps the full text.
//! Fails closed: a `start_failed` message of any other shape is replaced as a whole. A restart
//! hook's output (`hooks[].output`) is hidden from readers too.

use crate::protocol::EventRecord;

/// The action whose message carries argv (src/instance.rs).
const START_FAILED: &str = "start_failed";
/// The shape of that message: this prefix, the Debug-quoted command, `": "`, the OS error.
const PREFIX: &str = "cannot start the worker: cannot start \"";
/// The text readers get for a message whose shape is not the one above.
const HIDDEN: &str = "cannot start the worker (details hidden: they quote the command line, \
                      which only root and admins may read; see the daemon's log)";

/// The record as a read-only peer may see it.
pub(super) fn for_reader(mut event: EventRecord) -> EventRecord {
    if event.action == START_FAILED {
        event.message = redact_start_failed(&event.message);
    }
    // A restart hook's output is whatever the operator's program printed (a load balancer's
    // reply, a stack dump with request data): root's and admins' to read, like the policy.
    for hook in &mut event.hooks {
        if !hook.output.is_empty() {
            hook.output = HOOK_OUTPUT_HIDDEN.to_string();
        }
    }
    event
}

/// What readers get instead of a restart hook's output.
const HOOK_OUTPUT_HIDDEN: &str = "(hidden: only root and admins may read a hook's output)";

fn redact_start_failed(message: &str) -> String {
    let Some(rest) = message.strip_prefix(PREFIX) else {
        return HIDDEN.to_string();
    };
    // The closing quote: the first `"` not escaped by Debug formatting.
    let mut escaped = false;
    let mut end = None;
    for (i, c) in rest.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => {
                end = Some(i);
                break;
            }
            _ => {}
        }
    }
    let Some(end) = end else {
        return HIDDEN.to_string();
    };
    let (command, tail) = rest.split_at(end);
    let Some(cause) = tail.strip_prefix("\": ") else {
        return HIDDEN.to_string();
    };
    let mut words = command.split(' ');
    let program = words.next().unwrap_or_default();
    let hidden = words.count();
    let args = match hidden {
        0 => String::new(),
        1 => " (1 argument hidden)".to_string(),
        n => format!(" ({n} arguments hidden)"),
    };
    format!("cannot start the worker: cannot start \"{program}\"{args}: {cause}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_see_the_program_and_a_count() {
        let full =
            "cannot start the worker: cannot start \"/srv/app/bin/worker --token=s3cret -v\": \
                    No such file or directory (os error 2)";
        assert_eq!(
            redact_start_failed(full),
            "cannot start the worker: cannot start \"/srv/app/bin/worker\" (2 arguments hidden): \
             No such file or directory (os error 2)"
        );
        let one = "cannot start the worker: cannot start \"/bin/x \\\"a b\\\"\": denied";
        let got = redact_start_failed(one);
        assert_eq!(
            got,
            "cannot start the worker: cannot start \"/bin/x\" (2 arguments hidden): denied"
        );
        assert_eq!(
            redact_start_failed("cannot start the worker: cannot start \"/bin/x\": denied"),
            "cannot start the worker: cannot start \"/bin/x\": denied"
        );
    }

    #[test]
    fn readers_do_not_see_hook_output() {
        let mut ev = EventRecord::blank(
            "web/0",
            crate::vocabulary::Reason::Manual,
            "restart",
            "m".into(),
        );
        let hook = crate::protocol::HookRecord {
            when: "before".into(),
            argv0: "/usr/local/bin/lb-drain".into(),
            exit: Some(0),
            signal: None,
            timed_out: false,
            error: None,
            output: "token=s3cret".into(),
            took_ms: 3,
        };
        ev.hooks = vec![hook.clone()];
        let seen = for_reader(ev);
        assert_eq!(seen.hooks[0].output, HOOK_OUTPUT_HIDDEN);
        assert_eq!(seen.hooks[0].exit, Some(0));
        assert_eq!(seen.hooks[0].argv0, hook.argv0);
    }

    #[test]
    fn any_other_shape_is_hidden_whole() {
        for odd in [
            "cannot start the worker: user \"app\" does not exist on this host --token=s3cret",
            "cannot start the worker: cannot start \"/bin/x --token=s3cret",
            "cannot start the worker: cannot start \"/bin/x --token=s3cret\" and more",
            "",
        ] {
            assert_eq!(redact_start_failed(odd), HIDDEN, "{odd}");
        }
    }
}
