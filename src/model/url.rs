//! URLs as haul shows them, and the one home of redaction.
//!
//! A repository, mirror, registry or download URL is configuration, and some carry a credential: the userinfo
//! of an `https://TOKEN@host/...` or `https://x-access-token:TOKEN@host/...` URL is a token. The user name of
//! an `ssh://git@host/...` or `git@host:path` URL is not (the key is the credential), and treating it as one
//! once replaced every "git" in every deploy log line with `***`. So a credential is removed where a URL
//! appears, *as a URL*: [`Shown`] is a URL whose `Display` cannot print its credentials, and [`redact`]
//! masks the userinfo of every non-SSH URL inside a line of text, plus the exact secrets a caller names
//! (credential files read for artifacts), never a word wherever it occurs.

use std::borrow::Cow;
use std::fmt;

/// The mask written where a credential was.
pub const MASK: &str = "***";

/// Is this repo URL one that goes over SSH (and so needs a deploy key and pinned host keys)?
pub(crate) fn is_ssh_url(repo: &str) -> bool {
    if repo.starts_with("ssh://") || repo.starts_with("git+ssh://") {
        return true;
    }
    // scp-like `user@host:path`: a colon before any slash, and not a URL scheme.
    if repo.contains("://") {
        return false;
    }
    match repo.find(':') {
        Some(i) => !repo[..i].contains('/'),
        None => false,
    }
}

/// The upstream a URL belongs to: `host[:port]`, or `local` for a path. Budgets, circuits and the
/// `haul_circuit_open` gauge are keyed by it.
pub(crate) fn upstream_key(url: &str) -> String {
    let rest = match url.split_once("://") {
        Some((_, rest)) => rest,
        None if is_ssh_url(url) => {
            return url
                .split(':')
                .next()
                .unwrap_or(url)
                .rsplit('@')
                .next()
                .unwrap_or(url)
                .to_string()
        }
        None => return "local".to_string(),
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    authority.rsplit('@').next().unwrap_or(authority).to_string()
}

fn is_ssh_scheme(scheme: &str) -> bool {
    scheme.eq_ignore_ascii_case("ssh") || scheme.eq_ignore_ascii_case("git+ssh")
}

/// A URL as people see it: credentials in the authority masked, the query (presigned signatures, tokens)
/// left out. `Shown(url).to_string()` is the only way haul puts a configured URL into a message.
#[derive(Clone, Copy)]
pub struct Shown<'a>(pub &'a str);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let masked = mask_userinfo(self.0);
        match masked.split_once('?') {
            Some((base, _)) => write!(f, "{base}?…"),
            None => f.write_str(&masked),
        }
    }
}

/// `url` as [`Shown`] displays it.
pub(crate) fn shown(url: &str) -> String {
    Shown(url).to_string()
}

/// Masks the userinfo credential of every non-SSH URL in `text` (`https://u:tok@h` -> `https://u:***@h`,
/// `https://tok@h` -> `https://***@h`), then every exact secret in `secrets`. Lines without `://` or a
/// secret are returned as they are, without a copy.
pub(crate) fn redact<'a>(text: &'a str, secrets: &[String]) -> Cow<'a, str> {
    let mut out = mask_userinfo(text);
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        if out.contains(s.as_str()) {
            out = Cow::Owned(out.replace(s.as_str(), MASK));
        }
    }
    out
}

fn mask_userinfo(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut changed = false;
    while let Some(i) = rest.find("://") {
        let scheme_start = rest[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |p| p + 1);
        let scheme = &rest[scheme_start..i];
        let after = &rest[i + 3..];
        let end = after
            .find(|c: char| {
                matches!(c, '/' | '?' | '#') || c.is_whitespace() || matches!(c, '\'' | '"' | '<' | '>' | '`')
            })
            .unwrap_or(after.len());
        let authority = &after[..end];
        out.push_str(&rest[..i + 3]);
        match authority.rfind('@') {
            Some(at) if !scheme.is_empty() && !is_ssh_scheme(scheme) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, pass)) if !pass.is_empty() => {
                        out.push_str(user);
                        out.push(':');
                    }
                    _ => {}
                }
                out.push_str(MASK);
                out.push_str(&authority[at..]);
                changed = true;
            }
            _ => out.push_str(authority),
        }
        rest = &after[end..];
    }
    if !changed {
        return Cow::Borrowed(text);
    }
    out.push_str(rest);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_kinds() {
        assert!(is_ssh_url("git@github.com:acme/blog.git"));
        assert!(is_ssh_url("ssh://git@127.0.0.1:2222/srv/x.git"));
        assert!(!is_ssh_url("https://github.com/acme/blog.git"));
        assert!(!is_ssh_url("/srv/git/blog.git"));
        assert!(!is_ssh_url("./a:b"));
    }

    #[test]
    fn url_credentials_are_redacted() {
        let s = shown("https://x-access-token:ghs_abc@github.com/a/b.git");
        assert!(!s.contains("ghs_abc") && s.contains("x-access-token:***@"), "{s}");
        let s = shown("https://ghp_tok@github.com/a/b.git");
        assert!(!s.contains("ghp_tok"), "{s}");
        assert_eq!(shown("git@github.com:a/b.git"), "git@github.com:a/b.git");
        assert_eq!(shown("ssh://root@h/x.git"), "ssh://root@h/x.git");
    }

    fn check(text: &str, secrets: &[&str], expected: &str) {
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        assert_eq!(redact(text, &secrets), expected, "redact({text:?})");
    }

    #[test]
    fn redaction_masks_urls_as_urls() {
        check("https://u:tok@h/x", &["tok"], "https://u:***@h/x");
        check("https://u:tok@h/x", &[], "https://u:***@h/x");
        check(
            "fatal: unable to access 'https://x-access-token:ghs_abc@github.com/a/b.git/': 403",
            &[],
            "fatal: unable to access 'https://x-access-token:***@github.com/a/b.git/': 403",
        );
        check(
            "fetch https://ghp_tok@github.com/a (branch main)",
            &[],
            "fetch https://***@github.com/a (branch main)",
        );
        check(
            "two http://a:b@h1 and https://c@h2/p",
            &[],
            "two http://a:***@h1 and https://***@h2/p",
        );
        check(
            "no url here, secret s3cr3t",
            &["s3cr3t"],
            "no url here, secret ***",
        );
        check(
            "https://github.com/acme/blog.git",
            &[],
            "https://github.com/acme/blog.git",
        );
    }

    /// Regression: an ssh:// user name was treated as a secret and replaced wherever it occurred, so every
    /// "git" in a deploy log became `***` and the actor `root` showed as `***`.
    #[test]
    fn regression_an_ssh_user_name_is_no_secret() {
        check(
            "==> fetch ssh://git@127.0.0.1:2222/srv/git/blog.git (branch main): git fetch",
            &[],
            "==> fetch ssh://git@127.0.0.1:2222/srv/git/blog.git (branch main): git fetch",
        );
        check(
            "deploy by root via ssh://root@h/x.git",
            &[],
            "deploy by root via ssh://root@h/x.git",
        );
        check(
            "git@github.com:acme/blog.git",
            &[],
            "git@github.com:acme/blog.git",
        );
        assert_eq!(shown("ssh://git@h/x.git"), "ssh://git@h/x.git");
    }

    #[test]
    fn shown_masks_credentials_and_drops_the_query() {
        assert_eq!(shown("https://tok@h/x?X-Amz-Signature=abc"), "https://***@h/x?…");
        assert_eq!(shown("https://u:p@h/x"), "https://u:***@h/x");
        assert_eq!(shown("https://h/x"), "https://h/x");
    }

    #[test]
    fn keys() {
        assert_eq!(upstream_key("git@github.com:acme/blog.git"), "github.com");
        assert_eq!(
            upstream_key("ssh://git@127.0.0.1:2222/srv/x.git"),
            "127.0.0.1:2222"
        );
        assert_eq!(
            upstream_key("https://x-access-token:t@github.com/a/b.git"),
            "github.com"
        );
        assert_eq!(upstream_key("/srv/git/blog.git"), "local");
    }
}
