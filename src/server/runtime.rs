//! What every process that deploys sets up the same way, the daemon and an in-process `haul deploy` alike:
//! the state directory, the audit database, and the queue's environment with its notifier wired. One
//! function, so the two cannot drift apart (they once opened the store and wired notifications each in
//! their own way).

use tokio::sync::mpsc::UnboundedReceiver;

use crate::config::Config;
use crate::deploy::queue::Env;
use crate::infra::state_dir::StateDir;
use crate::model::event::{self, Event};
use crate::store::{Store, StoreError};

pub struct Runtime {
    pub env: Env,
    /// Where the queue's notifications arrive; whoever runs the deploys starts the delivery.
    pub notify_rx: UnboundedReceiver<Event>,
}

/// Makes the state directory's folders (an error names the one that could not be made).
pub fn prepare_dirs(cfg: &Config) -> Result<StateDir, String> {
    let dirs = StateDir::new(&cfg.state_dir);
    dirs.create()?;
    Ok(dirs)
}

impl Runtime {
    /// Opens (creating and migrating) the audit database and builds the queue's environment, notifier
    /// included. The folders must exist ([`prepare_dirs`]).
    pub fn open(cfg: &Config) -> Result<Runtime, StoreError> {
        let store = Store::open(&StateDir::new(&cfg.state_dir).db())?;
        let (notifier, notify_rx) = event::channel();
        let mut env = Env::new(cfg, store);
        env.notifier = Some(notifier);
        Ok(Runtime { env, notify_rx })
    }
}
