//! The front of a git deploy: fetch the app's mirror, decide the commit (on the branch, or the newest
//! matching tag), refuse to go back in time, and make the primary vouch for what a mirror served.

use super::*;

impl Pipeline {
    /// The git half of [`Pipeline::prepare`].
    pub(super) async fn prepare_git(&self, job: &Job, previous: &Previous) -> Result<Target, Outcome> {
        if job.trigger == Trigger::Fleet {
            return self.prepare_fleet(job).await;
        }
        let started = Instant::now();
        let git = self.git();
        self.log.stage(&format!(
            "fetch {} ({})",
            crate::model::url::shown(&self.app.repo),
            self.app.track.describe()
        ));
        git.ensure_mirror().await.map_err(|f| fail("fetch failed", &f))?;
        let report = git
            .fetch()
            .await
            .map_err(|f| fail(&format!("fetch failed ({})", f.kind.as_str()), &f))?;
        self.log.line(&format!(
            "    fetched in {:.1}s ({} attempt{})",
            started.elapsed().as_secs_f64(),
            report.attempts,
            if report.attempts == 1 { "" } else { "s" }
        ));
        // The audit says why a deploy took longer than it should have.
        let fetch_note = report.rate_limited.map(|open| {
            format!(
                "the forge rate-limited the fetch (Retry-After {}s); haul waited {:.0}s and fetched {} time(s)",
                open.as_secs(),
                report.waited.as_secs_f64(),
                report.attempts
            )
        });
        self.timed("fetch", started);
        let (git_ref, sha) = self.resolve(&git, job).await?;
        self.refuse_going_back(&git, job, previous, &git_ref, &sha)
            .await?;
        if let Some(mirror) = &report.mirror {
            self.vouch_for_mirror(&git, job, mirror, &git_ref, &sha).await?;
        }
        // A monorepo app: a push that changed nothing under its `paths` since the live release needs no deploy.
        if let (false, Some(live)) = (self.app.paths.is_empty(), previous.sha.as_deref()) {
            if matches!(job.trigger, Trigger::Webhook | Trigger::Poll) && live != sha {
                let changed = git
                    .changed_files(live, &sha)
                    .await
                    .map_err(|f| fail("cannot compare with the live release", &f))?;
                if !changed
                    .iter()
                    .any(|f| crate::config::paths_match(&self.app.paths, f))
                {
                    return Err(Outcome::new(
                        State::Ignored,
                        format!(
                            "no change under paths ({}) since the live {} ({} file(s) changed elsewhere); nothing built",
                            self.app.paths.join(", "),
                            model::short_sha(live),
                            changed.len()
                        ),
                    ));
                }
            }
        }
        // Signed by an allowed key, or refused for good before anything is built; the audit names the key.
        let mut fetch_note = fetch_note;
        if let Some(signers) = &self.app.verify_commits {
            let tag = git_ref.strip_prefix("refs/tags/");
            let scratch = self.dirs.downloads_of(&self.app.name).join(job.id.as_str());
            let signed = git.verify_signature(signers, &sha, tag, &scratch).await;
            let _ = std::fs::remove_dir_all(&scratch);
            let signer = signed.map_err(|f| fail("refused (permanent)", &f))?;
            self.log.line(&format!("    signature: {signer}"));
            let note = format!("signature: {signer}");
            fetch_note = Some(match fetch_note {
                Some(n) => format!("{n}; {note}"),
                None => note,
            });
        }
        self.log.line(&format!("    deploying {sha} ({git_ref})"));
        let release_id = release::new_release_id(&self.app.path, model::now_ms(), &sha);
        Ok(Target {
            git_ref,
            sha,
            release_id,
            fetch_note,
            artifact: None,
        })
    }

    /// A fleet rollout's assignment: the commit comes in the release bundle the host downloaded from the
    /// engine (never from the forge); git checks every object against the sha. The conductor already
    /// decided that it is on the branch and newer than what the fleet had.
    async fn prepare_fleet(&self, job: &Job) -> Result<Target, Outcome> {
        let started = Instant::now();
        let failed = |m: String| Outcome::new(State::Failed, m);
        let sha = job
            .sha
            .clone()
            .filter(|s| model::is_full_sha(s))
            .ok_or_else(|| failed("a fleet assignment without a full sha".into()))?;
        let bundle = self.dirs.fleet_bundle(&self.app.name, &sha);
        self.log
            .stage(&format!("fetch {sha} from the fleet's release bundle"));
        let git = self.git();
        git.ensure_mirror().await.map_err(|f| fail("fetch failed", &f))?;
        git.fetch_bundle(&bundle, &sha)
            .await
            .map_err(|f| fail("fetch from the release bundle failed", &f))?;
        let _ = std::fs::remove_file(&bundle);
        self.timed("fetch", started);
        let git_ref = job
            .git_ref
            .clone()
            .unwrap_or_else(|| format!("refs/heads/{}", self.app.branch));
        self.log.line(&format!("    deploying {sha} ({git_ref})"));
        Ok(Target {
            release_id: release::new_release_id(&self.app.path, model::now_ms(), &sha),
            git_ref,
            sha,
            fetch_note: None,
            artifact: None,
        })
    }

    pub(super) fn git(&self) -> Git {
        Git::new(
            self.app.clone(),
            self.dirs.mirror_of(&self.app.name),
            Some(self.log.clone()),
        )
    }

    /// Decides the (ref, commit) to deploy. A branch app deploys a commit reachable from its branch (the tip
    /// by default); a tag app deploys the commit of a matching tag (the newest by default).
    pub(super) async fn resolve(&self, git: &Git, job: &Job) -> Result<(String, String), Outcome> {
        let failed = |m: String| Outcome::new(State::Failed, m);
        let wanted = match &job.sha {
            None => None,
            Some(w) if model::is_sha_prefix(w) => Some(w.to_ascii_lowercase()),
            Some(w) => return Err(failed(format!("{w:?} is not a commit sha"))),
        };
        let sha = match &wanted {
            None => None,
            Some(w) => match git.resolve_commit(w).await {
                Ok(Some(sha)) => Some(sha),
                Ok(None) => {
                    return Err(failed(format!(
                    "commit {w} is not in the repository after fetching {} (not pushed yet, or not on it)",
                    self.app.track.describe()
                )))
                }
                Err(f) => return Err(fail(&format!("cannot resolve {w}"), &f)),
            },
        };
        match (&self.app.track, sha) {
            (Track::Branch(branch), None) => {
                let r = format!("refs/heads/{branch}");
                match git.resolve_commit(&r).await {
                    Ok(Some(sha)) => Ok((r, sha)),
                    Ok(None) => Err(failed(format!("branch {branch} has no commit after the fetch"))),
                    Err(f) => Err(fail("cannot resolve the branch tip", &f)),
                }
            }
            (Track::Branch(branch), Some(sha)) => match git.is_on_branch(&sha).await {
                Ok(true) => Ok((format!("refs/heads/{branch}"), sha)),
                Ok(false) => Err(failed(format!(
                    "commit {sha} is not on branch {branch}; haul only deploys commits reachable from the configured branch"
                ))),
                Err(f) => Err(fail(&format!("cannot check that {sha} is on {branch}"), &f)),
            },
            (Track::Tags(glob), None) => match git.newest_tag(glob).await {
                Ok(Some(found)) => Ok(found),
                Ok(None) => Err(failed(format!("no tag matching {glob} after the fetch"))),
                Err(f) => Err(fail("cannot list tags", &f)),
            },
            (Track::Tags(glob), Some(sha)) => {
                let tags = git.tags_at(&sha, glob).await.map_err(|f| fail("cannot list tags", &f))?;
                // A webhook names its tag: it must still point at that commit. A person gets any matching tag.
                let named = job.git_ref.as_deref().filter(|r| r.starts_with("refs/tags/"));
                let chosen = match named {
                    Some(r) => tags.iter().find(|t| t.as_str() == r),
                    None => tags.first(),
                };
                match chosen {
                    Some(t) => Ok((t.clone(), sha)),
                    None => Err(failed(format!(
                        "commit {sha} is not the commit of {}; haul only deploys commits of tags matching {glob}",
                        named.unwrap_or("any tag")
                    ))),
                }
            }
        }
    }

    /// A webhook or a poll never takes the app back in time: a sha that is an ancestor of the live one, and is
    /// not what the remote's ref points at now, is a replayed or out-of-order trigger. (A real rewind, a
    /// force-push of the branch to an older commit, makes that commit the tip, and deploys.)
    /// Is `ancestor` an ancestor of `descendant` (or the same commit) in the app's mirror? False when the mirror
    /// cannot tell (a sha it does not have).
    pub(crate) async fn is_ancestor(&self, ancestor: &str, descendant: &str) -> bool {
        ancestor == descendant || matches!(self.git().is_ancestor(ancestor, descendant).await, Ok(true))
    }

    pub(super) async fn refuse_going_back(
        &self,
        git: &Git,
        job: &Job,
        previous: &Previous,
        git_ref: &str,
        sha: &str,
    ) -> Result<(), Outcome> {
        if !matches!(job.trigger, Trigger::Webhook | Trigger::Poll) {
            return Ok(());
        }
        let Some(live) = previous.sha.as_deref().filter(|l| *l != sha) else {
            return Ok(());
        };
        if !matches!(git.is_ancestor(sha, live).await, Ok(true)) {
            return Ok(());
        }
        let tip = git.resolve_commit(git_ref).await.ok().flatten();
        if tip.as_deref() == Some(sha) {
            return Ok(());
        }
        Err(Outcome::new(
            State::Ignored,
            format!(
                "{} is older than the live {} and is not the tip of {git_ref}: a replayed or out-of-order trigger; nothing deployed",
                &sha[..sha.len().min(7)],
                &live[..live.len().min(7)]
            ),
        ))
    }

    /// The objects came from a mirror: deploy the sha only if the primary published it. A signed webhook from
    /// the primary forge naming exactly this sha is its word; otherwise one cheap `ls-remote` of the primary
    /// must show this sha, or a descendant of it that the mirror also has.
    pub(super) async fn vouch_for_mirror(
        &self,
        git: &Git,
        job: &Job,
        mirror: &str,
        git_ref: &str,
        sha: &str,
    ) -> Result<(), Outcome> {
        let failed = |m: String| Outcome::new(State::Failed, m);
        let mirror = crate::model::url::shown(mirror);
        if job.trigger == Trigger::Webhook && job.sha.as_deref() == Some(sha) {
            self.log.line(&format!(
                "    fetched from mirror {mirror}; {sha} is the sha the primary's signed webhook named"
            ));
            return Ok(());
        }
        let head = git.remote_head().await.map_err(|f| {
            failed(format!(
                "fetched {sha} from mirror {mirror}, but cannot check it with the primary ({f}); haul never deploys a mirror's word alone"
            ))
        })?;
        let Some((primary_ref, tip)) = head else {
            return Err(failed(format!(
                "the primary has no {}",
                self.app.track.describe()
            )));
        };
        let published = tip == sha
            || (primary_ref == git_ref
                && matches!(git.resolve_commit(&tip).await, Ok(Some(_)))
                && matches!(git.is_ancestor(sha, &tip).await, Ok(true)));
        if !published {
            return Err(failed(format!(
                "mirror {mirror} offers {sha} for {git_ref}, but the primary has {primary_ref} at {tip} and does not contain it; not deploying"
            )));
        }
        self.log.line(&format!(
            "    fetched from mirror {mirror}; the primary has {sha} on {primary_ref}"
        ));
        Ok(())
    }
}
