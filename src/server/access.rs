//! Who may use the socket, from the peer's kernel-reported credentials (SO_PEERCRED) and the
//! user database: root and `admin_uids` may do everything, members of the socket's group may
//! read. Nothing the client says is taken into account.

use std::ffi::CString;

use nix::unistd::{Gid, Uid};
use tracing::warn;

use crate::protocol::{ErrorBody, ErrorCode, Request};

/// The group whose members may read status when the caller names none.
pub const DEFAULT_GROUP: &str = "oomguard";

/// Who may use the socket beyond root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// The readers' group, named in refusals even when it does not exist.
    pub group_name: String,
    /// Its gid; `None` when the group does not exist, and then only root and admins get in.
    pub group_gid: Option<u32>,
    /// Non-root uids that may restart and reload. They also need to be able to open the socket,
    /// i.e. be members of the group (the file is `root:<group>` 0660).
    pub admin_uids: Vec<u32>,
}

impl Access {
    /// Looks the group up by name (default [`DEFAULT_GROUP`]); a missing group means no readers.
    pub fn new(group: Option<&str>, admin_uids: Vec<u32>) -> Access {
        let group_name = group.unwrap_or(DEFAULT_GROUP).to_string();
        let group_gid = lookup_gid(&group_name);
        Access {
            group_name,
            group_gid,
            admin_uids,
        }
    }

    /// Root or an admin uid: known from the uid alone, without the user database, so the
    /// accept loop can reserve slots for them before reading anything.
    pub(super) fn is_admin(&self, uid: u32) -> bool {
        uid == 0 || self.admin_uids.contains(&uid)
    }

    /// The role of a peer; may consult the user database (NSS) for supplementary groups.
    pub(super) async fn role_of(&self, uid: u32, gid: u32) -> Role {
        if let Some(role) = quick_role(self, uid, gid) {
            return role;
        }
        let group = self.group_gid.unwrap_or(u32::MAX);
        let member = tokio::task::spawn_blocking(move || in_supplementary_groups(uid, group))
            .await
            .unwrap_or(false);
        if member {
            Role::Reader
        } else {
            Role::Stranger
        }
    }

    /// Whether a peer in `role` may send `req`; the refusal names what would be needed.
    pub(super) fn authorize(
        &self,
        role: Role,
        uid: u32,
        gid: u32,
        req: &Request,
    ) -> Result<(), ErrorBody> {
        let cmd = req.name();
        let message = match (role, req.changes_state()) {
            (Role::Admin, _) | (Role::Reader, false) => return Ok(()),
            (Role::Reader, true) => format!(
                "`{cmd}` needs root or a uid listed in admin_uids; uid {uid} may only read (status, events, metrics); try sudo"
            ),
            (Role::Stranger, _) => match self.group_gid {
                Some(g) => format!(
                    "`{cmd}` needs root, an admin uid or membership of group `{}` (gid {g}); uid {uid} gid {gid} is none of these",
                    self.group_name
                ),
                None => format!(
                    "`{cmd}` needs root or an admin uid (group `{}` does not exist on this host); uid {uid} is neither",
                    self.group_name
                ),
            },
        };
        Err(ErrorBody::new(ErrorCode::Forbidden, message))
    }
}

/// What the peer may do, from its credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// root or an admin uid: everything.
    Admin,
    /// Member of the group: read-only requests.
    Reader,
    /// Nothing.
    Stranger,
}

/// The role when it follows from uid/gid alone; `None` when supplementary groups decide.
fn quick_role(access: &Access, uid: u32, gid: u32) -> Option<Role> {
    if access.is_admin(uid) {
        return Some(Role::Admin);
    }
    match access.group_gid {
        None => Some(Role::Stranger),
        Some(g) if g == gid => Some(Role::Reader),
        Some(_) => None,
    }
}

/// Whether the user database lists `gid` among `uid`'s groups (may block on NSS).
fn in_supplementary_groups(uid: u32, gid: u32) -> bool {
    let Ok(Some(user)) = nix::unistd::User::from_uid(Uid::from_raw(uid)) else {
        return false;
    };
    let Ok(name) = CString::new(user.name) else {
        return false;
    };
    nix::unistd::getgrouplist(&name, user.gid)
        .is_ok_and(|groups| groups.contains(&Gid::from_raw(gid)))
}

/// The group's gid, or `None` when it does not exist or cannot be looked up (fail closed).
pub(super) fn lookup_gid(name: &str) -> Option<u32> {
    match nix::unistd::Group::from_name(name) {
        Ok(g) => g.map(|g| g.gid.as_raw()),
        Err(e) => {
            warn!(group = name, error = %e, "group lookup failed; treating the group as missing");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(gid: Option<u32>) -> Access {
        Access {
            group_name: "oomguard".into(),
            group_gid: gid,
            admin_uids: vec![1000],
        }
    }

    #[test]
    fn roles_from_uid_and_gid() {
        let a = access(Some(990));
        assert_eq!(quick_role(&a, 0, 0), Some(Role::Admin));
        assert_eq!(quick_role(&a, 1000, 1000), Some(Role::Admin));
        assert_eq!(quick_role(&a, 1001, 990), Some(Role::Reader));
        assert_eq!(
            quick_role(&a, 1001, 1001),
            None,
            "supplementary groups decide"
        );
        assert_eq!(quick_role(&access(None), 1001, 990), Some(Role::Stranger));
        assert_eq!(quick_role(&access(None), 1000, 1000), Some(Role::Admin));
    }

    #[test]
    fn supplementary_groups_come_from_the_user_database() {
        // root's group list always holds gid 0; nobody (65534, if present) is never in root.
        assert!(in_supplementary_groups(0, 0));
        assert!(!in_supplementary_groups(65534, 0));
        assert!(
            !in_supplementary_groups(4_000_000_000, 0),
            "unknown uid is no member"
        );
    }
}
