//! The one subprocess runner. Every external command haul starts (git, ssh through git, build and activate
//! steps) goes through [`run`]: argv only, an explicit environment, a working directory, a timeout that kills
//! the whole process group, output streamed line by line into the deploy's log, and the tail of stderr kept
//! for the error a person reads. Nothing else in haul spawns a process.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

use crate::infra::deploylog::DeployLog;

const TAIL_LINES: usize = 20;
const MAX_LINE: usize = 8 * 1024;
const MAX_CAPTURE: usize = 16 * 1024 * 1024;

/// One command to run.
#[derive(Debug, Clone)]
pub struct Cmd {
    /// Shown in logs and errors: "git fetch", "build step 1/2".
    pub label: String,
    pub program: String,
    pub args: Vec<OsString>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, OsString)>,
    pub timeout: Duration,
    /// Capture stdout for the caller instead of logging it.
    pub capture_stdout: bool,
    /// Strings never written to the log (credentials in URLs).
    pub redact: Vec<String>,
    /// While the command runs, its process group id is kept in this file.
    pub pgid_file: Option<PathBuf>,
    /// Decides, per stderr line, whether it is logged, only kept for the error, or dropped.
    pub stderr_filter: Option<fn(&str) -> LineUse>,
    /// Bytes written to the command's stdin (otherwise stdin is /dev/null).
    pub stdin: Option<Vec<u8>>,
    /// A file given to the command as its stdin (an artifact a verifier reads).
    pub stdin_file: Option<PathBuf>,
}

/// What to do with one line of stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineUse {
    /// Into the deploy log and the error's tail.
    Log,
    /// Only into the error's tail (where failures are classified), not the log.
    Keep,
    Drop,
}

impl Cmd {
    pub fn new(label: impl Into<String>, program: impl Into<String>) -> Cmd {
        Cmd {
            label: label.into(),
            program: program.into(),
            args: Vec::new(),
            cwd: None,
            env: Vec::new(),
            timeout: Duration::from_secs(600),
            capture_stdout: false,
            redact: Vec::new(),
            pgid_file: None,
            stderr_filter: None,
            stdin: None,
            stdin_file: None,
        }
    }
    pub fn arg(mut self, a: impl Into<OsString>) -> Cmd {
        self.args.push(a.into());
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, a: I) -> Cmd {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }
    pub fn env(mut self, k: impl Into<String>, v: impl Into<OsString>) -> Cmd {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn cwd(mut self, d: impl Into<PathBuf>) -> Cmd {
        self.cwd = Some(d.into());
        self
    }
    pub fn timeout(mut self, t: Duration) -> Cmd {
        self.timeout = t;
        self
    }
    pub fn stdin_file(mut self, f: impl Into<PathBuf>) -> Cmd {
        self.stdin_file = Some(f.into());
        self
    }
    pub fn capture(mut self) -> Cmd {
        self.capture_stdout = true;
        self
    }
}

#[derive(Debug, Default)]
pub struct Output {
    pub stdout: Vec<u8>,
    /// What a successful command said on stderr (`git verify-commit` names the signer there).
    pub stderr_tail: Vec<String>,
}

impl Output {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim().to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{label}: cannot start `{program}`: {source}")]
    Spawn {
        label: String,
        program: String,
        source: std::io::Error,
    },
    #[error("{label} timed out after {} and was killed{}", humantime::format_duration(*after), tail_suffix(stderr_tail))]
    TimedOut {
        label: String,
        after: Duration,
        stderr_tail: Vec<String>,
    },
    #[error("{label} {}{}", exit_text(*code, *signal), tail_suffix(stderr_tail))]
    Failed {
        label: String,
        code: Option<i32>,
        signal: Option<i32>,
        stderr_tail: Vec<String>,
    },
}

impl RunError {
    pub fn stderr_tail(&self) -> &[String] {
        match self {
            RunError::Spawn { .. } => &[],
            RunError::TimedOut { stderr_tail, .. } | RunError::Failed { stderr_tail, .. } => stderr_tail,
        }
    }
}

fn exit_text(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "failed".to_string(),
    }
}

fn tail_suffix(tail: &[String]) -> String {
    match telling_line(tail) {
        Some(l) => format!(": {}", l.trim()),
        None => String::new(),
    }
}

/// The stderr line that says what went wrong: the last one that is not a tool's generic epilogue (git's
/// "Please make sure you have the correct access rights / and the repository exists.").
pub fn telling_line(tail: &[String]) -> Option<&str> {
    const BOILERPLATE: &[&str] = &[
        "please make sure you have the correct access rights",
        "and the repository exists.",
        "fatal: could not read from remote repository.",
    ];
    tail.iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| !l.is_empty() && !BOILERPLATE.contains(&l.to_ascii_lowercase().as_str()))
}

/// Kills the child's whole process group unless disarmed: a cancelled or timed-out step never leaves
/// grandchildren behind.
struct GroupGuard(Option<i32>);

impl GroupGuard {
    fn signal(&self, sig: i32) {
        if let Some(pgid) = self.0 {
            // SAFETY: kill(2) with a negative pid signals a process group we created; no memory is touched.
            unsafe {
                libc::kill(-pgid, sig);
            }
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

/// The file naming a running step's process group; removed when the step ends. If haul is killed, it stays,
/// and the next start ends that group ([`kill_recorded_group`]).
struct PgidRecord(PathBuf);

impl PgidRecord {
    fn write(path: &std::path::Path, pgid: i32) -> Option<PgidRecord> {
        // A group still recorded here was left by a haul that died: end it before it is forgotten.
        kill_recorded_group(path);
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        std::fs::write(path, pgid.to_string())
            .ok()
            .map(|_| PgidRecord(path.to_path_buf()))
    }
}

impl Drop for PgidRecord {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Ends the process group a killed haul left running, if the file names one that is still a group leader's.
/// Returns the group id that was signalled.
pub fn kill_recorded_group(path: &std::path::Path) -> Option<i32> {
    let pgid: i32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    let _ = std::fs::remove_file(path);
    if pgid <= 1 {
        return None;
    }
    // Only if that process still leads its own group: a recycled pid in someone else's group is left alone.
    let stat = std::fs::read_to_string(format!("/proc/{pgid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let group: i32 = after_name.split_whitespace().nth(2)?.parse().ok()?;
    if group != pgid {
        return None;
    }
    // SAFETY: kill(2) on a process group checked above; no memory is involved.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    Some(pgid)
}

fn redact(line: &str, secrets: &[String]) -> String {
    crate::model::url::redact(line, secrets).into_owned()
}

/// Reads one line into `buf`, keeping at most [`MAX_LINE`] bytes of it and discarding the rest: a step that
/// prints megabytes without a newline (a progress bar, a minified file) cannot grow haul's memory. Returns false
/// at the end of the stream.
async fn read_bounded_line<R: AsyncRead + Unpin>(reader: &mut BufReader<R>, buf: &mut Vec<u8>) -> bool {
    let mut any = false;
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => return any,
            Ok(c) => c,
        };
        any = true;
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = MAX_LINE.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        reader.consume(take);
        if done {
            return true;
        }
    }
}

async fn pump_lines<R: AsyncRead + Unpin>(
    reader: R,
    log: Option<Arc<DeployLog>>,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
    redactions: Vec<String>,
    filter: Option<fn(&str) -> LineUse>,
) {
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if !read_bounded_line(&mut reader, &mut buf).await {
            break;
        }
        let line = redact(
            String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']),
            &redactions,
        );
        let usage = filter.map_or(LineUse::Log, |f| f(&line));
        if usage == LineUse::Drop {
            continue;
        }
        if let (Some(log), LineUse::Log) = (&log, usage) {
            log.line(&format!("  | {line}"));
        }
        if let Some(tail) = &tail {
            let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line);
        }
    }
}

/// Runs `cmd` to completion (or its timeout), streaming its output into `log`.
pub async fn run(cmd: &Cmd, log: Option<&Arc<DeployLog>>) -> Result<Output, RunError> {
    let mut child = spawn(cmd)?;
    let mut guard = GroupGuard(child.id().and_then(|p| i32::try_from(p).ok()));
    if let (Some(data), Some(mut pipe)) = (cmd.stdin.clone(), child.stdin.take()) {
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = pipe.write_all(&data).await;
        });
    }
    let _pgid_record = match (&cmd.pgid_file, guard.0) {
        (Some(f), Some(pgid)) => PgidRecord::write(f, pgid),
        _ => None,
    };

    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let stderr_task = child.stderr.take().map(|e| {
        tokio::spawn(pump_lines(
            e,
            log.cloned(),
            Some(tail.clone()),
            cmd.redact.clone(),
            cmd.stderr_filter,
        ))
    });
    let stdout_task = child.stdout.take().map(|o| {
        if cmd.capture_stdout {
            tokio::spawn(async move {
                let mut v = Vec::new();
                let _ = o.take(MAX_CAPTURE as u64).read_to_end(&mut v).await;
                v
            })
        } else {
            let log = log.cloned();
            let redactions = cmd.redact.clone();
            tokio::spawn(async move {
                pump_lines(o, log, None, redactions, None).await;
                Vec::new()
            })
        }
    });

    let waited = tokio::time::timeout(cmd.timeout, child.wait()).await;
    let status = match waited {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            return Err(RunError::Spawn {
                label: cmd.label.clone(),
                program: cmd.program.clone(),
                source: e,
            })
        }
        Err(_) => {
            stop_timed_out(&mut child, guard, cmd, log).await;
            return Err(RunError::TimedOut {
                label: cmd.label.clone(),
                after: cmd.timeout,
                stderr_tail: snapshot(&tail),
            });
        }
    };
    // The command is done. A grandchild it left in the background may still hold the pipes open: give the
    // readers a moment to drain, then stop reading rather than wait on it.
    guard.0 = None;
    let stdout = drain_readers(stdout_task, stderr_task).await;
    let stderr_tail = snapshot(&tail);
    if status.success() {
        Ok(Output { stdout, stderr_tail })
    } else {
        use std::os::unix::process::ExitStatusExt;
        Err(RunError::Failed {
            label: cmd.label.clone(),
            code: status.code(),
            signal: status.signal(),
            stderr_tail,
        })
    }
}

/// Starts `cmd` in a process group of its own (so a timeout or cancellation can end everything it starts).
fn spawn(cmd: &Cmd) -> Result<tokio::process::Child, RunError> {
    let spawn_err = |source| RunError::Spawn {
        label: cmd.label.clone(),
        program: cmd.program.clone(),
        source,
    };
    let stdin = match (&cmd.stdin, &cmd.stdin_file) {
        (Some(_), _) => Stdio::piped(),
        (None, Some(f)) => Stdio::from(std::fs::File::open(f).map_err(spawn_err)?),
        (None, None) => Stdio::null(),
    };
    command(cmd, stdin, Stdio::piped(), Stdio::piped())
        .spawn()
        .map_err(spawn_err)
}

/// `cmd` as a process to start: argv, its environment and directory, its own process group, killed if
/// the handle is dropped.
fn command(cmd: &Cmd, stdin: Stdio, stdout: Stdio, stderr: Stdio) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(&cmd.program);
    c.args(&cmd.args)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in &cmd.env {
        c.env(k, v);
    }
    if let Some(d) = &cmd.cwd {
        c.current_dir(d);
    }
    c
}

/// A long-running process (the fleet demo's engine nodes and hosts): started as a step is (argv, the
/// command's environment, its own process group), its stdout and stderr appended to `log_file`, and its
/// whole group SIGKILLed when this handle is dropped.
pub struct Service {
    _child: tokio::process::Child,
    _group: GroupGuard,
}

pub fn start_service(cmd: &Cmd, log_file: &std::path::Path) -> Result<Service, RunError> {
    let spawn_err = |source| RunError::Spawn {
        label: cmd.label.clone(),
        program: cmd.program.clone(),
        source,
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .map_err(spawn_err)?;
    let stdout = Stdio::from(log.try_clone().map_err(spawn_err)?);
    let child = command(cmd, Stdio::null(), stdout, Stdio::from(log))
        .spawn()
        .map_err(spawn_err)?;
    let group = GroupGuard(child.id().and_then(|p| i32::try_from(p).ok()));
    Ok(Service {
        _child: child,
        _group: group,
    })
}

/// A timed-out command: SIGTERM to its group, SIGKILL if it has not gone within 3 s.
async fn stop_timed_out(
    child: &mut tokio::process::Child,
    guard: GroupGuard,
    cmd: &Cmd,
    log: Option<&Arc<DeployLog>>,
) {
    guard.signal(libc::SIGTERM);
    if tokio::time::timeout(Duration::from_secs(3), child.wait())
        .await
        .is_err()
    {
        guard.signal(libc::SIGKILL);
        let _ = child.wait().await;
    }
    drop(guard);
    if let Some(l) = log {
        l.line(&format!(
            "  ! {} timed out after {}",
            cmd.label,
            humantime::format_duration(cmd.timeout)
        ));
    }
}

/// Waits briefly for the output readers. A reader still blocked after the drain belongs to a background
/// process the step left: stop reading (aborting the task closes our end of the pipe), so no task,
/// descriptor or log write outlives the step. Returns the captured stdout.
async fn drain_readers(
    stdout_task: Option<tokio::task::JoinHandle<Vec<u8>>>,
    stderr_task: Option<tokio::task::JoinHandle<()>>,
) -> Vec<u8> {
    let drain = Duration::from_secs(2);
    let stdout = match stdout_task {
        Some(mut t) => match tokio::time::timeout(drain, &mut t).await {
            Ok(Ok(v)) => v,
            _ => {
                t.abort();
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    if let Some(mut t) = stderr_task {
        if tokio::time::timeout(drain, &mut t).await.is_err() {
            t.abort();
        }
    }
    stdout
}

fn snapshot(tail: &Mutex<VecDeque<String>>) -> Vec<String> {
    tail.lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn captures_stdout_and_reports_stderr() {
        let out = run(
            &Cmd::new("echo", "sh")
                .args(["-c", "echo hi; echo warn >&2"])
                .capture(),
            None,
        )
        .await
        .expect("runs");
        assert_eq!(out.stdout_str(), "hi");
        assert_eq!(out.stderr_tail, ["warn"]);
        let err = run(
            &Cmd::new("failing step", "sh").args(["-c", "echo boom >&2; exit 3"]),
            None,
        )
        .await
        .expect_err("fails");
        assert_eq!(err.to_string(), "failing step exited with status 3: boom");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = std::env::temp_dir().join(format!("haul-runner-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let marker = dir.join("survivor");
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let err = run(
            &Cmd::new("slow step", "sh")
                .args(["-c", script.as_str()])
                .timeout(Duration::from_millis(300)),
            None,
        )
        .await
        .expect_err("times out");
        assert!(matches!(err, RunError::TimedOut { .. }), "{err}");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "a grandchild outlived the timeout");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn redacts() {
        assert_eq!(redact("https://u:tok@h/x", &["tok".into()]), "https://u:***@h/x");
    }
}
