//! The command line's definition: every command, flag and help text, in one clap derive. Parsing, the man
//! page and the completions are all generated from it, so none can drift from another.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config;

#[derive(Parser, Debug)]
#[command(
    name = "haul",
    version,
    about = "A pull-based deploy agent: production pulls, signed triggers, atomic releases, an audit trail."
)]
pub struct Cli {
    /// The configuration file.
    #[arg(long, global = true, env = "HAUL_CONFIG", default_value = config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: webhooks, control socket, one deploy worker per app.
    Serve,
    /// Deploy an app now (through the daemon if it runs, in-process otherwise).
    Deploy {
        app: String,
        /// A commit on the configured branch (default: the branch tip).
        #[arg(long)]
        sha: Option<String>,
        /// A fleet app: deploy this host alone, straight from the forge, past the fleet (when the engine is
        /// down); the host shows as diverged until the next fleet release.
        #[arg(long)]
        local: bool,
        /// Deploy although the app's deploy window is closed (the audit names who did).
        #[arg(long)]
        override_window: bool,
        /// Queue it and print the deploy id without following the log.
        #[arg(long)]
        no_follow: bool,
    },
    /// Put an earlier release back (default: the one before the live one), with the same lock, audit and
    /// activate steps as a deploy.
    Rollback {
        app: String,
        /// A release id (see `haul status` / `haul history`) or a commit sha.
        #[arg(long)]
        to: Option<String>,
        /// Queue it and print the deploy id without following the log.
        #[arg(long)]
        no_follow: bool,
    },
    /// Hold APP's automatic triggers (webhooks, polls): recorded `deferred`, coalesced to the newest, and
    /// run on `haul resume`. `haul deploy` still deploys.
    Pause {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        app: Option<String>,
        /// Every app.
        #[arg(long)]
        all: bool,
        /// Why, for the status, the page and the notifications.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a pause: the newest deferred request of each app it held runs.
    Resume {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        app: Option<String>,
        /// The pause on every app (`haul pause --all`).
        #[arg(long)]
        all: bool,
    },
    /// Deploy the newest request of APP awaiting approval (`approve = true`); the audit names you.
    Approve { app: String },
    /// Drop every request of APP awaiting approval (recorded `ignored`, rejected by you).
    Reject { app: String },
    /// Every app: live release, sha, last outcome and its age, queue.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The audit log, newest first.
    History {
        app: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// One deploy's log.
    Logs {
        deploy_id: String,
        /// The audit row and the log lines as JSON.
        #[arg(long, conflicts_with = "follow")]
        json: bool,
        /// Keep printing until the deploy finishes.
        #[arg(long, short)]
        follow: bool,
    },
    /// Validate the configuration, keys and secrets without starting anything.
    Check,
    /// Print a systemd unit for this configuration (Type=notify, watchdog, hardening).
    SystemdUnit {
        /// The user (and group) to run as.
        #[arg(long)]
        user: Option<String>,
        /// The haul binary's installed path (default: this binary).
        #[arg(long)]
        exe: Option<PathBuf>,
        /// The Debian package's unit: /usr/bin/haul, /etc/haul/haul.toml, user haul, writable
        /// /var/lib/haul and /srv (no configuration needed).
        #[arg(long, conflicts_with_all = ["user", "exe"])]
        package: bool,
    },
    /// Set up a new app on this server: deploy key, webhook secret, config; prints what to paste where.
    Init(Box<InitArgs>),
    /// The fleet (with `[fleet]`): each fleet app's conductor and rollout, and every host's live release.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `haul man | man -l -`.
    Man,
    /// A self-contained demo: a throw-away repo and config, a signed webhook, a release landing.
    Demo {
        /// Port for the demo daemon (default: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Exit after the first deploy instead of serving until Ctrl-C.
        #[arg(long)]
        once: bool,
        /// A fleet on loopback instead: a 3-node NATS JetStream engine (needs `nats-server` 2.11+ on PATH)
        /// and N hosts (2 to 20), one push rolled out across them.
        #[arg(long, value_name = "N", conflicts_with = "port")]
        fleet: Option<usize>,
    },
}

#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    /// Every fleet app (or APP): its rollout and conductor, and each host's live release, phase, last
    /// outcome and heartbeat age, read from the engine.
    Status {
        app: Option<String>,
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Redraw every second (the waves as they move) until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
    /// Deploy APP across the fleet (default: the branch tip): handed to the fleet through this host's
    /// running daemon, like a webhook; followed until the fleet has it.
    Deploy {
        app: String,
        /// A commit on the configured branch.
        #[arg(long)]
        sha: Option<String>,
        /// Print the deploy id without following it.
        #[arg(long)]
        no_follow: bool,
    },
    /// Stop APP's rollout where it is: no further wave starts; what is live stays.
    Abort { app: String },
    /// Continue APP's halted rollout from the wave it halted in (after fixing what failed).
    Resume { app: String },
    /// Roll the fleet back to APP's release before the current rollout, in waves like any release;
    /// webhooks and polls then skip what it took away until a new commit arrives.
    Rollback {
        app: String,
        /// Hand it to the conductor without following the rollout.
        #[arg(long)]
        no_follow: bool,
    },
}

/// `haul init`'s arguments.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The app's name (letters, digits, '-', '_', '.'); its webhook URL is /hooks/APP.
    pub app: String,
    /// The repository, e.g. git@github.com:acme/blog.git.
    #[arg(long, group = "source")]
    pub repo: Option<String>,
    #[command(flatten)]
    pub artifact: super::init_source::ArtifactArgs,
    /// The only branch deployed.
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// The app's directory: releases/ and the `current` symlink [default: /srv/APP].
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// Where the deploy key goes, as KEYS_DIR/APP [default: <config dir>/keys].
    #[arg(long)]
    pub keys_dir: Option<PathBuf>,
    /// Where the webhook secret goes, as SECRETS_DIR/APP [default: <config dir>/secrets].
    #[arg(long)]
    pub secrets_dir: Option<PathBuf>,
    /// haul's state directory (used only when a new config is written).
    #[arg(long, default_value = "/var/lib/haul")]
    pub state_dir: PathBuf,
    /// The address your forge reaches haul at (through your TLS proxy), e.g. https://deploy.example.com.
    #[arg(long)]
    pub public_url: String,
    /// How webhooks are signed [default: github; for an artifact: standard].
    #[arg(long,
          value_parser = ["github", "gitlab", "gitea", "forgejo", "bitbucket", "standard", "distribution"])]
    pub provider: Option<String>,
}
