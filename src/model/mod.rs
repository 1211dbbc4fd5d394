//! The vocabulary every layer shares: what a deploy request is, the states a deploy moves through, and the
//! validation of the untrusted strings (refs, shas, actors) that arrive in payloads.
//!
//! Everything that enters from outside is checked here once, so the layers below can treat a `DeployRequest`
//! as already safe to pass to `git` as an argument or to a step as an environment variable.

pub mod event;
pub mod failure;
pub mod url;

use std::fmt;

/// The correlation id of one deploy: minted at intake, it names the audit row, the log file and every log
/// line. Sortable by time (`20261126T153215-k3m9qz`), and safe as a file name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeployId(String);

impl DeployId {
    pub fn new(now_ms: i64) -> DeployId {
        DeployId::numbered(now_ms, fastrand::u64(..31u64.pow(6)))
    }

    /// The id whose suffix is `n` (modulo 31^6) written in 6 digits of an alphabet in ASCII order, so that
    /// within one second a larger `n` sorts later (the store mints ids in sequence).
    pub(crate) fn numbered(now_ms: i64, n: u64) -> DeployId {
        const ALPHABET: &[u8; 31] = b"23456789abcdefghjkmnpqrstuvwxyz";
        let mut suffix = [0u8; 6];
        let mut n = n % 31u64.pow(6);
        for c in suffix.iter_mut().rev() {
            *c = ALPHABET[(n % 31) as usize];
            n /= 31;
        }
        let suffix = std::str::from_utf8(&suffix).unwrap_or("222222");
        DeployId(format!("{}-{suffix}", compact_utc(now_ms)))
    }

    /// Accepts an id typed by a person (`haul logs <id>`), refusing anything that could escape the logs dir.
    pub fn parse(s: &str) -> Option<DeployId> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !s.starts_with('-');
        ok.then(|| DeployId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeployId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `20261126T153215` in UTC, for ids that sort by time.
pub(crate) fn compact_utc(now_ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(now_ms.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string(); // 2026-11-26T15:32:15Z
    s.chars().filter(|c| c.is_ascii_digit() || *c == 'T').collect()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What told haul to deploy. All of them enter the same queue and the same pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Webhook,
    Manual,
    Poll,
    /// `haul rollback`: switch back to a release already on disk.
    Rollback,
    /// A fleet rollout's assignment to this host: the release comes as a bundle through the engine.
    Fleet,
    /// `haul deploy --local` of a fleet app: this host alone, straight from the forge, past the fleet (the
    /// fallback when the engine is down); the host shows as diverged until the next fleet release.
    Local,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Webhook => "webhook",
            Trigger::Manual => "manual",
            Trigger::Poll => "poll",
            Trigger::Rollback => "rollback",
            Trigger::Fleet => "fleet",
            Trigger::Local => "local",
        }
    }
    pub fn parse(s: &str) -> Option<Trigger> {
        Some(match s {
            "webhook" => Trigger::Webhook,
            "manual" => Trigger::Manual,
            "poll" => Trigger::Poll,
            "rollback" => Trigger::Rollback,
            "fleet" => Trigger::Fleet,
            "local" => Trigger::Local,
            _ => return None,
        })
    }
}

/// A deploy's state. `Queued` and `Running` are transient; every other state is final.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Queued,
    Running,
    Succeeded,
    Failed,
    RolledBack,
    Superseded,
    Ignored,
    Interrupted,
    /// A fleet app's trigger handed to the fleet's engine: its rollout deploys it, on every host.
    Forwarded,
    /// An automatic trigger held (the app is paused, or outside its deploy windows): pending, coalesced
    /// with newer ones, and queued when it may run (`haul resume`, the window opening).
    Deferred,
    /// An automatic trigger of an app with `approve = true`, waiting for `haul approve` (coalesced to the
    /// newest).
    AwaitingApproval,
    /// Waited for an approval longer than `approve_within`: never deployed.
    Expired,
    /// `gate = "ci"`: waiting for the forge's signed word that CI passed on this commit.
    AwaitingCi,
    /// `gate = "ci"`: CI failed on this commit; never deployed.
    CiFailed,
}

impl State {
    pub const ALL: [State; 14] = [
        State::Queued,
        State::Running,
        State::Succeeded,
        State::Failed,
        State::RolledBack,
        State::Superseded,
        State::Ignored,
        State::Interrupted,
        State::Forwarded,
        State::Deferred,
        State::AwaitingApproval,
        State::Expired,
        State::AwaitingCi,
        State::CiFailed,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::RolledBack => "rolled_back",
            State::Superseded => "superseded",
            State::Ignored => "ignored",
            State::Interrupted => "interrupted",
            State::Forwarded => "forwarded",
            State::Deferred => "deferred",
            State::AwaitingApproval => "awaiting_approval",
            State::Expired => "expired",
            State::AwaitingCi => "awaiting_ci",
            State::CiFailed => "ci_failed",
        }
    }
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|st| st.as_str() == s)
    }
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            State::Queued | State::Running | State::Deferred | State::AwaitingApproval | State::AwaitingCi
        )
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request to deploy an app, from any trigger, already validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployRequest {
    pub app: String,
    pub trigger: Trigger,
    /// The webhook provider that sent it (`github`, ...), for the audit.
    pub provider: Option<String>,
    /// The provider's delivery id, used to refuse replays.
    pub delivery_id: Option<String>,
    /// Full ref name (`refs/heads/main`).
    pub git_ref: Option<String>,
    /// A full sha from a webhook, a prefix from `haul deploy --sha`, or none for "the branch tip".
    pub sha: Option<String>,
    pub actor: String,
    /// For a rollback: the release id or sha asked for (none: the release before the live one).
    pub target: Option<String>,
    /// For an artifact: the content digest (`sha256:<hex>`) the trigger pinned; what is downloaded must match.
    pub digest: Option<String>,
    /// For a push: the full sha the branch pointed at before it (the payload's `before`), when the forge says.
    /// It orders requests without a fetch: a push whose parent is a pending request's sha is newer than it.
    pub parent: Option<String>,
    /// The sha256 of the verified body, for forges that sign the body but not the delivery id: the same body
    /// again under a fresh delivery id is a replay.
    pub body_digest: Option<[u8; 32]>,
    /// For a fleet app's webhook: the signed delivery as it came (the body and the headers that carry its
    /// signature, never a shared token), so every host can check the forge's signature with its own secret.
    pub signed: Option<SignedDelivery>,
}

/// A forge's signed delivery, kept so that another host can verify it again: the raw body and the headers
/// the signature check reads (`intake::CARRIED_HEADERS`). A shared token sent in clear (GitLab's
/// `X-Gitlab-Token`) is never among them: it is the secret itself, and it never leaves the host it came to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignedDelivery {
    pub headers: Vec<(String, String)>,
    /// The body, base64 (standard alphabet).
    pub body: String,
}

impl SignedDelivery {
    pub fn new(headers: Vec<(String, String)>, body: &[u8]) -> SignedDelivery {
        use base64::Engine;
        SignedDelivery {
            headers,
            body: base64::engine::general_purpose::STANDARD.encode(body),
        }
    }
    /// The raw body; `None` if what is stored is not base64 (a tampered record).
    pub fn body_bytes(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(&self.body).ok()
    }
}

impl DeployRequest {
    /// The one constructor: every trigger starts here with what it always knows (the app, how, who), and
    /// names the rest with the setters below.
    pub fn new(app: impl Into<String>, trigger: Trigger, actor: impl Into<String>) -> DeployRequest {
        DeployRequest {
            app: app.into(),
            trigger,
            provider: None,
            delivery_id: None,
            git_ref: None,
            sha: None,
            actor: actor.into(),
            target: None,
            digest: None,
            parent: None,
            body_digest: None,
            signed: None,
        }
    }
    /// The webhook provider that sent it and its delivery id.
    pub(crate) fn sent_by(
        mut self,
        provider: impl Into<String>,
        delivery_id: Option<String>,
    ) -> DeployRequest {
        self.provider = Some(provider.into());
        self.delivery_id = delivery_id;
        self
    }
    pub(crate) fn at_ref(mut self, git_ref: Option<String>) -> DeployRequest {
        self.git_ref = git_ref;
        self
    }
    pub(crate) fn with_sha(mut self, sha: Option<String>) -> DeployRequest {
        self.sha = sha;
        self
    }
    pub(crate) fn with_target(mut self, target: Option<String>) -> DeployRequest {
        self.target = target;
        self
    }
    pub(crate) fn with_digest(mut self, digest: Option<String>) -> DeployRequest {
        self.digest = digest;
        self
    }
    /// The sha this push moved the branch from (validated: a full sha or none).
    pub(crate) fn after_parent(mut self, parent: Option<String>) -> DeployRequest {
        self.parent = parent;
        self
    }
    pub(crate) fn with_body_digest(mut self, digest: Option<[u8; 32]>) -> DeployRequest {
        self.body_digest = digest;
        self
    }
    pub(crate) fn with_signed(mut self, signed: Option<SignedDelivery>) -> DeployRequest {
        self.signed = signed;
        self
    }
}

/// How a deploy ended, and the facts it leaves in the audit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub state: State,
    /// One line a person can act on.
    pub reason: String,
    pub sha: Option<String>,
    pub release_id: Option<String>,
    pub previous_sha: Option<String>,
    /// For an artifact: the digest (`sha256:<hex>`) of what was downloaded and verified.
    pub digest: Option<String>,
    /// A succeeded deploy whose `after` step failed (the release stays live): which, and why.
    pub after_failed: Option<String>,
}

impl Outcome {
    pub fn new(state: State, reason: impl Into<String>) -> Outcome {
        Outcome {
            state,
            reason: reason.into(),
            sha: None,
            release_id: None,
            previous_sha: None,
            digest: None,
            after_failed: None,
        }
    }
}

/// The first 7 characters of a sha, as people read them.
pub fn short_sha(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

/// "12s ago", "5m ago", "3h ago", "2d ago" for an age in milliseconds.
pub(crate) fn age(ms: i64) -> String {
    let s = (ms / 1000).max(0);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// 40 (SHA-1) or 64 (SHA-256) lowercase hex digits.
pub fn is_full_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `sha256:<64 lowercase hex>`: the only digest form haul accepts from a trigger.
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// An OCI tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}` (the distribution spec's grammar; it goes into a URL path).
pub(crate) fn is_oci_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// An abbreviated sha a person may type: 4 to 64 hex digits (either case).
pub(crate) fn is_sha_prefix(s: &str) -> bool {
    (4..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The all-zero sha a forge sends as `after` when a ref is deleted.
pub(crate) fn is_zero_sha(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b == b'0')
}

/// Unicode general category Cf ("format"), as ranges: the characters that are not drawn but change how the
/// text around them is drawn or read (bidi embeddings, overrides and isolates, zero-width spaces and joiners,
/// the soft hyphen, the BOM, invisible operators, tags). Taken from the Unicode Character Database 16.0.0,
/// `extracted/DerivedGeneralCategory.txt` (every `; Cf` line), which is also regex-syntax's `FORMAT` table.
const FORMAT_CHARS: [(char, char); 21] = [
    ('\u{ad}', '\u{ad}'),
    ('\u{600}', '\u{605}'),
    ('\u{61c}', '\u{61c}'),
    ('\u{6dd}', '\u{6dd}'),
    ('\u{70f}', '\u{70f}'),
    ('\u{890}', '\u{891}'),
    ('\u{8e2}', '\u{8e2}'),
    ('\u{180e}', '\u{180e}'),
    ('\u{200b}', '\u{200f}'),
    ('\u{202a}', '\u{202e}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206f}'),
    ('\u{feff}', '\u{feff}'),
    ('\u{fff9}', '\u{fffb}'),
    ('\u{110bd}', '\u{110bd}'),
    ('\u{110cd}', '\u{110cd}'),
    ('\u{13430}', '\u{1343f}'),
    ('\u{1bca0}', '\u{1bca3}'),
    ('\u{1d173}', '\u{1d17a}'),
    ('\u{e0001}', '\u{e0001}'),
    ('\u{e0020}', '\u{e007f}'),
];

/// A character that must never reach the audit, the page, a log line or `HAUL_ACTOR` from a payload: a
/// control character (C0, DEL, C1), a format character (Cf, above: what a "Trojan Source" name hides
/// behind), or the line and paragraph separators U+2028 and U+2029, which end a line where a reader does
/// not expect one.
pub(crate) fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}')
        || FORMAT_CHARS.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

/// `git check-ref-format` rules for a full ref name, plus the ones that keep it from ever being read as an
/// option or shown as something it is not: nothing starting with `-`, no empty component, a bounded
/// length, no control or format character anywhere (git allows a C1 control or a right-to-left override in
/// a ref; haul does not).
pub fn is_valid_ref(r: &str) -> bool {
    if r.is_empty() || r.len() > 255 || r.starts_with('-') || r == "@" {
        return false;
    }
    if r.ends_with('/') || r.ends_with('.') || r.contains("..") || r.contains("@{") || r.contains("//") {
        return false;
    }
    if r.bytes().any(|b| b" ~^:?*[\\".contains(&b)) || r.chars().any(is_hidden) {
        return false;
    }
    r.split('/')
        .all(|c| !c.is_empty() && !c.starts_with('.') && !c.ends_with(".lock") && !c.starts_with('-'))
}

/// A branch name as configured (`main`, `release/2.x`).
pub(crate) fn is_valid_branch(b: &str) -> bool {
    !b.starts_with("refs/") && is_valid_ref(&format!("refs/heads/{b}"))
}

/// Who is named in the audit, on the page and in `HAUL_ACTOR`: no control or format character (those are
/// dropped, see [`is_hidden`]), bounded, never empty.
pub(crate) fn clean_actor(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .filter(|c| !is_hidden(*c))
        .take(100)
        .collect::<String>()
        .trim()
        .to_string();
    if cleaned.is_empty() {
        "unknown".to_string()
    } else {
        cleaned
    }
}

/// What `haul rollback --to` accepts: a release id (`20261126T153215-1a2b3c4`) or a sha prefix.
pub(crate) fn is_valid_release_ref(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 80
        && !s.starts_with(['-', '.'])
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
}

/// A delivery id is stored and echoed back; keep it to a sane alphabet and length.
pub(crate) fn is_valid_delivery_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_follow_check_ref_format() {
        let cases = [
            ("refs/heads/main", true),
            ("refs/heads/release/2.x", true),
            ("refs/tags/v1.2.3", true),
            ("refs/heads/-rf", false),
            ("-refs/heads/main", false),
            ("refs/heads/a..b", false),
            ("refs/heads/a b", false),
            ("refs/heads/a~1", false),
            ("refs/heads/a^", false),
            ("refs/heads/a:b", false),
            ("refs/heads/a?", false),
            ("refs/heads/a*", false),
            ("refs/heads/a[", false),
            ("refs/heads/a\\b", false),
            ("refs/heads/.hidden", false),
            ("refs/heads/x.lock", false),
            ("refs/heads/x/", false),
            ("refs/heads/x.", false),
            ("refs/heads//x", false),
            ("refs/heads/a@{1}", false),
            ("refs/heads/\u{7f}", false),
            ("refs/heads/a\nb", false),
            ("@", false),
            ("", false),
        ];
        for (r, want) in cases {
            assert_eq!(is_valid_ref(r), want, "{r:?}");
        }
    }

    #[test]
    fn shas() {
        assert!(is_full_sha(&"a".repeat(40)));
        assert!(is_full_sha(&"0".repeat(64)));
        assert!(!is_full_sha(&"A".repeat(40)));
        assert!(!is_full_sha(&"a".repeat(41)));
        assert!(!is_full_sha("--upload-pack=x"));
        assert!(is_sha_prefix("1a2B3c4"));
        assert!(!is_sha_prefix("abc"));
        assert!(!is_sha_prefix("-abcd"));
        assert!(is_zero_sha(&"0".repeat(40)));
    }

    #[test]
    fn deploy_ids_are_safe_file_names() {
        let id = DeployId::new(1_764_171_135_000);
        assert!(id.as_str().starts_with("20251126T"), "{id}");
        assert_eq!(DeployId::parse(id.as_str()), Some(id));
        for bad in ["../x", "a/b", "", "-x", "a b"] {
            assert!(DeployId::parse(bad).is_none(), "{bad}");
        }
    }

    /// The characters a name or a ref could hide behind: every kind issue 12 names, plus a C1 control and
    /// two of the rarer format characters.
    const HIDDEN: &[(&str, &[char])] = &[
        (
            "bidi embeddings and overrides",
            &['\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}'],
        ),
        ("bidi isolates", &['\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}']),
        (
            "zero-width spaces, joiners, marks",
            &['\u{200b}', '\u{200c}', '\u{200d}', '\u{200e}', '\u{200f}'],
        ),
        ("line and paragraph separators", &['\u{2028}', '\u{2029}']),
        ("BOM, soft hyphen", &['\u{feff}', '\u{ad}']),
        (
            "Arabic letter mark, word joiner, invisible plus",
            &['\u{61c}', '\u{2060}', '\u{2064}'],
        ),
        ("C1 control (next line)", &['\u{85}']),
        ("tag, musical format", &['\u{e0041}', '\u{1d173}']),
    ];

    /// Regression: `is_valid_ref` let any non-ASCII byte through, so a ref could carry a right-to-left
    /// override or a zero-width space into the audit and the page; `clean_actor` dropped only control
    /// characters, so an actor could too (and so into `HAUL_ACTOR`).
    #[test]
    fn regression_refs_and_actors_carried_bidi_and_format_characters() {
        fn check(kind: &str, c: char) {
            let r = format!("refs/heads/ma{c}in");
            assert!(!is_valid_ref(&r), "{kind}: {r:?} is refused");
            assert!(!is_valid_branch(&format!("ma{c}in")), "{kind}: branch {c:?}");
            assert_eq!(
                clean_actor(&format!("octo{c}cat")),
                "octocat",
                "{kind}: {c:?} is dropped"
            );
            assert_eq!(clean_actor(&format!("{c}")), "unknown", "{kind}: {c:?} alone");
        }
        for (kind, chars) in HIDDEN {
            for &c in *chars {
                check(kind, c);
            }
        }
        // Every character of the table, not only the ones named above.
        for &(lo, hi) in &FORMAT_CHARS {
            for c in lo..=hi {
                check("Cf", c);
            }
        }
        // What stays: letters, marks and symbols of every script.
        for ok in ["refs/heads/café", "refs/tags/v1-日本", "refs/heads/żółw/ñ"] {
            assert!(is_valid_ref(ok), "{ok:?}");
        }
        for ok in ["José Ñandú", "李雷", "Zoë 🚀"] {
            assert_eq!(clean_actor(ok), ok);
        }
    }

    /// The table is UCD 16.0.0's Cf, whole: 170 characters in ascending, disjoint ranges.
    #[test]
    fn the_format_table_is_sorted_and_complete() {
        let count: u32 = FORMAT_CHARS
            .iter()
            .map(|&(lo, hi)| u32::from(hi) - u32::from(lo) + 1)
            .sum();
        assert_eq!(count, 170);
        assert!(FORMAT_CHARS.windows(2).all(|w| w[0].1 < w[1].0));
        assert!(FORMAT_CHARS.iter().all(|&(lo, hi)| lo <= hi));
    }

    #[test]
    fn actors_are_cleaned() {
        assert_eq!(clean_actor("octocat"), "octocat");
        assert_eq!(clean_actor("a\u{1b}[31mb\n"), "a[31mb");
        assert_eq!(clean_actor("  "), "unknown");
        assert_eq!(clean_actor(&"x".repeat(500)).len(), 100);
    }
}
