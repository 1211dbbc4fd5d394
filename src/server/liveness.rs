//! Is the daemon alive? The self-check shared by `/healthz` (on demand) and, only under systemd's watchdog,
//! a loop that sends `WATCHDOG=1` while the check passes. Without a watchdog nothing here wakes up idly.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::deploy::queue::Queue;
use crate::ops::systemd;

/// The daemon's self-check, shared by `/healthz` (on demand) and the systemd watchdog loop: is the audit
/// database answering, and is every deploy worker alive?
#[derive(Default)]
pub struct Liveness {
    workers: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
    queue: std::sync::OnceLock<Arc<Queue>>,
}

impl Liveness {
    pub(crate) fn watch(&self, queue: Arc<Queue>, workers: Vec<tokio::task::AbortHandle>) {
        *self.workers.lock().unwrap_or_else(|p| p.into_inner()) = workers;
        let _ = self.queue.set(queue);
    }

    pub async fn check(&self) -> Result<(), String> {
        let Some(queue) = self.queue.get() else {
            return Err("starting".into());
        };
        let db = tokio::time::timeout(
            Duration::from_secs(10),
            queue.env().store.call(crate::store::ping),
        )
        .await;
        match db {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("the audit database does not answer: {e}")),
            Err(_) => return Err("the audit database did not answer within 10s".into()),
        }
        if self
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|w| w.is_finished())
        {
            return Err("a deploy worker has stopped".into());
        }
        Ok(())
    }
}

/// Under systemd's watchdog only: every half `WatchdogSec`, the self-check, and `WATCHDOG=1` if it passes. A
/// daemon that hangs stops sending, and systemd restarts it. Without a watchdog nothing wakes up idly.
pub(crate) async fn health_loop(liveness: Arc<Liveness>, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        match liveness.check().await {
            Ok(()) => {
                systemd::notify("WATCHDOG=1");
            }
            Err(p) => tracing::error!("health: {p}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}
