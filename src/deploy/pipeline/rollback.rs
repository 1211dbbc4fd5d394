//! Going back: `haul rollback` (an earlier successful release put back, with its activate steps and the
//! health gate) and the automatic roll back when a new release fails to activate or to become healthy.

use super::*;

impl Pipeline {
    /// `haul rollback`: put an earlier release back, with the same activate steps and health gate. If that
    /// fails, the release that was live is put back again.
    pub async fn rollback(&self, job: &Job, candidates: &[Candidate], previous: &Previous) -> Outcome {
        let live = previous.release_id.as_deref();
        let wanted = job.sha.as_deref();
        let chosen = match wanted {
            // "The one before the live one": the successful release built just before it, so a second
            // rollback goes further back, not forward again.
            None => match live.and_then(|l| candidates.iter().position(|c| c.release_id == l)) {
                Some(i) => candidates.get(i + 1),
                None => candidates.iter().find(|c| Some(c.release_id.as_str()) != live),
            },
            // A release id exactly; else a sha prefix, in either case.
            Some(w) => candidates.iter().find(|c| c.release_id == w).or_else(|| {
                let w = w.to_ascii_lowercase();
                candidates
                    .iter()
                    .find(|c| model::is_sha_prefix(&w) && c.sha.starts_with(&w))
            }),
        };
        let Some(target) = chosen else {
            let on_disk: Vec<&str> = candidates.iter().map(|c| c.release_id.as_str()).collect();
            return Outcome::new(
                State::Failed,
                match wanted {
                    None => "there is no earlier successful release on disk to roll back to".to_string(),
                    Some(w) => format!(
                        "no successful release {w:?} on disk (releases you can roll back to: {})",
                        if on_disk.is_empty() {
                            "none".to_string()
                        } else {
                            on_disk.join(", ")
                        }
                    ),
                },
            );
        };
        let mut o = Outcome {
            state: State::Failed,
            reason: String::new(),
            sha: Some(target.sha.clone()),
            release_id: Some(target.release_id.clone()),
            previous_sha: previous.sha.clone(),
            digest: None,
            after_failed: None,
        };
        if Some(target.release_id.as_str()) == live {
            o.state = State::Succeeded;
            o.reason = format!("{} is already live; nothing to do", target.release_id);
            return o;
        }
        let dir = release::release_dir(&self.app.path, &target.release_id);
        self.log.stage(&format!(
            "rollback: switch current -> releases/{}",
            target.release_id
        ));
        if let Err(e) = release::switch(&self.app.path, &target.release_id) {
            o.reason = format!(
                "cannot switch to {}: {e}; {} is still live",
                target.release_id,
                live.unwrap_or("nothing")
            );
            return o;
        }
        let git_ref = job.git_ref.clone().unwrap_or_default();
        let mut env = self.step_env(job, &git_ref, &target.sha, &dir, previous, None);
        env.push(("HAUL_ROLLBACK".into(), "1".into()));
        let activated = match self.run_steps("activate", &self.app.activate, &dir, &env).await {
            Ok(()) => self.health(&dir, &env).await,
            Err(e) => Err(e),
        };
        match activated {
            Ok(()) => {
                o.state = State::Succeeded;
                o.reason = format!(
                    "rolled back to {} ({})",
                    target.release_id,
                    &target.sha[..target.sha.len().min(7)]
                );
                o
            }
            Err(e) => {
                let mut back = self
                    .roll_back(
                        job,
                        previous,
                        o,
                        &format!("rollback to {} failed: {e}", target.release_id),
                    )
                    .await;
                back.state = State::Failed;
                back
            }
        }
    }

    /// Activate failed with the new release live: put the previous one back and re-activate it.
    pub(super) async fn roll_back(
        &self,
        job: &Job,
        previous: &Previous,
        mut o: Outcome,
        why: &str,
    ) -> Outcome {
        let Some(prev_id) = previous.release_id.as_deref() else {
            o.reason =
                format!("{why}; there is no previous release to roll back to, so the new release stays live");
            return o;
        };
        self.log
            .stage(&format!("roll back: switch current -> releases/{prev_id}"));
        if let Err(e) = release::switch(&self.app.path, prev_id) {
            o.reason = format!("{why}; rolling back to {prev_id} failed too: {e}");
            return o;
        }
        let prev_dir = release::release_dir(&self.app.path, prev_id);
        let prev_sha = previous.sha.clone().unwrap_or_default();
        let prev_ref = job.git_ref.clone().unwrap_or_default();
        let mut env = self.step_env(
            job,
            &prev_ref,
            &prev_sha,
            &prev_dir,
            previous,
            previous.digest.as_deref(),
        );
        env.push(("HAUL_ROLLBACK".into(), "1".into()));
        let reactivated = self
            .run_steps("re-activate", &self.app.activate, &prev_dir, &env)
            .await;
        o.state = State::RolledBack;
        o.reason = match reactivated {
            Ok(()) => format!("{why}; rolled back to {prev_id}"),
            Err(e) => format!("{why}; rolled back to {prev_id}, but re-activating it failed: {e}"),
        };
        o
    }
}
