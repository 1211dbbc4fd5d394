//! `haul demo`: haul's main job on an embedded default, with nothing configured. It creates a throw-away git
//! repository and configuration, starts the real daemon, commits, sends itself a signed GitHub push webhook
//! over loopback HTTP, and shows the release land and the audit row. Then it keeps serving until Ctrl-C, so
//! a newcomer can push more commits and watch them deploy.

use crate::infra::state_dir::StateDir;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::config::Config;
use crate::deploy::release;
use crate::infra::runner::{self, Cmd};
use crate::intake;
use crate::model::{DeployId, State};
use crate::store::{self, DeployRow};

/// A POST over loopback; kept here for the tests and the demo.
pub use crate::infra::httpc::post as http_post;

async fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let cmd = Cmd::new(format!("git {}", args.first().unwrap_or(&"")), "git")
        .args(args.iter().copied())
        .cwd(dir)
        .env("GIT_AUTHOR_NAME", "Demo Dev")
        .env("GIT_AUTHOR_EMAIL", "dev@example.com")
        .env("GIT_COMMITTER_NAME", "Demo Dev")
        .env("GIT_COMMITTER_EMAIL", "dev@example.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir.as_os_str())
        .capture();
    Ok(runner::run(&cmd, None).await?.stdout_str())
}

/// A GitHub `push` payload in the shape GitHub sends (see tests/fixtures/github/push.json for a real one).
pub(crate) fn github_push_payload(
    repo_name: &str,
    before: &str,
    after: &str,
    pusher: &str,
    message: &str,
) -> String {
    serde_json::json!({
        "ref": "refs/heads/main",
        "before": before,
        "after": after,
        "created": false,
        "deleted": false,
        "forced": false,
        "compare": format!("https://github.com/demo/{repo_name}/compare/{}...{}", &before[..12.min(before.len())], &after[..12.min(after.len())]),
        "commits": [{ "id": after, "message": message, "author": { "name": "Demo Dev", "email": "dev@example.com" } }],
        "head_commit": { "id": after, "message": message },
        "repository": { "name": repo_name, "full_name": format!("demo/{repo_name}") },
        "pusher": { "name": pusher, "email": "dev@example.com" },
        "sender": { "login": pusher }
    })
    .to_string()
}

/// A throw-away repository: the bare `origin` the daemon fetches from, the `work` clone a newcomer pushes
/// from, and the commit that was pushed.
pub(super) struct DemoRepo {
    pub(super) origin: PathBuf,
    pub(super) work: PathBuf,
    pub(super) sha: String,
}

pub(super) fn say(s: &str) {
    eprintln!("\x1b[1mdemo:\x1b[0m {s}");
}

pub async fn run(port: u16, once: bool) -> anyhow::Result<()> {
    let root: PathBuf = std::env::temp_dir().join(format!(
        "haul-demo-{}-{:04x}",
        std::process::id(),
        fastrand::u16(..)
    ));
    std::fs::create_dir_all(&root)?;
    say(&format!("everything lives in {}", root.display()));
    let repo = create_repo(&root).await?;
    let secret = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    let config_path = write_config(&root, port, &repo.origin, &secret)?;
    let cfg = Config::load(&config_path)?;
    let app_path = cfg.apps["site"].path.clone();

    let daemon = crate::server::daemon::start(cfg.clone()).await?;
    let addr = daemon.addr.to_string();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(daemon.serve(async move {
        let _ = stop_rx.await;
    }));
    say(&format!("daemon listening on http://{addr}"));

    let id = send_push(&addr, &secret, &repo.sha).await?;
    let row = wait_until_final(&StateDir::new(&cfg.state_dir).db(), &id).await?;
    print_log(&cfg, &id);
    if row.state != State::Succeeded {
        let _ = stop_tx.send(());
        bail!(
            "the demo deploy {}: {}",
            row.state,
            row.reason.unwrap_or_default()
        );
    }
    show_release(&app_path, &row);
    if !once {
        print_next_steps(&config_path, &repo.work);
        say("Ctrl-C to stop");
        crate::server::daemon::shutdown_signal().await;
    }
    let _ = stop_tx.send(());
    let _ = serving.await;
    Ok(())
}

/// A repository to deploy from: a bare "origin" and a working clone with one commit pushed.
pub(super) async fn create_repo(root: &Path) -> anyhow::Result<DemoRepo> {
    let origin = root.join("origin.git");
    let work = root.join("work");
    std::fs::create_dir_all(&work)?;
    git(
        root,
        &[
            "init",
            "--quiet",
            "--bare",
            "--initial-branch=main",
            &origin.to_string_lossy(),
        ],
    )
    .await?;
    git(&work, &["init", "--quiet", "--initial-branch=main"]).await?;
    git(&work, &["remote", "add", "origin", &origin.to_string_lossy()]).await?;
    std::fs::write(work.join("index.html"), "<h1>hello from haul's demo</h1>\n")?;
    git(&work, &["add", "."]).await?;
    git(&work, &["commit", "--quiet", "-m", "First page"]).await?;
    git(&work, &["push", "--quiet", "origin", "main"]).await?;
    let sha = git(&work, &["rev-parse", "HEAD"]).await?;
    say(&format!(
        "created a repository and pushed commit {}",
        sha.get(..7).unwrap_or(&sha)
    ));
    Ok(DemoRepo { origin, work, sha })
}

/// The webhook secret's file, of mode 0600 as `haul check` wants it.
pub(super) fn write_secret(root: &Path, secret: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let secret_file = root.join("webhook.secret");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&secret_file)?;
    std::io::Write::write_all(&mut f, secret.as_bytes())?;
    Ok(secret_file)
}

/// The secret file (0600) and the config, as an operator would write them; returns the config's path.
fn write_config(root: &Path, port: u16, origin: &Path, secret: &str) -> anyhow::Result<PathBuf> {
    let secret_file = write_secret(root, secret)?;
    let config_path = root.join("haul.toml");
    let config_text = format!(
        r#"listen = "127.0.0.1:{port}"
state_dir = "{state}"

[apps.site]
repo = "{origin}"
branch = "main"
path = "{path}"
keep_releases = 5
build = ["echo \"built $HAUL_SHA for $HAUL_ACTOR\" > BUILD.txt"]
activate = ["echo activated $HAUL_RELEASE_DIR"]
step_timeout = "1m"

[apps.site.webhook]
provider = "github"
secret_file = "{secret}"
"#,
        state = root.join("state").display(),
        origin = origin.display(),
        path = root.join("srv/site").display(),
        secret = secret_file.display(),
    );
    std::fs::write(&config_path, &config_text)?;
    Ok(config_path)
}

/// The forge's side: a signed push webhook for `sha`; returns the deploy id haul answers with.
pub(super) async fn send_push(addr: &str, secret: &str, sha: &str) -> anyhow::Result<DeployId> {
    let body = github_push_payload("site", &"0".repeat(40), sha, "demo-dev", "First page");
    let signature = intake::sign_github(secret.as_bytes(), body.as_bytes());
    let delivery = format!("{:08x}-demo-{:04x}", fastrand::u32(..), fastrand::u16(..));
    let (status, reply) = http_post(
        addr,
        "/hooks/site",
        &[
            ("Content-Type", "application/json"),
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", &delivery),
            ("X-Hub-Signature-256", &signature),
        ],
        body.as_bytes(),
    )
    .await?;
    say(&format!(
        "sent a signed GitHub push webhook; haul answered {status} {}",
        reply.trim()
    ));
    serde_json::from_str::<serde_json::Value>(&reply)
        .ok()
        .and_then(|v| v["deploy_id"].as_str().and_then(DeployId::parse))
        .context("the reply carried no deploy id")
}

/// Polls the audit row, as `haul status` would, until the deploy has an outcome.
async fn wait_until_final(db: &Path, id: &DeployId) -> anyhow::Result<DeployRow> {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let conn = store::open_read(db)?;
        if let Some(row) = store::get(&conn, id)? {
            if row.state.is_final() {
                return Ok(row);
            }
        }
    }
}

/// The deploy's own log, indented, so the newcomer sees every step haul took.
fn print_log(cfg: &Config, id: &DeployId) {
    eprintln!();
    let log = std::fs::read_to_string(StateDir::new(&cfg.state_dir).log_of(id)).unwrap_or_default();
    for line in log.lines() {
        eprintln!("    {line}");
    }
    eprintln!();
}

/// What the deploy left: the live symlink, the build's output in it, and the audit row.
fn show_release(app_path: &Path, row: &DeployRow) {
    let live = release::current(app_path).unwrap_or_default();
    say(&format!(
        "{} -> releases/{live}",
        release::current_link(app_path).display()
    ));
    say(&format!(
        "BUILD.txt in the live release says: {}",
        std::fs::read_to_string(app_path.join("current/BUILD.txt"))
            .unwrap_or_default()
            .trim()
    ));
    say(&format!(
        "audit row: deploy {} app {} trigger {} sha {} actor {} outcome {} ({})",
        row.id,
        row.app,
        row.trigger.as_str(),
        row.sha.as_deref().unwrap_or("-"),
        row.actor,
        row.state,
        row.reason.as_deref().unwrap_or("")
    ));
}

/// The commands to try while the demo keeps serving, spelled with this binary and this demo's paths.
fn print_next_steps(config_path: &Path, work: &Path) {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "haul".into());
    eprintln!();
    say("still serving; in another terminal, try:");
    eprintln!("    {exe} --config {} status", config_path.display());
    eprintln!("    {exe} --config {} history", config_path.display());
    eprintln!(
        "    (cd {} && echo '<p>more</p>' >> index.html && git commit -qam more && git push -q origin main)",
        work.display()
    );
    eprintln!("    {exe} --config {} deploy site", config_path.display());
}
