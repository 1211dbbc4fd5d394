//! The front of an artifact deploy: resolve what the trigger names (an image tag's digest by one `HEAD`),
//! skip what is already live, download into the deploy's private directory and verify it, then (after the
//! release id is recorded) unpack it safely into the release directory.

use super::*;
use crate::sources::artifact;

fn failed(what: &str, f: Failure) -> Outcome {
    fail(&format!("{what} ({})", f.kind.as_str()), &f)
}

/// Webhooks and polls: the triggers that must never take an app back.
fn is_automatic(job: &Job) -> bool {
    matches!(job.trigger, Trigger::Webhook | Trigger::Poll)
}

impl Pipeline {
    /// Where this deploy's downloads go: private to haul, removed when the deploy ends (and at start-up).
    pub fn downloads_dir(&self, job: &Job) -> PathBuf {
        self.dirs.downloads_of(&self.app.name).join(job.id.as_str())
    }

    /// An artifact: decide what to deploy (for an image, one `HEAD` for the tag's digest), skip it if it is
    /// already live, else download and verify it. Nothing on the app's `path` is touched yet.
    pub(super) async fn prepare_artifact(&self, job: &Job, previous: &Previous) -> Result<Target, Outcome> {
        if job.trigger == Trigger::Fleet {
            return self.prepare_fleet_artifact(job).await;
        }
        let started = Instant::now();
        let wanted = artifact::wanted(
            &self.app,
            job.sha.as_deref(),
            job.git_ref.as_deref(),
            job.digest.as_deref(),
        )
        .map_err(|why| Outcome::new(State::Failed, why))?;
        self.log.stage(&format!("resolve {}", self.app.repo));
        let (resolved, report) = self
            .guarded("resolving", || artifact::resolve(&self.app, &wanted))
            .await;
        let mut resolved = resolved.map_err(|f| failed("resolve failed", f))?;
        if matches!(self.app.source, Source::Image(_)) {
            let live = artifact::Live {
                git_ref: previous.git_ref.as_deref(),
                sha: previous.sha.as_deref(),
                what: previous.release_id.as_deref().unwrap_or(""),
            };
            artifact::image_moves_forward(&self.app, is_automatic(job), &live, &wanted, &mut resolved)
                .map_err(|why| Outcome::new(State::Ignored, why))?;
        }
        self.log.line(&format!("    {}", resolved.location));
        let dir = self.downloads_dir(job);
        self.log.stage("download and verify");
        let (fetched, report2) = self
            .guarded("the download", || {
                artifact::download(&self.app, &resolved, &wanted, &dir)
            })
            .await;
        let fetched = fetched.map_err(|f| {
            let _ = std::fs::remove_dir_all(&dir);
            failed("download failed", f)
        })?;
        for n in &fetched.notes {
            self.log.line(&format!("    {n}"));
        }
        self.timed("fetch", started);
        let sha = artifact::audit_sha(&self.app, &wanted, &fetched);
        if is_automatic(job)
            && Some(&sha) == previous.sha.as_ref()
            && Some(&fetched.digest) == previous.digest.as_ref()
        {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(Outcome::new(
                State::Ignored,
                format!(
                    "{} ({}) is already live as {}; nothing changed",
                    resolved.location,
                    fetched.digest,
                    previous.release_id.as_deref().unwrap_or("")
                ),
            ));
        }
        let attempts = report.attempts + report2.attempts;
        let fetch_note = report.rate_limited.or(report2.rate_limited).map(|open| {
            format!(
                "the upstream rate-limited haul (circuit open {}s); haul waited {:.0}s and tried {attempts} time(s)",
                open.as_secs(),
                (report.waited + report2.waited).as_secs_f64(),
            )
        });
        let git_ref = match &job.git_ref {
            Some(r) => r.clone(),
            None if matches!(self.app.source, Source::Image(_)) => format!("refs/tags/{}", resolved.name),
            None => String::new(),
        };
        self.log.line(&format!(
            "    deploying {} ({})",
            fetched.digest, resolved.location
        ));
        let release_id = release::new_release_id(&self.app.path, model::now_ms(), &sha);
        Ok(Target {
            git_ref,
            sha,
            release_id,
            fetch_note,
            artifact: Some(fetched),
        })
    }

    /// A fleet rollout's assignment: the artifact comes in the package the host downloaded from the engine
    /// (never from the upstream), checked again here as if it had just been downloaded: its digest, each
    /// layer, and this host's own `verify` key. The conductor already decided that it moves forward.
    async fn prepare_fleet_artifact(&self, job: &Job) -> Result<Target, Outcome> {
        let started = Instant::now();
        let failed = |m: String| Outcome::new(State::Failed, m);
        let sha = job
            .sha
            .clone()
            .filter(|s| model::is_sha_prefix(s))
            .ok_or_else(|| failed("a fleet assignment without a sha".into()))?;
        let digest = job
            .digest
            .clone()
            .filter(|d| model::is_sha256_digest(d))
            .ok_or_else(|| failed(format!("the fleet's assignment of {sha} names no sha256 digest")))?;
        let templated = self.app.source.is_templated() && !matches!(self.app.source, Source::Image(_));
        if !templated && digest.trim_start_matches("sha256:") != sha {
            return Err(failed(format!(
                "the fleet's assignment names {sha} but digest {digest}: they must be the same; refusing it"
            )));
        }
        self.log
            .stage(&format!("check {digest} from the fleet's package"));
        let dir = self.downloads_dir(job);
        let package = self.dirs.fleet_package(&self.app.name, &sha);
        let _ = std::fs::remove_dir_all(&dir);
        if let Some(parent) = dir.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        std::fs::rename(&package, &dir).map_err(|e| {
            failed(format!(
                "the fleet's package of {} is not on this host ({e}); the rollout assigns it again",
                model::short_sha(&sha)
            ))
        })?;
        let version = templated.then_some(sha.as_str());
        let fetched = artifact::verify_local(&self.app, &dir, &digest, version)
            .await
            .map_err(|f| {
                let _ = std::fs::remove_dir_all(&dir);
                fail("the fleet's package was refused", &f)
            })?;
        for n in &fetched.notes {
            self.log.line(&format!("    {n}"));
        }
        self.timed("fetch", started);
        let git_ref = job.git_ref.clone().unwrap_or_default();
        self.log.line(&format!("    deploying {digest} ({sha})"));
        Ok(Target {
            release_id: release::new_release_id(&self.app.path, model::now_ms(), &sha),
            git_ref,
            sha,
            fetch_note: None,
            artifact: Some(fetched),
        })
    }

    /// One network operation of this app's artifact source: within its upstream's circuit and budget, with
    /// `fetch_attempts` bounded retries, each attempt within `fetch_timeout`.
    pub(super) async fn guarded<T, Fut>(
        &self,
        what: &str,
        op: impl Fn() -> Fut,
    ) -> (Result<T, Failure>, crate::infra::upstream::Report)
    where
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let note = |m: &str| self.log.line(m);
        artifact::guarded(&self.app, what, &note, op).await
    }

    /// Puts a verified artifact into `dir`: its tarballs unpacked safely, or (a container image) a note of
    /// the pinned image for the activate steps.
    pub(super) async fn materialise(&self, target: &Target, dir: &Path) -> Result<(), Failure> {
        let Some(art) = &target.artifact else {
            return Err(Failure::permanent("no artifact to unpack"));
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::permanent(format!("cannot create {}: {e}", dir.display())))?;
        if let Source::Image(img) = &self.app.source {
            if img.kind == crate::config::ImageKind::Container {
                let pinned = crate::sources::artifact::pinned_image(img, &target.sha);
                return std::fs::write(dir.join(".haul-image"), format!("{pinned}\n"))
                    .map_err(|e| Failure::permanent(format!("cannot write {}: {e}", dir.display())));
            }
        }
        // One budget for all the layers together: max_artifact_size is what the release may become.
        let mut limits = crate::sources::unpack::Limits {
            max_bytes: self.app.max_artifact_bytes,
            ..crate::sources::unpack::Limits::default()
        };
        for f in &art.files {
            let (f, dir2, limits2) = (f.clone(), dir.to_path_buf(), limits.clone());
            let unpacked = tokio::task::spawn_blocking(move || {
                let file = std::fs::File::open(&f)
                    .map_err(|e| crate::sources::unpack::UnpackError::Io(format!("{}: {e}", f.display())))?;
                crate::sources::unpack::unpack(std::io::BufReader::new(file), &dir2, &limits2)
            })
            .await
            .map_err(|e| Failure::permanent(format!("unpacking did not finish: {e}")))?
            .map_err(|e| {
                Failure::permanent(format!(
                    "the artifact {} was refused while unpacking: {e}",
                    art.digest
                ))
            })?;
            self.log.line(&format!(
                "    unpacked {} file(s), {} dir(s), {} link(s), {} bytes",
                unpacked.files, unpacked.dirs, unpacked.links, unpacked.bytes
            ));
            limits.max_bytes = limits.max_bytes.saturating_sub(unpacked.bytes);
            limits.max_entries = limits
                .max_entries
                .saturating_sub(unpacked.files + unpacked.dirs + unpacked.links);
        }
        Ok(())
    }
}
