//! Shell completions and the man page, generated from the same clap definition that parses the command line,
//! so neither can drift from what `haul` actually accepts. Packagers run `haul completions bash` and
//! `haul man` at build time; nothing here runs in the daemon.

use std::io::{self, Write};

use clap::CommandFactory;
use clap_mangen::roff::{roman, Roff};
use clap_mangen::Man;

use crate::cli::args::Cli;

/// The command as packagers see it: no `help` pseudo-subcommand (every command takes `--help` already).
fn command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Writes the completion script for `shell`.
pub(crate) fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> io::Result<()> {
    // clap_complete panics on a write error; render into memory, where writing cannot fail, and report the
    // real writer's errors (a closed pipe) as errors.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command(), "haul", &mut script);
    out.write_all(&script)
}

/// Writes `haul(1)`: one page, with every subcommand as a subsection of COMMANDS, so `man -l haul.1` (or
/// `haul man | man -l -`) shows everything and no page points at a `haul-deploy(1)` nobody installed.
pub(crate) fn man_page(out: &mut dyn Write) -> io::Result<()> {
    let cmd = command();
    let man = Man::new(cmd.clone());
    // Each clap_mangen piece is rendered on its own; they are assembled in memory, then cleaned up below.
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;

    Roff::new().control("SH", ["COMMANDS"]).to_writer(&mut page)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_bin_name().unwrap_or_else(|| sub.get_name());
        Roff::new().control("SS", [name]).to_writer(&mut page)?;
        // The subcommand's own synopsis, description and options, its `.SH` headings turned into paragraph
        // breaks so they read as one block under the subsection. `--config` and `--help` are documented once,
        // above, rather than under every command.
        let own = sub.clone().mut_args(|a| {
            let shared = a.is_global_set() || a.get_id() == "help";
            if shared {
                a.hide(true)
            } else {
                a
            }
        });
        let sub_man = Man::new(own.clone());
        let mut body = Vec::new();
        sub_man.render_synopsis_section(&mut body)?;
        sub_man.render_description_section(&mut body)?;
        if own.get_arguments().any(|a| !a.is_hide_set()) {
            sub_man.render_options_section(&mut body)?;
        }
        for line in body.split_inclusive(|b| *b == b'\n') {
            page.extend_from_slice(if line.starts_with(b".SH") { b".PP\n" } else { line });
        }
    }

    Roff::new()
        .control("SH", ["EXIT STATUS"])
        .text([roman(
            "0: success. 1: the operation (or the deploy) failed. 2: the command line or the configuration is wrong.",
        )])
        .control("SH", ["ENVIRONMENT"])
        .control("TP", [])
        .text([roman("HAUL_CONFIG")])
        .text([roman("The configuration file, when --config is not given.")])
        .control("TP", [])
        .text([roman("HAUL_LOG")])
        .text([roman("The daemon's log level: debug, info (the default), warn or error.")])
        .to_writer(&mut page)?;
    man.render_version_section(&mut page)?;

    // Every rendered piece starts with roff's two-line apostrophe preamble (`.ie ...` / `.el ...`); the
    // page needs it once, before the title.
    let mut seen = std::collections::HashSet::new();
    for line in page.split_inclusive(|b| *b == b'\n') {
        let conditional = line.starts_with(b".ie ") || line.starts_with(b".el ");
        if !conditional || seen.insert(line) {
            out.write_all(line)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bash_completions_name_every_subcommand() {
        let mut out = Vec::new();
        completions(clap_complete::Shell::Bash, &mut out).expect("renders");
        let script = String::from_utf8(out).expect("utf-8");
        assert!(script.contains("haul"));
        for sub in command().get_subcommands() {
            assert!(
                script.contains(sub.get_name()),
                "no {} in the completions",
                sub.get_name()
            );
        }
    }

    #[test]
    fn man_page_has_a_title_and_every_subcommand() {
        let mut out = Vec::new();
        man_page(&mut out).expect("renders");
        let page = String::from_utf8(out).expect("utf-8");
        assert_eq!(page.matches("\n.TH ").count(), 1, "one page, one title: {page}");
        for sub in command().get_subcommands() {
            let heading = format!(".SS \"haul {}\"", sub.get_name());
            assert!(page.contains(&heading), "no {heading} in the man page");
        }
        assert!(
            !page.contains("haul\\-deploy(1)"),
            "points at pages that are not installed"
        );
    }

    #[test]
    fn a_closed_pipe_is_an_error_not_a_panic() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        assert!(completions(clap_complete::Shell::Zsh, &mut Closed).is_err());
        assert!(man_page(&mut Closed).is_err());
    }
}
