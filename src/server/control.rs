//! The local control socket (`<state_dir>/haul.sock`): how `haul deploy` asks the running daemon to deploy.
//! Who may deploy is decided by the socket's file permissions (owner and group); who did deploy is taken
//! from the kernel (`SO_PEERCRED`), never from what the client claims.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::config::{AppConfig, Track};
use crate::deploy::queue::Queue;
use crate::model::{self, DeployRequest, Trigger};
use crate::store::Enqueued;

/// A request on the socket: the wire type.
#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    Deploy {
        app: String,
        sha: Option<String>,
        /// A fleet app: this host alone, straight from the forge, past the fleet. Left out when false, so
        /// the wire stays what older daemons read.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        local: bool,
        /// Deploy although the app's deploy window is closed (the audit names who did).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        override_window: bool,
    },
    Rollback {
        app: String,
        to: Option<String>,
    },
    /// `haul pause APP|--all`: hold automatic triggers (none: every app).
    Pause {
        app: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// `haul resume APP|--all`.
    Resume {
        app: Option<String>,
    },
    /// `haul approve APP`: the newest request awaiting approval runs.
    Approve {
        app: String,
    },
    /// `haul reject APP`: every request awaiting approval is dropped.
    Reject {
        app: String,
    },
}

impl ControlRequest {
    /// The app asked about (`*`: every app).
    pub fn app(&self) -> &str {
        match self {
            ControlRequest::Deploy { app, .. }
            | ControlRequest::Rollback { app, .. }
            | ControlRequest::Approve { app }
            | ControlRequest::Reject { app } => app,
            ControlRequest::Pause { app, .. } | ControlRequest::Resume { app } => {
                app.as_deref().unwrap_or("*")
            }
        }
    }

    /// The deploy request this asks for, by `actor`, validated; the one place a manual request is built, for
    /// the daemon and for an in-process `haul deploy` alike.
    pub(crate) fn to_request(
        &self,
        apps: &std::collections::HashMap<String, Arc<AppConfig>>,
        actor: &str,
    ) -> Result<DeployRequest, String> {
        let cfg = apps
            .get(self.app())
            .ok_or_else(|| format!("no app named {:?} is configured", self.app()))?;
        let git_ref = match &cfg.track {
            Track::Branch(b) => Some(format!("refs/heads/{b}")),
            Track::Tags(_) => None,
        };
        let actor = model::clean_actor(actor);
        match self {
            ControlRequest::Deploy {
                sha,
                local,
                override_window,
                ..
            } => {
                if *local && cfg.fleet.is_none() {
                    return Err(format!(
                        "app {:?} is not a fleet app: `haul deploy {}` already deploys this host alone (drop --local)",
                        cfg.name, cfg.name
                    ));
                }
                if let Some(s) = sha {
                    if !model::is_sha_prefix(s) {
                        return Err(format!("{s:?} is not a commit sha (4 to 64 hex digits)"));
                    }
                }
                let trigger = if *local { Trigger::Local } else { Trigger::Manual };
                // Outside the deploy window a person deploys only on purpose, and the audit says so.
                let mut actor = actor;
                if let Some(w) = &cfg.windows {
                    if let crate::config::WindowState::Closed { until, why } = w.state(model::now_ms()) {
                        if !*override_window {
                            let opens = until
                                .map(|t| format!("; it opens at {}", crate::config::shown_instant(t, w)))
                                .unwrap_or_default();
                            return Err(format!(
                                "{} is {why}{opens}: nothing deployed (`haul deploy {} --override-window` deploys anyway, and the audit records who did)",
                                cfg.name, cfg.name
                            ));
                        }
                        actor = format!("{actor} (overriding the deploy window)");
                    }
                }
                Ok(DeployRequest::new(&cfg.name, trigger, actor)
                    .at_ref(git_ref)
                    .with_sha(sha.as_ref().map(|s| s.to_ascii_lowercase())))
            }
            ControlRequest::Pause { .. }
            | ControlRequest::Resume { .. }
            | ControlRequest::Approve { .. }
            | ControlRequest::Reject { .. } => {
                Err("pause, resume, approve and reject are not deploys".into())
            }
            ControlRequest::Rollback { to, .. } => {
                if let Some(t) = to {
                    if !model::is_valid_release_ref(t) {
                        return Err(format!("{t:?} is neither a release id nor a commit sha"));
                    }
                }
                Ok(DeployRequest::new(&cfg.name, Trigger::Rollback, actor)
                    .at_ref(git_ref)
                    .with_target(to.clone()))
            }
        }
    }
}

#[derive(Serialize, Deserialize, Debug)]
pub struct ControlReply {
    pub ok: bool,
    #[serde(default)]
    pub deploy_id: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    /// What a pause or resume did, for the person who asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A user name for a uid, from the password database, falling back to `uid N`.
pub fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let id: u32 = f.nth(1)?.parse().ok()?;
                (id == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// The groups a user is in: its primary group and every group that lists it, from the group database.
pub fn groups_of(user: &str, primary_gid: u32) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/group") {
        for l in t.lines() {
            let mut f = l.split(':');
            let (Some(name), _, Some(gid), members) = (f.next(), f.next(), f.next(), f.next()) else {
                continue;
            };
            let member = members.is_some_and(|m| m.split(',').any(|u| u.trim() == user));
            if member || gid.parse::<u32>().ok() == Some(primary_gid) {
                out.push(name.to_string());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Who is on the other end of the socket, as the kernel says.
fn peer_of(stream: &UnixStream) -> Option<crate::config::Peer> {
    let c = stream.peer_cred().ok()?;
    let user = user_name(c.uid());
    Some(crate::config::Peer {
        uid: c.uid(),
        groups: groups_of(&user, c.gid()),
        user,
    })
}

/// The person running this process, for a request made without a daemon.
pub(crate) fn local_peer() -> crate::config::Peer {
    // SAFETY: getuid(2) and getgid(2) cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let user = user_name(uid);
    crate::config::Peer {
        uid,
        groups: groups_of(&user, gid),
        user,
    }
}

/// Whether `peer` may make `req`: every action it asks of every app it names (`*`: each app). A refusal
/// is recorded in the audit (a `failed` manual row per app: who tried what) and returned.
pub(crate) async fn permitted(
    req: &ControlRequest,
    peer: &crate::config::Peer,
    queue: &Queue,
) -> Result<(), String> {
    use crate::config::Action;
    let actions: &[Action] = match req {
        ControlRequest::Deploy {
            override_window: true,
            ..
        } => &[Action::Deploy, Action::Override],
        ControlRequest::Deploy { .. } => &[Action::Deploy],
        ControlRequest::Rollback { .. } => &[Action::Rollback],
        ControlRequest::Pause { .. } | ControlRequest::Resume { .. } => &[Action::Pause],
        ControlRequest::Approve { .. } | ControlRequest::Reject { .. } => &[Action::Approve],
    };
    let env = queue.env();
    let apps: Vec<Arc<AppConfig>> = match req.app() {
        "*" => env.apps.values().cloned().collect(),
        one => env.apps.get(one).cloned().into_iter().collect(),
    };
    let mut refusals = Vec::new();
    for app in &apps {
        for a in actions {
            if let Err(why) = app.allow.check(&env.allow, *a, peer, &app.name) {
                let attempt = DeployRequest::new(&app.name, Trigger::Manual, model::clean_actor(&peer.user));
                let note = format!("refused: {why}");
                // Recorded `ignored` (not `failed`): the app's last outcome is its last deploy's.
                if let Err(e) = queue.ignore(attempt, note).await {
                    tracing::warn!(app = %app.name, "cannot record a refused request: {e}");
                }
                tracing::warn!(app = %app.name, "control socket: {why}");
                refusals.push(why);
                break;
            }
        }
    }
    match refusals.len() {
        0 => Ok(()),
        _ => Err(refusals.join("; ")),
    }
}

/// The person running this process, for the audit: `alice`, or `root (sudo by alice)`.
pub(crate) fn local_actor() -> String {
    // SAFETY: getuid(2) cannot fail and touches no memory.
    let uid = unsafe { libc::getuid() };
    let name = user_name(uid);
    match std::env::var("SUDO_USER") {
        Ok(s) if !s.is_empty() && s != name => model::clean_actor(&format!("{name} (sudo by {s})")),
        _ => model::clean_actor(&name),
    }
}

pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    // The caller holds the state dir's lock, so a socket file here is a leftover of a dead daemon.
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, queue: Arc<Queue>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning, as the HTTP door does.
                tracing::warn!("control socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let q = queue.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, q).await {
                tracing::warn!("control socket: {e}");
            }
        });
    }
}

async fn handle(stream: UnixStream, queue: Arc<Queue>) -> std::io::Result<()> {
    // The kernel's word for who asks; a peer it cannot name may do only what no `allow` list restricts.
    let peer = peer_of(&stream).unwrap_or(crate::config::Peer {
        uid: u32::MAX,
        user: "unknown".into(),
        groups: Vec::new(),
    });
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(4096);
    let got = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await;
    let reply = match got {
        Ok(Ok(_)) => match serde_json::from_str::<ControlRequest>(&line) {
            Ok(req) => match permitted(&req, &peer, &queue).await {
                Ok(()) => answer(req, &peer.user, &queue).await,
                Err(why) => ControlReply {
                    ok: false,
                    deploy_id: None,
                    error: Some(why),
                    message: None,
                },
            },
            Err(e) => ControlReply {
                ok: false,
                deploy_id: None,
                error: Some(format!("malformed request: {e}")),
                message: None,
            },
        },
        _ => return Ok(()),
    };
    let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await
}

async fn answer(req: ControlRequest, actor: &str, queue: &Queue) -> ControlReply {
    let fail = |e: String| ControlReply {
        ok: false,
        deploy_id: None,
        error: Some(e),
        message: None,
    };
    if matches!(
        req,
        ControlRequest::Pause { .. }
            | ControlRequest::Resume { .. }
            | ControlRequest::Approve { .. }
            | ControlRequest::Reject { .. }
    ) {
        return match hold(&req, actor, queue).await {
            Ok(message) => ControlReply {
                ok: true,
                deploy_id: None,
                error: None,
                message: Some(message),
            },
            Err(e) => fail(e),
        };
    }
    let request = match req.to_request(&queue.env().apps, actor) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let (app, trigger) = (request.app.clone(), request.trigger);
    match queue.submit(request).await {
        Ok(Enqueued::Recorded { id, .. }) => {
            tracing::info!(deploy_id = %id, app = %app, actor = %actor, "{} queued", trigger.as_str());
            ControlReply {
                ok: true,
                deploy_id: Some(id.to_string()),
                error: None,
                message: None,
            }
        }
        Ok(Enqueued::Duplicate { first } | Enqueued::Replay { first }) => {
            fail(format!("duplicate of {first}"))
        }
        Ok(Enqueued::Passed { id, reason, .. }) => fail(format!("{reason} (deploy {id})")),
        Err(e) => fail(format!("cannot record the request: {e}")),
    }
}

/// A pause, resume, approval or rejection, by `actor`, through the daemon's queue (which wakes the workers
/// it concerns): what it did, in words.
pub(crate) async fn hold(req: &ControlRequest, actor: &str, queue: &Queue) -> Result<String, String> {
    let app = Some(req.app()).filter(|a| *a != "*");
    if let Some(a) = app {
        if !queue.env().apps.contains_key(a) {
            return Err(format!("no app named {a:?} is configured"));
        }
    }
    let what = app.map_or("every app".to_string(), |a| a.to_string());
    let again = app.map_or("haul resume --all".to_string(), |a| format!("haul resume {a}"));
    match req {
        ControlRequest::Pause { reason, .. } => {
            let (h, new) = queue
                .pause(app, actor, reason.clone())
                .await
                .map_err(|e| format!("cannot record the pause: {e}"))?;
            Ok(if new {
                format!("{what} paused: webhooks and polls are recorded deferred until `{again}`; `haul deploy` still deploys")
            } else {
                format!(
                    "{what} was already paused by {} since {}; nothing changed",
                    h.actor,
                    model::compact_utc(h.since_ms)
                )
            })
        }
        ControlRequest::Resume { .. } => {
            let (lifted, released) = queue
                .resume(app, actor)
                .await
                .map_err(|e| format!("cannot record the resume: {e}"))?;
            match lifted {
                Some(_) if released.is_empty() => Ok(format!("{what} resumed; nothing was deferred")),
                Some(_) => Ok(format!(
                    "{what} resumed; the newest deferred request runs now for {}",
                    released.join(", ")
                )),
                None => Err(format!(
                    "{what} is not paused; nothing to resume{}",
                    if app.is_some() {
                        " (a `haul pause --all` is lifted by `haul resume --all`)"
                    } else {
                        ""
                    }
                )),
            }
        }
        ControlRequest::Approve { app } => {
            if queue
                .env()
                .apps
                .get(app)
                .is_some_and(|a| a.approve_within.is_none())
            {
                return Err(format!(
                    "{app} does not ask for approvals (set approve = true in [apps.{app}])"
                ));
            }
            match queue
                .approve(app, actor)
                .await
                .map_err(|e| format!("cannot record the approval: {e}"))?
            {
                Some(id) => Ok(format!(
                    "approved {id}: it deploys now (its row names you as the approver)"
                )),
                None => Err(format!("nothing of {app} is awaiting approval")),
            }
        }
        ControlRequest::Reject { app } => {
            let ids = queue
                .reject(app, actor)
                .await
                .map_err(|e| format!("cannot record the rejection: {e}"))?;
            if ids.is_empty() {
                return Err(format!("nothing of {app} is awaiting approval"));
            }
            Ok(format!("rejected {}: nothing deployed", ids.join(", ")))
        }
        _ => Err("not a pause, resume, approve or reject".into()),
    }
}

/// Client side. `Ok(None)` means no daemon is listening (the caller runs the deploy itself).
pub async fn request(path: &Path, req: &ControlRequest) -> Result<Option<ControlReply>, String> {
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(format!("cannot reach the daemon at {}: {e}", path.display())),
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    write.write_all(&line).await.map_err(|e| e.to_string())?;
    let mut reply = String::new();
    match tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(read).read_line(&mut reply),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("the daemon did not answer: {e}")),
        Err(_) => {
            return Err(
                "the daemon did not answer within 30s; is it hung? (`haul status`, or its logs)".into(),
            )
        }
    }
    serde_json::from_str(&reply)
        .map(Some)
        .map_err(|e| format!("the daemon's answer was not understood: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::testkit::{self, Fixture};
    use crate::model::State;

    const APPS: &str = r#"
[apps.blog]
repo = "repo.git"
path = "srv/blog"

[apps.site]
repo = "repo.git"
path = "srv/site"
tags = "v*"
"#;

    fn deploy(app: &str, sha: Option<&str>) -> ControlRequest {
        ControlRequest::Deploy {
            app: app.into(),
            sha: sha.map(String::from),
            local: false,
            override_window: false,
        }
    }

    fn rollback(app: &str, to: Option<&str>) -> ControlRequest {
        ControlRequest::Rollback {
            app: app.into(),
            to: to.map(String::from),
        }
    }

    #[test]
    fn to_request_validates_what_a_person_typed() {
        let cfg = testkit::parse_in(Path::new("/srv/haul"), APPS);
        let apps = crate::deploy::queue::Env::app_map(&cfg);
        let main = Some("refs/heads/main");
        let check = |req: ControlRequest, want: Result<DeployRequest, &str>| {
            let got = req.to_request(&apps, "alice");
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{req:?}"),
                (Err(e), Err(says)) => assert!(e.contains(says), "{req:?}: {e:?} does not say {says:?}"),
                (got, want) => panic!("{req:?}: got {got:?}, wanted {want:?}"),
            }
        };
        let manual = |app: &str, git_ref: Option<&str>, sha: Option<&str>| {
            DeployRequest::new(app, Trigger::Manual, "alice")
                .at_ref(git_ref.map(String::from))
                .with_sha(sha.map(String::from))
        };
        // `--local` is for a fleet app only: anywhere else it is a mistake, said as one.
        check(
            ControlRequest::Deploy {
                app: "blog".into(),
                sha: None,
                local: true,
                override_window: false,
            },
            Err("is not a fleet app"),
        );
        let back = |app: &str, git_ref: Option<&str>, to: Option<&str>| {
            DeployRequest::new(app, Trigger::Rollback, "alice")
                .at_ref(git_ref.map(String::from))
                .with_target(to.map(String::from))
        };
        check(deploy("blog", None), Ok(manual("blog", main, None)));
        check(
            deploy("blog", Some("abcd")),
            Ok(manual("blog", main, Some("abcd"))),
        );
        check(
            deploy("blog", Some("ABCDEF1")),
            Ok(manual("blog", main, Some("abcdef1"))),
        );
        let full = "a".repeat(64);
        check(deploy("blog", Some(&full)), Ok(manual("blog", main, Some(&full))));
        // A tag app names no branch: the pipeline picks the tag.
        check(deploy("site", None), Ok(manual("site", None, None)));
        check(rollback("site", None), Ok(back("site", None, None)));
        check(rollback("blog", None), Ok(back("blog", main, None)));
        check(
            rollback("blog", Some("20261126T153215-1a2b3c4")),
            Ok(back("blog", main, Some("20261126T153215-1a2b3c4"))),
        );
        check(
            rollback("blog", Some("20261126T153215-1a2b3c4.2")),
            Ok(back("blog", main, Some("20261126T153215-1a2b3c4.2"))),
        );
        check(
            rollback("blog", Some("1a2b3c4")),
            Ok(back("blog", main, Some("1a2b3c4"))),
        );

        let not_a_sha = "is not a commit sha";
        for bad in [
            "abc",
            "xyz1",
            "main",
            "HEAD~1",
            "-abcd",
            "abcd efgh",
            "",
            &"a".repeat(65),
        ] {
            check(deploy("blog", Some(bad)), Err(not_a_sha));
        }
        let not_a_release = "is neither a release id nor a commit sha";
        for bad in [
            "",
            "../etc",
            "-rf",
            ".hidden",
            "a/b",
            "a b",
            "x\n",
            &"a".repeat(81),
        ] {
            check(rollback("blog", Some(bad)), Err(not_a_release));
        }
        for req in [
            deploy("nope", None),
            rollback("nope", None),
            deploy("", None),
            deploy("../blog", None),
        ] {
            check(req, Err("no app named"));
        }
    }

    #[test]
    fn the_actor_is_cleaned() {
        let cfg = testkit::parse_in(Path::new("/srv/haul"), APPS);
        let apps = crate::deploy::queue::Env::app_map(&cfg);
        for (actor, want) in [
            ("alice", "alice"),
            ("  root (sudo by alice) ", "root (sudo by alice)"),
            ("ev\nil\u{1b}[31m", "evil[31m"),
            ("", "unknown"),
            ("\n\t", "unknown"),
        ] {
            let got = deploy("blog", None).to_request(&apps, actor).expect("valid");
            assert_eq!(got.actor, want, "{actor:?}");
        }
        let long = "x".repeat(500);
        let got = deploy("blog", None).to_request(&apps, &long).expect("valid");
        assert_eq!(got.actor.len(), 100, "bounded");
    }

    /// The JSON-lines protocol, pinned: an older `haul` talks to a newer daemon and back.
    #[test]
    fn the_wire_format_round_trips() {
        let cases = [
            (deploy("blog", None), r#"{"op":"deploy","app":"blog","sha":null}"#),
            (
                deploy("blog", Some("abc1")),
                r#"{"op":"deploy","app":"blog","sha":"abc1"}"#,
            ),
            (
                ControlRequest::Deploy {
                    app: "blog".into(),
                    sha: None,
                    local: true,
                    override_window: false,
                },
                r#"{"op":"deploy","app":"blog","sha":null,"local":true}"#,
            ),
            (
                rollback("blog", None),
                r#"{"op":"rollback","app":"blog","to":null}"#,
            ),
            (
                rollback("blog", Some("20261126T153215-1a2b3c4")),
                r#"{"op":"rollback","app":"blog","to":"20261126T153215-1a2b3c4"}"#,
            ),
        ];
        for (req, line) in cases {
            assert_eq!(serde_json::to_string(&req).expect("serialise"), line);
            let back: ControlRequest = serde_json::from_str(line).expect("parse");
            assert_eq!(format!("{back:?}"), format!("{req:?}"));
        }
        // What may be left out, and what may not.
        let parsed: ControlRequest = serde_json::from_str(r#"{"op":"deploy","app":"blog"}"#).expect("parse");
        assert_eq!(format!("{parsed:?}"), format!("{:?}", deploy("blog", None)));
        for bad in [
            r#"{"op":"destroy","app":"blog"}"#,
            r#"{"app":"blog"}"#,
            r#"{"op":"deploy"}"#,
            r#"{"op":"deploy","app":7}"#,
            "deploy blog",
            "",
        ] {
            assert!(
                serde_json::from_str::<ControlRequest>(bad).is_err(),
                "{bad:?} parsed"
            );
        }

        let reply = ControlReply {
            ok: true,
            deploy_id: Some("d".into()),
            error: None,
            message: None,
        };
        let line = serde_json::to_string(&reply).expect("serialise");
        assert_eq!(line, r#"{"ok":true,"deploy_id":"d","error":null}"#);
        let back: ControlReply = serde_json::from_str(r#"{"ok":false,"error":"no"}"#).expect("parse");
        assert_eq!(
            (back.ok, back.deploy_id, back.error.as_deref()),
            (false, None, Some("no"))
        );
    }

    /// One raw line to the socket, and the reply line.
    async fn raw(path: &Path, line: &[u8]) -> ControlReply {
        let mut stream = UnixStream::connect(path).await.expect("connect");
        stream.write_all(line).await.expect("write");
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).await.expect("read");
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply {reply:?}: {e}"))
    }

    #[tokio::test]
    async fn a_request_over_the_socket_is_queued_and_garbage_changes_nothing() {
        let fx = Fixture::new(APPS);
        let path = crate::infra::state_dir::StateDir::new(&fx.cfg.state_dir).socket();
        let nobody = request(&path, &deploy("blog", None)).await.expect("no error");
        assert!(
            nobody.is_none(),
            "no daemon, so the caller deploys in-process: {nobody:?}"
        );
        let listener = bind(&path).expect("bind");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("socket").permissions().mode();
        assert_eq!(mode & 0o777, 0o660, "owner and group only");
        let (stop_tx, stop_rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, fx.queue(), stop_rx));

        let reply = request(&path, &deploy("blog", Some("ABCD123")))
            .await
            .expect("an answer")
            .expect("a daemon");
        assert!(reply.ok, "{reply:?}");
        let id = reply
            .deploy_id
            .as_deref()
            .and_then(model::DeployId::parse)
            .expect("a deploy id");
        let row = fx.row(&id).await;
        assert_eq!(row.state, State::Queued);
        assert_eq!(row.trigger, Trigger::Manual);
        assert_eq!(row.sha.as_deref(), Some("abcd123"));
        // SAFETY: getuid(2) cannot fail and touches no memory.
        let me = user_name(unsafe { libc::getuid() });
        assert_eq!(row.actor, me, "the actor comes from the kernel");

        let refusals: Vec<(Vec<u8>, &str)> = vec![
            (b"this is not json\n".to_vec(), "malformed request"),
            (
                b"{\"op\":\"destroy\",\"app\":\"blog\"}\n".to_vec(),
                "malformed request",
            ),
            (
                b"{\"op\":\"deploy\",\"app\":\"blog\",\"sha\":\"zz\"}\n".to_vec(),
                "is not a commit sha",
            ),
            (
                b"{\"op\":\"rollback\",\"app\":\"blog\",\"to\":\"../x\"}\n".to_vec(),
                "neither a release id",
            ),
            (b"{\"op\":\"deploy\",\"app\":\"nope\"}\n".to_vec(), "no app named"),
            (vec![b'x'; 5000], "malformed request"),
        ];
        for (line, says) in refusals {
            let shown = String::from_utf8_lossy(&line[..line.len().min(60)]).into_owned();
            let reply = raw(&path, &line).await;
            assert!(!reply.ok, "{shown:?}: {reply:?}");
            assert_eq!(reply.deploy_id, None, "{shown:?}");
            let error = reply.error.unwrap_or_default();
            assert!(error.contains(says), "{shown:?}: {error:?} does not say {says:?}");
            let rows = fx.rows().await;
            assert_eq!(rows.len(), 1, "{shown:?}: nothing recorded");
            assert_eq!(
                rows[0].state,
                State::Queued,
                "{shown:?}: the queued request is untouched"
            );
        }

        let _ = stop_tx.send(true);
        server.await.expect("the socket server stops");
    }
}
