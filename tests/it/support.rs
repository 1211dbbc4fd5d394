//! Test fixtures that start real things: an OpenSSH server serving git over SSH with a read-only deploy key
//! (`git-shell` behind a forced command that counts fetches), a bare repository, and the real `haul` binary.
//! Everything listens on 127.0.0.1 on a free port, lives in its own temporary directory, and is killed when
//! the fixture is dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use haul::model::{DeployId, State};
use haul::store::{self, DeployRow};

pub const SECRET: &str = "a test secret that is long enough";
pub const WAIT: Duration = Duration::from_secs(120);

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "haul-it-{name}-{}-{:06x}",
            std::process::id(),
            fastrand::u32(..0xffffff)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("HAUL_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Runs a command that must succeed; returns its trimmed stdout.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Test Dev")
        .env("GIT_AUTHOR_EMAIL", "dev@example.com")
        .env("GIT_COMMITTER_NAME", "Test Dev")
        .env("GIT_COMMITTER_EMAIL", "dev@example.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir);
    c
}

pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn write_private(path: &Path, content: &str) {
    std::fs::write(path, content).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// A real sshd on loopback serving one bare repository through `git-shell`, to one read-only deploy key.
pub struct GitServer {
    pub dir: PathBuf,
    pub port: u16,
    pub url: String,
    pub deploy_key: PathBuf,
    pub known_hosts: PathBuf,
    pub work: PathBuf,
    fetch_log: PathBuf,
    sshd: Option<Child>,
}

impl GitServer {
    pub fn start(dir: &Path) -> GitServer {
        let dir = dir.join("git-server");
        std::fs::create_dir_all(&dir).expect("mkdir");
        for key in ["host_key", "deploy_key"] {
            sh(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
                .arg(dir.join(key)));
        }
        let fetch_log = dir.join("fetches.log");
        let wrapper = dir.join("git-wrapper.sh");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\necho \"$SSH_ORIGINAL_COMMAND\" >> '{log}'\n\
                 n=0; while [ -e '{dir}/slow' ] && [ $n -lt 6000 ]; do sleep 0.1; n=$((n+1)); done\n\
                 exec git-shell -c \"$SSH_ORIGINAL_COMMAND\"\n",
                log = fetch_log.display(),
                dir = dir.display()
            ),
        )
        .expect("wrapper");
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let pubkey = std::fs::read_to_string(dir.join("deploy_key.pub")).expect("pubkey");
        std::fs::write(
            dir.join("authorized_keys"),
            format!("restrict,command=\"{}\" {pubkey}", wrapper.display()),
        )
        .expect("authorized_keys");
        let port = free_port();
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {dir}/sshd.pid\nAuthorizedKeysFile {dir}/authorized_keys\n\
                 UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nLogLevel VERBOSE\n\
                 # A login shell's rc that runs `pyenv rehash` waits up to a minute on a lock a killed session\n\
                 # left behind (this machine's root .bashrc does): with 0 it gives up at once.\n\
                 SetEnv PYENV_REHASH_TIMEOUT=0\n",
                hk = dir.join("host_key").display(),
                dir = dir.display()
            ),
        )
        .expect("sshd_config");
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let log = std::fs::File::create(dir.join("sshd.log")).expect("log");
        let sshd = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stderr(log)
            .spawn()
            .expect("start sshd (is openssh-server installed?)");
        wait_for_port(port, "sshd");
        let host_pub = std::fs::read_to_string(dir.join("host_key.pub")).expect("host pub");
        let host_pub: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        let known_hosts = dir.join("known_hosts");
        std::fs::write(
            &known_hosts,
            format!("[127.0.0.1]:{port} {}\n", host_pub.join(" ")),
        )
        .expect("known_hosts");
        let deploy_key = dir.join("deploy_key");
        std::fs::set_permissions(&deploy_key, std::fs::Permissions::from_mode(0o600)).expect("chmod");

        let bare = dir.join("repo.git");
        sh(git(&dir)
            .args(["init", "--quiet", "--bare", "--initial-branch=main"])
            .arg(&bare));
        let work = dir.join("work");
        std::fs::create_dir_all(&work).expect("mkdir");
        sh(git(&work).args(["init", "--quiet", "--initial-branch=main"]));
        sh(git(&work).args(["remote", "add", "origin"]).arg(&bare));
        let url = format!("ssh://root@127.0.0.1:{port}{}", bare.display());
        GitServer {
            dir,
            port,
            url,
            deploy_key,
            known_hosts,
            work,
            fetch_log,
            sshd: Some(sshd),
        }
    }

    /// Commits `files` on `branch` and pushes it to the bare repository (locally, not through sshd).
    pub fn commit_on(&self, branch: &str, files: &[(&str, &str)], message: &str) -> String {
        self.commit_with(branch, files, message, &[], None)
    }

    /// Commits `files` on main signed with the SSH key `key` (`git commit -S`, `gpg.format=ssh`).
    pub fn commit_signed(&self, files: &[(&str, &str)], message: &str, key: &Path) -> String {
        let signing = format!("user.signingkey={}", key.display());
        self.commit_with(
            "main",
            files,
            message,
            &["-c", "gpg.format=ssh", "-c", &signing, "commit", "-S"],
            None,
        )
    }

    /// Commits `files` on main signed with the GPG key `key` of the keyring in `gnupghome`.
    pub fn commit_signed_gpg(
        &self,
        files: &[(&str, &str)],
        message: &str,
        gnupghome: &Path,
        key: &str,
    ) -> String {
        let signing = format!("user.signingkey={key}");
        self.commit_with(
            "main",
            files,
            message,
            &["-c", "gpg.program=gpg", "-c", &signing, "commit", "-S"],
            Some(gnupghome),
        )
    }

    /// `commit_on`, with `extra` (git options, then the subcommand) replacing the plain `commit`.
    fn commit_with(
        &self,
        branch: &str,
        files: &[(&str, &str)],
        message: &str,
        extra: &[&str],
        gnupghome: Option<&Path>,
    ) -> String {
        let has_commits = git(&self.work)
            .args(["rev-parse", "--verify", "--quiet", "HEAD"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if has_commits {
            sh(git(&self.work).args(["checkout", "--quiet", "-B", branch]));
        } else {
            sh(git(&self.work).args(["checkout", "--quiet", "--orphan", branch]));
        }
        for (name, content) in files {
            let p = self.work.join(name);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).expect("mkdir");
            }
            std::fs::write(p, content).expect("write");
        }
        sh(git(&self.work).args(["add", "--all"]));
        let commit: &[&str] = if extra.is_empty() { &["commit"] } else { extra };
        let mut cmd = git(&self.work);
        if let Some(home) = gnupghome {
            cmd.env("GNUPGHOME", home);
        }
        sh(cmd.args(commit).args(["--quiet", "--allow-empty", "-m", message]));
        sh(git(&self.work).args([
            "push",
            "--quiet",
            "--force",
            "origin",
            &format!("HEAD:refs/heads/{branch}"),
        ]));
        sh(git(&self.work).args(["rev-parse", "HEAD"]))
    }

    /// Removes `gone` and commits `files` on main.
    pub fn commit_removing(&self, gone: &str, files: &[(&str, &str)], message: &str) -> String {
        let _ = std::fs::remove_file(self.work.join(gone));
        self.commit(files, message)
    }

    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        self.commit_on("main", files, message)
    }

    /// Creates (or moves) an annotated tag at the work tree's HEAD and pushes it.
    pub fn tag(&self, name: &str) {
        sh(git(&self.work).args(["tag", "-f", "-a", "-m", name, name]));
        sh(git(&self.work).args([
            "push",
            "--quiet",
            "--force",
            "origin",
            &format!("refs/tags/{name}"),
        ]));
    }

    /// An annotated tag `name` of the current commit, signed with the SSH key `key` (or not signed: `None`),
    /// pushed; its tag object's sha.
    pub fn tag_signed(&self, name: &str, key: Option<&Path>) -> String {
        let Some(k) = key else {
            self.tag(name);
            return sh(git(&self.work).args(["rev-parse", &format!("refs/tags/{name}")]));
        };
        let signing = format!("user.signingkey={}", k.display());
        sh(git(&self.work).args([
            "-c",
            "gpg.format=ssh",
            "-c",
            &signing,
            "tag",
            "-f",
            "-s",
            "-m",
            name,
            name,
        ]));
        sh(git(&self.work).args([
            "push",
            "--quiet",
            "--force",
            "origin",
            &format!("refs/tags/{name}"),
        ]));
        sh(git(&self.work).args(["rev-parse", &format!("refs/tags/{name}")]))
    }

    /// From now on, every git request waits on the server until [`GitServer::speed_up`] (10 minutes at most).
    pub fn slow_down(&self) {
        std::fs::write(self.dir.join("slow"), "").expect("slow marker");
    }

    pub fn speed_up(&self) {
        let _ = std::fs::remove_file(self.dir.join("slow"));
    }

    /// Removes the deploy key from authorized_keys: from now on the key is refused.
    pub fn revoke_key(&self) {
        std::fs::write(self.dir.join("authorized_keys"), "").expect("authorized_keys");
    }

    /// SIGKILLs sshd and every session it started (a connection in flight is cut).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.sshd.take() {
            kill_tree(c.id());
            let _ = c.wait();
        }
    }

    /// A second bare repository on the same server, mirroring the first (`git clone --mirror`): its URL.
    pub fn add_mirror(&self, name: &str) -> String {
        let path = self.dir.join(format!("{name}.git"));
        sh(git(&self.dir)
            .args(["clone", "--quiet", "--mirror"])
            .arg(self.dir.join("repo.git"))
            .arg(&path));
        format!("ssh://root@127.0.0.1:{}{}", self.port, path.display())
    }

    /// Brings the mirror `name` up to date with the primary.
    pub fn sync_mirror(&self, name: &str) {
        sh(git(&self.dir)
            .arg("--git-dir")
            .arg(self.dir.join(format!("{name}.git")))
            .args(["fetch", "--quiet", "--prune", "origin", "+refs/*:refs/*"]));
    }

    /// Requests served for one repository (`repo` or a mirror's name): fetches and ls-remotes alike.
    pub fn requests_for(&self, name: &str) -> usize {
        let needle = format!("/{name}.git'");
        std::fs::read_to_string(&self.fetch_log)
            .map(|t| t.lines().filter(|l| l.contains(&needle)).count())
            .unwrap_or(0)
    }

    /// How many times a client fetched through sshd (the forced command logs each `git-upload-pack`).
    pub fn fetches(&self) -> usize {
        std::fs::read_to_string(&self.fetch_log)
            .map(|t| t.lines().filter(|l| l.contains("git-upload-pack")).count())
            .unwrap_or(0)
    }

    pub fn sshd_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.speed_up();
        self.kill();
    }
}

/// SIGKILLs `pid` and all its descendants (found through /proc).
pub fn kill_tree(pid: u32) {
    let mut parents: std::collections::HashMap<u32, Vec<u32>> = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.entry(ppid).or_default().push(p);
        }
    }
    let mut todo = vec![pid];
    let mut all = Vec::new();
    while let Some(p) = todo.pop() {
        all.push(p);
        todo.extend(parents.get(&p).cloned().unwrap_or_default());
    }
    for p in all {
        // SAFETY: signalling processes this test started.
        unsafe {
            libc::kill(p as i32, libc::SIGKILL);
        }
    }
}

/// A real git smart-HTTP server (`git http-backend` behind `tests/support/git_http_server.py`) serving the
/// repositories of a [`GitServer`], answering `limited` requests with 429 first (-1: all of them).
/// The port a test server wrote to `port_file` once it listened.
fn wait_port_file(port_file: &Path, what: &str) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(p) = std::fs::read_to_string(port_file) {
            return p.trim().parse::<u16>().expect("port");
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Standard Webhooks headers for `body`, signed now with the test secret and a fresh id.
pub fn standard_headers(body: &str) -> Vec<(&'static str, String)> {
    let id = format!("msg_{}", delivery());
    let ts = haul::model::now_ms() / 1000;
    let sig = haul::intake::sign_standard(SECRET.as_bytes(), &id, ts, body.as_bytes());
    vec![
        ("webhook-id", id),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", sig),
    ]
}

pub struct HttpGitServer {
    pub url: String,
    log: PathBuf,
    child: Child,
}

impl HttpGitServer {
    pub fn start(git: &GitServer, name: &str, limited: i32, retry_after: u32) -> HttpGitServer {
        let dir = git.dir.join(format!("http-{name}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let port_file = dir.join("port");
        let log = dir.join("requests.log");
        let child = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/git_http_server.py"))
            .arg(&git.dir)
            .arg(&port_file)
            .arg(&log)
            .arg(limited.to_string())
            .arg(retry_after.to_string())
            .spawn()
            .expect("start the git HTTP server");
        let port = wait_port_file(&port_file, "git HTTP server");
        HttpGitServer {
            url: format!("http://127.0.0.1:{port}/repo.git"),
            log,
            child,
        }
    }

    /// Requests received, and how many of them were answered 429.
    pub fn requests(&self) -> (usize, usize) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        (
            text.lines().count(),
            text.lines().filter(|l| l.ends_with(" 429")).count(),
        )
    }
}

impl Drop for HttpGitServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real HTTP file server (tests/support/http_files.py) serving `root`, with ETags, an optional bearer
/// token, and rate limits on demand.
pub struct FileServer {
    pub url: String,
    log: PathBuf,
    child: Child,
}

impl FileServer {
    pub fn start(root: &Path, limited: i32, retry_after: u32, token: Option<&str>) -> FileServer {
        FileServer::launch(root, limited, retry_after, token, 0)
    }

    /// A server that sends bodies slowly: 16 KiB, then `pause_ms`, and so on.
    pub fn start_slow(root: &Path, pause_ms: u32) -> FileServer {
        FileServer::launch(root, 0, 1, None, pause_ms)
    }

    fn launch(root: &Path, limited: i32, retry_after: u32, token: Option<&str>, pause_ms: u32) -> FileServer {
        let dir = root.with_extension("server");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let port_file = dir.join("port");
        let log = dir.join("requests.log");
        let child = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/http_files.py"))
            .arg(root)
            .arg(&port_file)
            .arg(&log)
            .arg(limited.to_string())
            .arg(retry_after.to_string())
            .args(token)
            .env("HTTP_FILES_SLOW_MS", pause_ms.to_string())
            .spawn()
            .expect("start the HTTP file server");
        let port = wait_port_file(&port_file, "HTTP file server");
        FileServer {
            url: format!("http://127.0.0.1:{port}"),
            log,
            child,
        }
    }

    /// Every request so far, as "METHOD PATH STATUS".
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real `haul` binary, serving one app `blog` from a [`GitServer`].
pub struct Haul {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub app_path: PathBuf,
    pub port: u16,
    child: Option<Child>,
    starts: usize,
}

impl Haul {
    /// Writes a config for app `blog` (GitHub webhook); `app_extra` is appended to its `[apps.blog]` table.
    pub fn configure(dir: &Path, server: &GitServer, app_extra: &str) -> Haul {
        Haul::configure_apps(dir, server, "", &[("blog", "github", app_extra)])
    }

    /// Writes a config with one app per `(name, provider, extra)`, all deploying from `server`'s repository,
    /// each into `<dir>/haul/srv/<name>`. `top` is added to the top-level table.
    pub fn configure_apps(dir: &Path, server: &GitServer, top: &str, apps: &[(&str, &str, &str)]) -> Haul {
        let dir = dir.join("haul");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let secret_file = dir.join("webhook.secret");
        write_private(&secret_file, SECRET);
        let port = free_port();
        let state_dir = dir.join("state");
        let mut text = format!(
            "listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n{top}\n",
            state_dir.display()
        );
        for (name, provider, extra) in apps {
            let repo_line = if extra.contains("repo = ") {
                String::new()
            } else {
                format!("repo = \"{}\"\n", server.url)
            };
            text.push_str(&format!(
                "\n[apps.{name}]\n{repo_line}branch = \"main\"\ndeploy_key = \"{key}\"\nknown_hosts = \"{kh}\"\n\
                 path = \"{path}\"\nkeep_releases = 3\nstep_timeout = \"2m\"\n{extra}\n\n\
                 [apps.{name}.webhook]\nprovider = \"{provider}\"\nsecret_file = \"{secret}\"\n",
                key = server.deploy_key.display(),
                kh = server.known_hosts.display(),
                path = dir.join("srv").join(name).display(),
                secret = secret_file.display(),
            ));
        }
        let config = dir.join("haul.toml");
        std::fs::write(&config, text).expect("config");
        Haul {
            app_path: dir.join("srv").join(apps.first().map(|a| a.0).unwrap_or("blog")),
            dir,
            config,
            state_dir,
            port,
            child: None,
            starts: 0,
        }
    }

    /// A config written by the test: `apps` holds `[apps.*]` tables, in which `{SRV}` becomes the directory of
    /// the apps' paths and `{SECRET}` the webhook secret file. `app` is the app `app_path` points at.
    pub fn configure_raw(dir: &Path, app: &str, apps: &str) -> Haul {
        let dir = dir.join("haul");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let secret_file = dir.join("webhook.secret");
        write_private(&secret_file, SECRET);
        let port = free_port();
        let state_dir = dir.join("state");
        let text = format!(
            "listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n\n{}",
            state_dir.display(),
            apps.replace("{SRV}", &dir.join("srv").display().to_string())
                .replace("{SECRET}", &secret_file.display().to_string())
        );
        let config = dir.join("haul.toml");
        std::fs::write(&config, text).expect("config");
        Haul {
            app_path: dir.join("srv").join(app),
            dir,
            config,
            state_dir,
            port,
            child: None,
            starts: 0,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// Starts the daemon and waits until it says it listens. A port taken since [`free_port`] chose it (by
    /// another test's server, between the choice and the bind) is chosen again, so a test never talks to
    /// someone else's server while its own daemon died.
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) {
        for _ in 0..5 {
            self.starts += 1;
            let log_path = self.dir.join(format!("daemon-{}.log", self.starts));
            let log = std::fs::File::create(&log_path).expect("log");
            let mut child = Command::new(env!("CARGO_BIN_EXE_haul"))
                .arg("--config")
                .arg(&self.config)
                .arg("serve")
                .env("HAUL_LOG", "debug")
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start haul");
            let listening = format!("listening on http://127.0.0.1:{} ", self.port);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                if text.contains(&listening) {
                    self.child = Some(child);
                    return;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(
                        text.contains("in use"),
                        "haul exited ({status}) before listening:\n{text}"
                    );
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "haul did not start listening on port {}:\n{text}",
                    self.port
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            // Taken: another port, and the config says so.
            let old = format!("listen = \"127.0.0.1:{}\"", self.port);
            self.port = free_port();
            let text = std::fs::read_to_string(&self.config).expect("config");
            std::fs::write(
                &self.config,
                text.replace(&old, &format!("listen = \"127.0.0.1:{}\"", self.port)),
            )
            .expect("config");
        }
        panic!("haul found no free port in 5 tries");
    }

    pub fn daemon_log(&self) -> String {
        (1..=self.starts)
            .map(|i| std::fs::read_to_string(self.dir.join(format!("daemon-{i}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `sig` (SIGSTOP, SIGCONT, ...) to the running daemon.
    pub fn signal(&self, sig: i32) {
        let c = self.child.as_ref().expect("running");
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(c.id() as i32, sig);
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        c.wait().expect("wait")
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_haul"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run haul")
    }

    /// Runs a command that follows something until it ends, killed (and the test failed) after `secs`.
    pub fn cli_bounded(&self, args: &[&str], secs: u64) -> std::process::Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_haul"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run haul");
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        while child.try_wait().expect("wait").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "haul {args:?} still running after {secs}s: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.wait_with_output().expect("output")
    }

    pub fn post<K: AsRef<str>, V: AsRef<str>>(
        &self,
        path: &str,
        headers: &[(K, V)],
        body: &[u8],
    ) -> (u16, serde_json::Value) {
        http_post(&self.addr(), path, headers, body)
    }

    /// A signed GitHub push of `sha` to `git_ref`, built from GitHub's own example payload.
    pub fn push(&self, git_ref: &str, sha: &str, delivery: &str) -> (u16, serde_json::Value) {
        let body = github_push(git_ref, sha);
        self.post(
            "/hooks/blog",
            &signed_headers("push", delivery, &body),
            body.as_bytes(),
        )
    }

    /// Sends `body` as a GitHub push with `delivery` as its id.
    pub fn deliver(&self, body: &str, delivery: &str) -> (u16, serde_json::Value) {
        self.post(
            "/hooks/blog",
            &signed_headers("push", delivery, body),
            body.as_bytes(),
        )
    }

    pub fn rows(&self) -> Vec<DeployRow> {
        match store::open_read(&self.state_dir.join("haul.db")) {
            Ok(c) => store::history(&c, None, 10_000).expect("history"),
            Err(_) => vec![],
        }
    }

    pub fn row(&self, id: &str) -> DeployRow {
        let id = DeployId::parse(id).expect("deploy id");
        let c = store::open_read(&self.state_dir.join("haul.db")).expect("db");
        store::get(&c, &id).expect("get").expect("row exists")
    }

    pub fn wait_final(&self, id: &str) -> DeployRow {
        let deadline = Instant::now() + WAIT;
        loop {
            let row = self.row(id);
            if row.state.is_final() {
                return row;
            }
            assert!(
                Instant::now() < deadline,
                "deploy {id} still {} after {WAIT:?}\n{}",
                row.state,
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_state(&self, id: &str, state: State) -> DeployRow {
        let deadline = Instant::now() + WAIT;
        loop {
            let row = self.row(id);
            if row.state == state {
                return row;
            }
            assert!(
                Instant::now() < deadline,
                "deploy {id} is {} not {state}",
                row.state
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn current(&self) -> Option<String> {
        haul::deploy::release::current(&self.app_path)
    }

    /// The path of another app configured with [`Haul::configure_apps`].
    pub fn path_of(&self, app: &str) -> PathBuf {
        self.dir.join("srv").join(app)
    }

    pub fn releases(&self) -> Vec<String> {
        haul::deploy::release::list(&self.app_path)
    }
}

impl Drop for Haul {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .expect("fixture")
}

/// GitHub's documented push example with only `ref` and `after` rewritten.
/// A GitHub push of `sha` to `git_ref`, built from the documented payload. Each call is a new push, as GitHub
/// sends it: its `repository.pushed_at` differs, so its body does too (haul answers the same body under a fresh
/// delivery id `duplicate`: a replay). A test that replays a delivery sends the same body again.
pub fn github_push(git_ref: &str, sha: &str) -> String {
    static PUSHES: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let mut v: serde_json::Value = serde_json::from_str(&fixture("github/push.json")).expect("json");
    v["ref"] = git_ref.into();
    v["after"] = sha.into();
    v["head_commit"]["id"] = sha.into();
    let n = PUSHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    v["repository"]["pushed_at"] = (1_764_000_000 + n).into();
    v.to_string()
}

/// A GitHub push that moved `git_ref` from `before` to `sha` (what every real push names).
pub fn github_push_from(git_ref: &str, before: &str, sha: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&github_push(git_ref, sha)).expect("json");
    v["before"] = before.into();
    v.to_string()
}

pub fn signed_headers(event: &str, delivery: &str, body: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", "application/json".into()),
        ("X-GitHub-Event", event.into()),
        ("X-GitHub-Delivery", delivery.into()),
        (
            "X-Hub-Signature-256",
            haul::intake::sign_github(SECRET.as_bytes(), body.as_bytes()),
        ),
    ]
}

pub fn http_post<K: AsRef<str>, V: AsRef<str>>(
    addr: &str,
    path: &str,
    headers: &[(K, V)],
    body: &[u8],
) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{}: {}\r\n", k.as_ref(), v.as_ref()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.to_string())),
    )
}

/// Waits (up to [`WAIT`]) for `f` to hold.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A signed push of `sha` to main, and the deploy it caused, once final.
pub fn push_and_wait(h: &Haul, sha: &str) -> DeployRow {
    let (status, reply) = h.push("refs/heads/main", sha, &delivery());
    assert_eq!(status, 202, "{reply}");
    h.wait_final(reply["deploy_id"].as_str().expect("id"))
}

pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .expect("write");
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

/// Requests a [`Receiver`] got: (head, body).
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// An HTTP receiver on loopback that answers 200 and keeps every request (head and body).
pub struct Receiver {
    pub addr: String,
    pub requests: Received,
}

impl Receiver {
    pub fn start() -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head, then Content-Length bytes of body.
                let (head, body) = loop {
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => break (String::from_utf8_lossy(&buf).into_owned(), Vec::new()),
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).into_owned();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().to_string())
                            })
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        let mut body = buf[i + 4..].to_vec();
                        while body.len() < len {
                            match conn.read(&mut chunk) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => body.extend_from_slice(&chunk[..n]),
                            }
                        }
                        break (head, body);
                    }
                };
                keep.lock().expect("lock").push((head, body));
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        Receiver { addr, requests }
    }

    pub fn count(&self) -> usize {
        self.requests.lock().expect("lock").len()
    }

    pub fn all(&self) -> Vec<(String, Vec<u8>)> {
        self.requests.lock().expect("lock").clone()
    }
}

pub fn delivery() -> String {
    format!(
        "{:08x}-{:04x}-4000-8000-{:012x}",
        fastrand::u32(..),
        fastrand::u16(..),
        fastrand::u64(..0xffff_ffff_ffff)
    )
}
