//! The daemon's fleet wiring: with `[fleet]`, starts the agent (heartbeats, conductor leases) with a
//! reporter that reads what each fleet app has live from the release links and the audit.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::Config;
use crate::deploy::queue::Env;
use crate::fleet::{self, AgentHandle, AppReport};

/// The agent, when this host is part of a fleet; `None` (and no NATS connection) otherwise.
pub(crate) fn start(cfg: &Config, env: &Env) -> Option<AgentHandle> {
    let fc = cfg.fleet.clone()?;
    let apps: Vec<(String, std::path::PathBuf)> = cfg
        .apps
        .values()
        .filter(|a| a.fleet.is_some())
        .map(|a| (a.name.clone(), a.path.clone()))
        .collect();
    let names = apps.iter().map(|(n, _)| n.clone()).collect();
    let store = env.store.clone();
    let reporter: fleet::Reporter = Arc::new(move || {
        let store = store.clone();
        let live: Vec<(String, Option<String>)> = apps
            .iter()
            .map(|(n, p)| (n.clone(), crate::deploy::release::current(p)))
            .collect();
        Box::pin(async move {
            let read = store
                .call(move |c| {
                    let mut out = BTreeMap::new();
                    for (name, release) in live {
                        let summary = crate::store::summary(c, &name)?;
                        let live = match &release {
                            Some(r) => crate::store::live_deploy(c, &name, r)?,
                            None => None,
                        };
                        out.insert(
                            name,
                            AppReport {
                                live_sha: live.as_ref().and_then(|d| d.sha.clone()),
                                live_release: release,
                                phase: if summary.running.is_some() {
                                    "deploying"
                                } else {
                                    "idle"
                                }
                                .into(),
                                outcome: summary.last.map(|d| d.state.as_str().to_string()),
                            },
                        );
                    }
                    Ok(out)
                })
                .await;
            read.unwrap_or_else(|e: crate::store::StoreError| {
                tracing::warn!("fleet: cannot read the audit for the heartbeat: {e}");
                BTreeMap::new()
            })
        })
    });
    Some(fleet::spawn(fc, names, reporter))
}
