//! The daemon's fleet wiring: with `[fleet]`, starts the agent, gives it a reporter (what each fleet app has
//! live, from the release links and the audit) and a submitter (an assignment becomes a `fleet` request in
//! this host's queue), and gives the queue the link its fleet apps' triggers are handed over through.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use futures_util::future::BoxFuture;

use crate::config::{AppConfig, Config, Provider};
use crate::deploy::fleet::FleetLink;
use crate::deploy::queue::{Env, Queue};
use crate::fleet::{self, AgentHandle, AgentParts, AppReport, Assignment, Proposal};
use crate::model::{DeployRequest, Trigger};
use crate::store::{DeployRow, Enqueued, StoreError};

/// The agent, when this host is part of a fleet (`None`, and no NATS connection, otherwise), and the
/// cell the queue goes into once it exists (assignments are submitted to it).
pub(crate) fn start(
    cfg: &Config,
    env: &mut Env,
    secrets: &HashMap<String, Vec<Vec<u8>>>,
) -> Option<(AgentHandle, Arc<OnceLock<Arc<Queue>>>)> {
    let fc = cfg.fleet.clone()?;
    let apps: Vec<Arc<crate::config::AppConfig>> =
        env.apps.values().filter(|a| a.fleet.is_some()).cloned().collect();
    let queue: Arc<OnceLock<Arc<Queue>>> = Arc::new(OnceLock::new());
    let me: Arc<OnceLock<AgentHandle>> = Arc::new(OnceLock::new());
    let parts = AgentParts {
        reporter: reporter(env, &apps),
        submitter: submitter(queue.clone(), me.clone()),
        verifier: verifier(&apps, secrets),
        dirs: env.dirs.clone(),
        notifier: env.notifier.clone(),
        apps,
    };
    let agent = fleet::spawn(fc, parts);
    let _ = me.set(agent.clone());
    env.fleet = Some(Arc::new(Link {
        agent: agent.clone(),
        host: agent.host().to_string(),
    }));
    Some((agent, queue))
}

struct Link {
    agent: AgentHandle,
    host: String,
}

impl FleetLink for Link {
    fn forward(
        &self,
        row: DeployRow,
        signed: Option<crate::model::SignedDelivery>,
    ) -> BoxFuture<'static, Result<String, String>> {
        let agent = self.agent.clone();
        let p = Proposal {
            app: row.app.clone(),
            origin: self.host.clone(),
            deploy_id: row.id.to_string(),
            trigger: row.trigger.as_str().into(),
            git_ref: row.git_ref.clone(),
            sha: row.sha.clone(),
            digest: row.digest.clone(),
            actor: row.actor.clone(),
            provider: row.provider.clone(),
            delivery_id: row.delivery_id.clone(),
            requested_ms: row.requested_at,
            signed,
            rolls_back: None,
        };
        Box::pin(async move {
            agent.propose(p).await.map_err(|e| e.to_string())?;
            Ok("handed to the fleet: its conductor rolls the newest commit out to every host".into())
        })
    }
}

/// A trigger's claim, checked with this host's own config and secrets: one that says it is a forge's webhook
/// must carry the signed delivery, which must verify here and ask for the sha. GitLab's plain token signs
/// nothing of the body (and is never carried), so a GitLab app's webhook is taken, like `haul fleet deploy`
/// or a poll, on the word of the host named, inside the fleet's NATS trust boundary.
fn verifier(apps: &[Arc<AppConfig>], secrets: &HashMap<String, Vec<Vec<u8>>>) -> fleet::Verifier {
    let apps: HashMap<String, Arc<AppConfig>> = apps.iter().map(|a| (a.name.clone(), a.clone())).collect();
    let secrets = secrets.clone();
    Arc::new(move |p: &Proposal, sha: &str| {
        let app = apps
            .get(&p.app)
            .ok_or_else(|| format!("app {} is not a fleet app on this host", p.app))?;
        if p.trigger != Trigger::Webhook.as_str() {
            return Ok(());
        }
        let provider = app.webhook.as_ref().map(|w| w.provider);
        match &p.signed {
            Some(d) => {
                let secrets = secrets.get(&p.app).map(Vec::as_slice).unwrap_or_default();
                crate::intake::reverify(app, secrets, d, p.requested_ms.div_euclid(1000), sha)
            }
            // Tokens in clear sign nothing: GitLab's, and a registry's own notifications.
            None if matches!(provider, Some(Provider::Gitlab | Provider::Distribution)) => Ok(()),
            None => Err(format!(
                "it claims a {} webhook (handed over by {}) but carries no signed delivery to verify",
                p.provider.as_deref().unwrap_or("forge"),
                p.origin
            )),
        }
    })
}

fn submitter(queue: Arc<OnceLock<Arc<Queue>>>, me: Arc<OnceLock<AgentHandle>>) -> fleet::Submitter {
    Arc::new(move |app: String, a: Assignment, refused: Option<String>| {
        let queue = queue.get().cloned();
        let me = me.get().cloned();
        Box::pin(async move {
            let q = queue.ok_or("the queue is not up yet")?;
            // A revert is a rollback to the release before the live one, with the same lock and audit.
            let mut req = if a.revert {
                DeployRequest::new(app, Trigger::Rollback, a.actor)
            } else {
                let mut r = DeployRequest::new(app, Trigger::Fleet, a.actor);
                r.sha = Some(a.sha);
                r.git_ref = Some(a.git_ref);
                r.digest = a.digest;
                r
            };
            // The rollout's id is the delivery: the same assignment twice is a duplicate, never two deploys.
            req.delivery_id = Some(a.rollout);
            if let Some(why) = refused {
                let id = match q.refuse(req, why).await.map_err(|e| e.to_string())? {
                    Enqueued::Recorded { id, .. } | Enqueued::Passed { id, .. } => id,
                    Enqueued::Duplicate { first } | Enqueued::Replay { first } => first,
                };
                if let Some(agent) = me {
                    agent.poke();
                }
                return Ok(id.to_string());
            }
            let id = match q.submit(req).await.map_err(|e| e.to_string())? {
                Enqueued::Recorded { id, .. } | Enqueued::Passed { id, .. } => id,
                Enqueued::Duplicate { first } | Enqueued::Replay { first } => first,
            };
            // The conductor waits on this host's report of the deploy: wake the agent the moment it ends
            // (its row checked every 100 ms while it runs), instead of at the next tick.
            if let Some(agent) = me {
                let (store, watched) = (q.env().store.clone(), id.clone());
                tokio::spawn(async move {
                    for _ in 0..36_000 {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        let w = watched.clone();
                        match store.call(move |c| crate::store::get(c, &w)).await {
                            Ok(Some(row)) if !row.state.is_final() => continue,
                            _ => break,
                        }
                    }
                    agent.poke();
                });
            }
            Ok(id.to_string())
        })
    })
}

fn reporter(env: &Env, apps: &[Arc<crate::config::AppConfig>]) -> fleet::Reporter {
    let store = env.store.clone();
    let apps: Vec<(String, std::path::PathBuf)> =
        apps.iter().map(|a| (a.name.clone(), a.path.clone())).collect();
    Arc::new(move || {
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
                        let fleet = crate::store::last_fleet_row(c, &name)?;
                        out.insert(
                            name,
                            AppReport {
                                live_sha: live.as_ref().and_then(|d| d.sha.clone()),
                                live_release: release,
                                // What is live came past the fleet (`haul deploy --local`, or a deploy
                                // run without the daemon): diverged until the next fleet release.
                                phase: if summary.running.is_some() {
                                    "deploying"
                                } else if live
                                    .as_ref()
                                    .is_some_and(|d| matches!(d.trigger, Trigger::Local | Trigger::Manual))
                                {
                                    "diverged"
                                } else {
                                    "idle"
                                }
                                .into(),
                                outcome: summary.last.map(|d| d.state.as_str().to_string()),
                                rollout: fleet.as_ref().and_then(|d| d.delivery_id.clone()),
                                rollout_reason: fleet
                                    .as_ref()
                                    .filter(|d| d.state != crate::model::State::Succeeded)
                                    .and_then(|d| d.reason.clone()),
                                rollout_state: fleet.map(|d| d.state.as_str().to_string()),
                            },
                        );
                    }
                    Ok(out)
                })
                .await;
            read.unwrap_or_else(|e: StoreError| {
                tracing::warn!("fleet: cannot read the audit for the heartbeat: {e}");
                BTreeMap::new()
            })
        })
    })
}
