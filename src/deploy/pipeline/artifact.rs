//! The front of an artifact deploy: resolve what the trigger names (an image tag's digest by one `HEAD`),
//! skip what is already live, download into the deploy's private directory and verify it, then (after the
//! release id is recorded) unpack it safely into the release directory.

use super::*;
use crate::sources::artifact::{self, Fetched, Resolved, Wanted};

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
        let started = Instant::now();
        let wanted = self.wanted(job).map_err(|why| Outcome::new(State::Failed, why))?;
        self.log.stage(&format!("resolve {}", self.app.repo));
        let (resolved, report) = self
            .guarded("resolving", || artifact::resolve(&self.app, &wanted))
            .await;
        let mut resolved = resolved.map_err(|f| failed("resolve failed", f))?;
        if matches!(self.app.source, Source::Image(_)) {
            self.image_moves_forward(job, previous, &wanted, &mut resolved)
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
        let sha = self.audit_sha(&wanted, &fetched);
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

    /// Which version the trigger names: an image's tag or pinned digest, a templated location's `{sha}`.
    /// An error is why the deploy fails.
    fn wanted(&self, job: &Job) -> Result<Wanted, String> {
        let is_image = matches!(self.app.source, Source::Image(_));
        let wanted = Wanted {
            tag: job
                .git_ref
                .as_deref()
                .and_then(|r| r.strip_prefix("refs/tags/"))
                .map(String::from),
            version: if is_image { None } else { job.sha.clone() },
            digest: match (is_image, &job.sha, &job.digest) {
                (true, Some(sha), _) if model::is_full_sha(sha) && sha.len() == 64 => {
                    Some(format!("sha256:{sha}"))
                }
                (_, _, d) => d.clone(),
            },
        };
        if let (true, Some(s)) = (is_image, &job.sha) {
            if wanted.digest.is_none() {
                return Err(format!("{s:?} is not a manifest digest: an image is deployed by its full sha256 (64 hex digits), or by its tag"));
            }
        }
        Ok(wanted)
    }

    /// An error is why the trigger is ignored. An image never goes back on an automatic trigger: not to an older tag than the live one (a tag
    /// glob), not to a digest the tag no longer points at, and what is live already is not pulled again. A
    /// person may deploy any digest of the repository (`resolved` then takes the pinned one).
    fn image_moves_forward(
        &self,
        job: &Job,
        previous: &Previous,
        wanted: &Wanted,
        resolved: &mut Resolved,
    ) -> Result<(), String> {
        let automatic = is_automatic(job);
        let live_tag = previous
            .git_ref
            .as_deref()
            .and_then(|r| r.strip_prefix("refs/tags/"));
        if let (true, true, Some(live)) = (automatic, self.app.track.is_glob(), live_tag) {
            if crate::sources::git::version_cmp(&resolved.name, live).is_lt() {
                return Err(format!(
                        "tag {} is older than the live {live}: a replayed or out-of-order trigger; nothing deployed",
                        resolved.name
                    ));
            }
        }
        let current = resolved.digest.clone().unwrap_or_default();
        match &wanted.digest {
            // A trigger's digest must still be what the tag points at: an old delivery never rolls back.
            Some(pinned) if *pinned != current && automatic => {
                return Err(format!(
                        "the trigger named {pinned}, but tag {} now points at {current}: a replayed or out-of-order trigger; nothing deployed",
                        resolved.name
                    ))
            }
            Some(pinned) => resolved.digest = Some(pinned.clone()),
            None => {}
        }
        let hex = resolved
            .digest
            .as_deref()
            .map(|d| d.trim_start_matches("sha256:").to_string());
        if automatic && hex.is_some() && hex == previous.sha {
            return Err(format!(
                "{} is already live as {}; nothing downloaded",
                resolved.location,
                previous.release_id.as_deref().unwrap_or("")
            ));
        }
        Ok(())
    }

    /// What the audit calls the sha: the digest, unless a templated location is named by a version.
    fn audit_sha(&self, wanted: &Wanted, fetched: &Fetched) -> String {
        let hex = fetched.digest.trim_start_matches("sha256:").to_string();
        if !matches!(self.app.source, Source::Image(_)) && self.app.source.is_templated() {
            wanted
                .version
                .clone()
                .map(|v| v.to_ascii_lowercase())
                .unwrap_or(hex)
        } else {
            hex
        }
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
        crate::infra::upstream::guarded(
            &self.app.upstream(),
            self.app.max_fetches_per_minute,
            self.app.fetch_attempts,
            &note,
            || crate::sources::artifact::within(self.app.fetch_timeout, what, op()),
        )
        .await
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
