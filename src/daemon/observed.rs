//! observations.json in the state directory: the worker lifetimes `oomguard recommend` reads,
//! kept across daemon restarts and reboots. Written atomically (a temporary file renamed over
//! it), 0600 (the CLI asks the daemon over the socket, which decides who may read them). A file
//! that cannot be read or parsed is logged and moved aside to observations.json.corrupt: the
//! daemon starts with no observations rather than not at all, and the bad file is kept for a
//! person to look at.

use tracing::{error, warn};

use super::RuntimeDir;
use crate::observations::{Recorder, Store};

const FILE: &str = "observations.json";
const TMP: &str = "observations.json.tmp";

pub fn load(dir: &RuntimeDir) -> Store {
    let path = dir.path_of(FILE);
    let bytes = match dir.read_named(FILE) {
        Ok(Some(b)) => b,
        Ok(None) => return Store::default(),
        Err(e) => {
            error!(
                "cannot read {}: {e}; starting with no observations",
                path.display()
            );
            set_aside(dir);
            return Store::default();
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(store) => store,
        Err(e) => {
            error!(
                "{} is corrupt ({e}); starting with no observations",
                path.display()
            );
            set_aside(dir);
            Store::default()
        }
    }
}

fn set_aside(dir: &RuntimeDir) {
    match dir.set_aside(FILE) {
        Ok(to) => warn!("moved the unreadable observations to {}", to.display()),
        Err(e) => error!(
            "cannot move {} aside: {e}; it will be replaced at the next save",
            dir.path_of(FILE).display()
        ),
    }
}

/// Saves what changed since the last save; a failure is logged and retried at the next one.
pub fn save(dir: &RuntimeDir, recorder: &Recorder) {
    let Some(store) = recorder.take_dirty() else {
        return;
    };
    let result = serde_json::to_vec(&store)
        .map_err(std::io::Error::other)
        .and_then(|bytes| dir.write_named(FILE, TMP, &bytes, 0o600));
    if let Err(e) = result {
        recorder.mark_dirty();
        warn!("cannot save {}: {e}", dir.path_of(FILE).display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observations::{Lifetime, Reading};

    #[test]
    fn saved_loaded_and_a_corrupt_file_is_set_aside() {
        if !nix::unistd::geteuid().is_root() {
            crate::testing::skip_without_root("needs root (the directory must be root-owned)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = RuntimeDir::open(tmp.path()).unwrap();
        assert_eq!(load(&dir), Store::default(), "missing: empty");
        let rec = Recorder::default();
        let mut store = Store::default();
        store.live.insert(
            "w/0".into(),
            Lifetime::begin("w/0", 9, 1, Reading::default()),
        );
        rec.restore(store.clone());
        save(&dir, &rec);
        assert_eq!(load(&dir), store);
        std::fs::write(tmp.path().join(FILE), b"{half").unwrap();
        assert_eq!(load(&dir), Store::default(), "corrupt: empty, never fatal");
        assert_eq!(
            std::fs::read(tmp.path().join("observations.json.corrupt")).unwrap(),
            b"{half"
        );
        assert!(!tmp.path().join(FILE).exists());
    }
}
