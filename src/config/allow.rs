//! Permissions for people on the control socket: who may deploy, roll back, pause, approve or override a
//! window, per app (`[apps.NAME.allow]`) over a top-level default (`[allow]`), by the peer's unix user and
//! groups as the kernel reports them (`SO_PEERCRED`), never as the client claims. `root` always may. An
//! action with no list anywhere is open to whoever can reach the socket (its file mode decides, as before).

use super::raw::RawAllow;

/// What a person asks of an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Deploy,
    Rollback,
    /// `haul pause` and `haul resume`.
    Pause,
    /// `haul approve` and `haul reject`.
    Approve,
    /// `haul deploy --override-window`.
    Override,
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::Deploy,
        Action::Rollback,
        Action::Pause,
        Action::Approve,
        Action::Override,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deploy => "deploy",
            Action::Rollback => "rollback",
            Action::Pause => "pause",
            Action::Approve => "approve",
            Action::Override => "override",
        }
    }
}

/// The lists of one `allow` table: users (`alice`) and groups (`@deployers`), per action.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allow {
    lists: [Option<Vec<String>>; 5],
}

/// Who is asking: the peer's user and the groups it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub user: String,
    pub groups: Vec<String>,
}

pub(crate) fn parse(raw: Option<RawAllow>, key: &str) -> Result<Allow, String> {
    let Some(raw) = raw else {
        return Ok(Allow::default());
    };
    let mut allow = Allow::default();
    for (i, list) in [raw.deploy, raw.rollback, raw.pause, raw.approve, raw.r#override]
        .into_iter()
        .enumerate()
    {
        if let Some(list) = &list {
            for who in list {
                let name = who.strip_prefix('@').unwrap_or(who);
                let ok = !name.is_empty()
                    && name.len() <= 64
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'$'));
                if !ok {
                    return Err(format!(
                        "{key}.{} {who:?} is neither a user name (\"alice\") nor a group (\"@deployers\")",
                        Action::ALL[i].as_str()
                    ));
                }
            }
        }
        allow.lists[i] = list;
    }
    Ok(allow)
}

impl Allow {
    fn list(&self, a: Action) -> Option<&Vec<String>> {
        // `Action::ALL` is in declaration order, so the discriminant is the index.
        self.lists[a as usize].as_ref()
    }

    /// The list that decides `action` for an app with these lists over the top level's `default`.
    pub fn effective<'a>(&'a self, default: &'a Allow, action: Action) -> Option<&'a Vec<String>> {
        self.list(action).or_else(|| default.list(action))
    }

    /// Whether `peer` may do `action`; the refusal names what is missing.
    pub fn check(&self, default: &Allow, action: Action, peer: &Peer, app: &str) -> Result<(), String> {
        let Some(list) = self.effective(default, action) else {
            return Ok(());
        };
        if peer.uid == 0 {
            return Ok(());
        }
        let allowed = list.iter().any(|w| match w.strip_prefix('@') {
            Some(g) => peer.groups.iter().any(|pg| pg == g),
            None => *w == peer.user,
        });
        if allowed {
            return Ok(());
        }
        Err(format!(
            "{} may not {} {app}: allow.{} for {app} is [{}] (a user, or a group with @), and {} is in none of them (groups: {}); ask someone listed, or root",
            peer.user,
            action.as_str(),
            action.as_str(),
            list.join(", "),
            peer.user,
            if peer.groups.is_empty() { "none".to_string() } else { peer.groups.join(", ") }
        ))
    }

    /// One line per action for `haul check`: who may, or `anyone who can reach the socket`.
    pub fn describe(&self, default: &Allow) -> Vec<String> {
        Action::ALL
            .iter()
            .map(|a| match self.effective(default, *a) {
                Some(l) => format!("{}: root, {}", a.as_str(), l.join(", ")),
                None => format!("{}: anyone who can reach the control socket", a.as_str()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(deploy: &[&str], approve: Option<&[&str]>) -> RawAllow {
        RawAllow {
            deploy: Some(deploy.iter().map(|s| s.to_string()).collect()),
            rollback: None,
            pause: None,
            approve: approve.map(|a| a.iter().map(|s| s.to_string()).collect()),
            r#override: None,
        }
    }

    fn peer(user: &str, groups: &[&str]) -> Peer {
        Peer {
            uid: 1000,
            user: user.into(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn users_groups_root_and_the_top_level_default() {
        let top = parse(Some(raw(&["@deployers"], None)), "allow").expect("valid");
        let billing = parse(Some(raw(&["alice"], Some(&["bob"]))), "allow").expect("valid");
        let open = Allow::default();
        assert!(billing
            .check(&top, Action::Deploy, &peer("alice", &[]), "billing")
            .is_ok());
        let err = billing
            .check(&top, Action::Deploy, &peer("intern", &["deployers"]), "billing")
            .expect_err("the app's own list replaces the default");
        assert!(
            err.contains("intern may not deploy billing") && err.contains("[alice]"),
            "{err}"
        );
        assert!(open
            .check(&top, Action::Deploy, &peer("carol", &["deployers"]), "blog")
            .is_ok());
        assert!(open
            .check(&top, Action::Deploy, &peer("intern", &[]), "blog")
            .is_err());
        assert!(
            open.check(&top, Action::Rollback, &peer("intern", &[]), "blog")
                .is_ok(),
            "no list: open"
        );
        let root = Peer {
            uid: 0,
            user: "root".into(),
            groups: vec![],
        };
        assert!(billing.check(&top, Action::Approve, &root, "billing").is_ok());
        assert!(billing
            .check(&top, Action::Approve, &peer("bob", &[]), "billing")
            .is_ok());
        let lines = billing.describe(&top);
        assert_eq!(lines[0], "deploy: root, alice");
        assert_eq!(lines[1], "rollback: anyone who can reach the control socket");
        assert!(parse(Some(raw(&["al ice"], None)), "allow")
            .expect_err("bad")
            .contains("neither a user"));
        assert!(parse(Some(raw(&["@"], None)), "allow").is_err());
    }
}
