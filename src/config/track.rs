//! What an app deploys: the tip of a branch, the newest git tag matching a glob, or an image tag.
//!
//! A git app names a `branch` or a `tags` glob; an image app names its `tag` (a glob too). The two keys are
//! kept apart so a config that mixes them up is refused instead of quietly following the wrong thing.

use super::raw::RawApp;
use super::Source;
use crate::model;

/// What an app deploys: the tip of one branch, or the newest tag matching a glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Track {
    Branch(String),
    Tags(String),
}

impl Track {
    /// Does a full ref name select this app's deploys?
    pub fn wants(&self, git_ref: &str) -> bool {
        match self {
            Track::Branch(b) => git_ref.strip_prefix("refs/heads/") == Some(b.as_str()),
            Track::Tags(glob) => git_ref
                .strip_prefix("refs/tags/")
                .is_some_and(|t| glob_match(glob, t)),
        }
    }
    /// A tag glob with wildcards (not one fixed tag).
    pub(crate) fn is_glob(&self) -> bool {
        matches!(self, Track::Tags(g) if g.contains(['*', '?']))
    }
    pub(crate) fn describe(&self) -> String {
        match self {
            Track::Branch(b) => format!("branch {b}"),
            Track::Tags(g) => format!("tags matching {g}"),
        }
    }
}

/// A monorepo app's `paths`: does `file` (a path from the repository root) match one of them? `**` matches
/// any run of directories (`services/blog/**`, `**/*.proto`), `*` and `?` stay within one path segment, and a
/// pattern without wildcards also matches everything under it (`libs/shared` as `libs/shared/**`).
pub fn paths_match(patterns: &[String], file: &str) -> bool {
    patterns.iter().any(|p| {
        let p = p.trim_end_matches('/');
        let plain = !p.contains(['*', '?']);
        path_glob(p.as_bytes(), file.as_bytes())
            || (plain && file.strip_prefix(p).is_some_and(|rest| rest.starts_with('/')))
    })
}

fn path_glob(p: &[u8], t: &[u8]) -> bool {
    if p.is_empty() {
        return t.is_empty();
    }
    if let Some(rest) = p.strip_prefix(b"**") {
        let rest = rest.strip_prefix(b"/").unwrap_or(rest);
        return (0..=t.len())
            .any(|i| (i == 0 || t[i - 1] == b'/' || rest.is_empty()) && path_glob(rest, &t[i..]));
    }
    match p[0] {
        b'*' => {
            for i in 0..=t.len() {
                if path_glob(&p[1..], &t[i..]) {
                    return true;
                }
                if i < t.len() && t[i] == b'/' {
                    break;
                }
            }
            false
        }
        b'?' => !t.is_empty() && t[0] != b'/' && path_glob(&p[1..], &t[1..]),
        c => !t.is_empty() && t[0] == c && path_glob(&p[1..], &t[1..]),
    }
}

/// Shell-style glob with `*` (any run of characters) and `?` (one character), as `git for-each-ref` uses.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// A git app's `branch`, or its `tags` glob when one is given.
pub(crate) fn git_track(a: &RawApp) -> Result<Track, String> {
    if !model::is_valid_branch(&a.branch) {
        return Err(format!("branch {:?} is not a valid branch name", a.branch));
    }
    let Some(glob) = &a.tags else {
        return Ok(Track::Branch(a.branch.clone()));
    };
    let probe = glob.replace(['*', '?'], "x");
    if glob.is_empty() || !model::is_valid_ref(&format!("refs/tags/{probe}")) || glob.contains('/') {
        return Err(format!("tags {glob:?} is not a tag glob like \"v*\""));
    }
    Ok(Track::Tags(glob.clone()))
}

/// The track once the source is known: an image follows its `tag` (`latest` when unset) instead of `git`.
pub(crate) fn for_source(a: &RawApp, source: &Source, git: Track) -> Result<Track, String> {
    let track = match (source, &a.tag) {
        (Source::Image(_), Some(glob)) => {
            if !is_tag_glob(glob) || !model::is_oci_tag(&glob.replace(['*', '?'], "x")) {
                return Err(format!(
                    "tag {glob:?} is not an image tag or a tag glob like \"v*\""
                ));
            }
            Track::Tags(glob.clone())
        }
        (Source::Image(_), None) => Track::Tags("latest".into()),
        (_, Some(_)) => return Err("`tag` goes with `image`; a git app uses `tags`".into()),
        _ => git,
    };
    if source.is_artifact() && a.tags.is_some() {
        return Err("`tags` is for git apps; an image app names its tag (or glob) in `tag`".into());
    }
    Ok(track)
}

/// A glob is checked as the tag it would be with its wildcards read as letters; 128 is the OCI tag limit.
fn is_tag_glob(glob: &str) -> bool {
    let probe = glob.replace(['*', '?'], "x");
    !glob.is_empty()
        && glob.len() <= 128
        && model::is_valid_ref(&format!("refs/tags/{probe}"))
        && !glob.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monorepo_paths() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let blog = p(&["services/blog/**", "libs/shared"]);
        assert!(paths_match(&blog, "services/blog/src/main.rs"));
        assert!(paths_match(&blog, "libs/shared/x.go"));
        assert!(!paths_match(&blog, "libs/shared2/x.go"));
        assert!(!paths_match(&blog, "services/shop/main.rs"));
        assert!(!paths_match(&blog, "services/blogger/main.rs"));
        let protos = p(&["**/*.proto", "docs/*.md"]);
        assert!(paths_match(&protos, "api/v1/user.proto"));
        assert!(paths_match(&protos, "user.proto"));
        assert!(paths_match(&protos, "docs/index.md"));
        assert!(
            !paths_match(&protos, "docs/deep/index.md"),
            "* stays in one segment"
        );
        assert!(!paths_match(&protos, "api/v1/user.proto.bak"));
    }

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("v*", "v1.2.3", true),
            ("v*", "release-1", false),
            ("v?.*", "v1.0", true),
            ("*", "", true),
            ("v*-rc*", "v2-rc1", true),
            ("v*-rc*", "v2", false),
            ("release", "release", true),
        ] {
            assert_eq!(glob_match(p, t), want, "{p} {t}");
        }
    }
}
