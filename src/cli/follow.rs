//! Following a deploy as it happens: its log tailed with the time since it started, its audit row polled
//! until it reaches a final state (and on to the request that superseded it, if one did).

use super::*;

/// Prints a deploy's log as it grows until the deploy reaches a final state; follows the deploy that
/// superseded it, if any. Returns the final row.
pub(super) async fn follow(cfg: &Config, id: &DeployId, pretty: bool) -> Result<DeployRow, Exit> {
    let mut id = id.clone();
    let color = pretty && std::io::stderr().is_terminal();
    loop {
        let path = dirs(cfg).log_of(&id);
        let mut started = None;
        let mut offset = 0u64;
        let mut partial = String::new();
        loop {
            let row = store::get(&store::open_read(&dirs(cfg).db())?, &id)?
                .ok_or_else(|| Exit::failed(format!("no deploy {id} in the audit log")))?;
            // Read what the log has now; if the deploy is final, this is the last read.
            if let Ok(mut f) = std::fs::File::open(&path) {
                if f.seek(SeekFrom::Start(offset)).is_ok() {
                    let mut buf = String::new();
                    if let Ok(n) = f.read_to_string(&mut buf) {
                        offset += n as u64;
                        partial.push_str(&buf);
                        while let Some(i) = partial.find('\n') {
                            let line: String = partial.drain(..=i).collect();
                            print_log_line(line.trim_end(), color, &mut started);
                        }
                    }
                }
            }
            if row.state == State::Superseded {
                if let Some(next) = row.superseded_by.clone() {
                    eprintln!("{id} was superseded by {next} before it started; following {next}");
                    id = next;
                    break;
                }
            }
            if row.state.is_final() {
                return Ok(row);
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
}

/// Prints one log line with the time elapsed since the deploy's first line (`+12s`), stages in bold.
fn print_log_line(line: &str, color: bool, start: &mut Option<std::time::SystemTime>) {
    let mut err = std::io::stderr().lock();
    // `2026-11-26T15:32:15Z ==> fetch ...`
    let (stamp, rest) = line.split_once(' ').unwrap_or(("", line));
    let at = humantime::parse_rfc3339(stamp).ok();
    let first = *start.get_or_insert_with(|| at.unwrap_or_else(std::time::SystemTime::now));
    let elapsed = at
        .and_then(|t| t.duration_since(first).ok())
        .map_or_else(String::new, |d| format!("+{}s", d.as_secs()));
    let _ = if !color {
        writeln!(err, "{elapsed:>5} {rest}")
    } else if rest.starts_with("==>") {
        writeln!(err, "\x1b[2m{elapsed:>5}\x1b[0m \x1b[1;36m{rest}\x1b[0m")
    } else {
        writeln!(err, "\x1b[2m{elapsed:>5}\x1b[0m {rest}")
    };
}

// ---------------------------------------------------------------------------------------------------------
// status, history, logs
