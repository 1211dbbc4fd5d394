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
    Deploy { app: String, sha: Option<String> },
    Rollback { app: String, to: Option<String> },
}

impl ControlRequest {
    pub fn app(&self) -> &str {
        match self {
            ControlRequest::Deploy { app, .. } | ControlRequest::Rollback { app, .. } => app,
        }
    }

    /// The deploy request this asks for, by `actor`, validated; the one place a manual request is built, for
    /// the daemon and for an in-process `haul deploy` alike.
    pub fn to_request(
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
            ControlRequest::Deploy { sha, .. } => {
                if let Some(s) = sha {
                    if !model::is_sha_prefix(s) {
                        return Err(format!("{s:?} is not a commit sha (4 to 64 hex digits)"));
                    }
                }
                Ok(DeployRequest::new(&cfg.name, Trigger::Manual, actor)
                    .at_ref(git_ref)
                    .with_sha(sha.as_ref().map(|s| s.to_ascii_lowercase())))
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

/// The person running this process, for the audit: `alice`, or `root (sudo by alice)`.
pub fn local_actor() -> String {
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
        let Ok((stream, _)) = accepted else {
            continue;
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
    let actor = stream
        .peer_cred()
        .map(|c| user_name(c.uid()))
        .unwrap_or_else(|_| "unknown".into());
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(4096);
    let got = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await;
    let reply = match got {
        Ok(Ok(_)) => match serde_json::from_str::<ControlRequest>(&line) {
            Ok(req) => answer(req, &actor, &queue).await,
            Err(e) => ControlReply {
                ok: false,
                deploy_id: None,
                error: Some(format!("malformed request: {e}")),
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
    };
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
            }
        }
        Ok(Enqueued::Duplicate { first }) => fail(format!("duplicate of {first}")),
        Err(e) => fail(format!("cannot record the request: {e}")),
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
