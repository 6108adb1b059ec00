//! The manual pages and shell completion scripts: receives the command-line definition from
//! `cli`, emits roff pages (with EXIT STATUS, ENVIRONMENT and FILES sections on the main page)
//! and completion scripts. Owns the facts those sections state, which `--help` repeats.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::Command;
use clap_complete::Shell;
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;

/// One entry of a section: what it is about, and what the page says of it.
type Entry = (&'static str, &'static str);

const EXIT_STATUS: &[Entry] = &[
    ("0", "success."),
    (
        "78",
        "configuration error: a bad config, no token or client secret, a state directory \
         locked or unusable because of its path or permissions; with check --online or run \
         --dry-run also a wrong target or refused credentials; a taken metrics.listen port; \
         a config the daemon refused on reload. systemd's RestartPreventExitStatus=78 stops a \
         restart loop.",
    ),
    ("7", "reload with no daemon running."),
    (
        "1",
        "anything else, such as an API that cannot be reached. A state directory on a full or \
         read-only disk is no configuration error: run waits until it can write there.",
    ),
];

const ENVIRONMENT: &[Entry] = &[
    (
        "TALLYFY_SYNC_CONFIG",
        "the config file, when --config is not given.",
    ),
    (
        "TALLYFY_ACCESS_TOKEN",
        "the API token with api.auth: token; it takes precedence over api.token_file and the \
         systemd credential (check warns when it hides one of them).",
    ),
    (
        "TALLYFY_CLIENT_SECRET",
        "the OAuth client secret with api.auth: client_credentials.",
    ),
    (
        "CREDENTIALS_DIRECTORY",
        "set by systemd: the directory holding the credentials tallyfy-token and \
         tallyfy-client-secret. Without it (a command run by hand) the file the unit's \
         LoadCredential= names is read instead.",
    ),
    (
        "SYSTEMD_UNIT_PATH",
        "where to look for the installed tallyfy-sync.service and its drop-ins, as for \
         systemctl; by default /etc/systemd/system, /run/systemd/system, \
         /usr/lib/systemd/system and /lib/systemd/system.",
    ),
    ("STATE_DIRECTORY", "set by systemd: the default state_dir."),
    ("RUST_LOG", "a log filter, such as tallyfy_sync=debug."),
];

const FILES: &[Entry] = &[
    ("/etc/tallyfy-sync/config.yaml", "the config."),
    (
        "/etc/tallyfy-sync/token",
        "the API token the unit hands to the daemon as the credential tallyfy-token (root \
         only, mode 0600).",
    ),
    (
        "/var/lib/tallyfy-sync",
        "the state: which file went to which asset (state_dir).",
    ),
    (
        "/var/lib/tallyfy-sync/control.sock",
        "where status, retry, release-deletes and verify reach the running daemon.",
    ),
    (
        "/usr/lib/systemd/system/tallyfy-sync.service",
        "the systemd unit.",
    ),
];

const SECTIONS: &[(&str, &[Entry])] = &[
    ("EXIT STATUS", EXIT_STATUS),
    ("ENVIRONMENT", ENVIRONMENT),
    ("FILES", FILES),
];

/// What `--help` prints after the options: the sections of the manual page, one paragraph each.
pub fn epilogue() -> String {
    SECTIONS
        .iter()
        .map(|(title, entries)| {
            let title = title[..1].to_string() + &title[1..].to_lowercase();
            let entries: Vec<String> = entries
                .iter()
                .map(|(name, text)| format!("{name}: {text}"))
                .collect();
            format!("{title}: {}", entries.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The definition the pages are made from: clap's `help` subcommand has no page of its own,
/// so no page may point to one; the epilogue becomes sections of their own.
fn for_pages(command: Command) -> Command {
    command
        .disable_help_subcommand(true)
        .after_long_help(None::<&str>)
}

/// The main page, with the EXIT STATUS, ENVIRONMENT and FILES sections before VERSION.
pub fn render(command: Command, out: &mut dyn Write) -> io::Result<()> {
    let mut page = Vec::new();
    Man::new(for_pages(command)).render(&mut page)?;
    let page = String::from_utf8(page).map_err(io::Error::other)?;
    let mut sections = Roff::new();
    for (title, entries) in SECTIONS {
        sections.control("SH", [*title]);
        for (name, text) in *entries {
            sections.control("TP", []);
            sections.text([bold(*name)]);
            sections.text([roman(*text)]);
        }
    }
    let (head, tail) = page.split_at(page.find(".SH VERSION").unwrap_or(page.len()));
    out.write_all(head.as_bytes())?;
    out.write_all(sections.to_roff().as_bytes())?;
    out.write_all(tail.as_bytes())
}

/// The main page and one per subcommand (`tallyfy-sync-run.1`, ...) into `dir`.
pub fn write_pages(command: Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut command = for_pages(command);
    command.build();
    let mut written = Vec::new();
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        written.push(Man::new(sub.clone()).generate_to(dir)?);
    }
    let main = Man::new(command.clone());
    let path = dir.join(main.get_filename());
    let mut file = std::fs::File::create(&path)?;
    render(command, &mut file)?;
    file.flush()?;
    written.push(path);
    Ok(written)
}

/// The completion script for `shell`.
pub fn completions(shell: Shell, mut command: Command, out: &mut dyn Write) -> io::Result<()> {
    let name = command.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, &name, &mut script);
    if shell == Shell::Bash {
        let script = String::from_utf8(script).map_err(io::Error::other)?;
        return out.write_all(bash_hyphen_fix(&script, &name).as_bytes());
    }
    out.write_all(&script)
}

/// clap_complete's bash script tracks the subcommand typed so far in a state that spells the
/// program name with its hyphen as `__` (`tallyfy__sync__subcmd__run`), but labels the state's
/// `case` arms with the hyphen as `__subcmd__` (`tallyfy__subcmd__sync__subcmd__run`), so no
/// option of a subcommand ever completes (clap-rs/clap#6421). The labels are spelt as the
/// state is; a script without the mismatch is left as it is.
fn bash_hyphen_fix(script: &str, name: &str) -> String {
    let state = name.replace('-', "__");
    let label = name.replace('-', "__subcmd__");
    if state == label {
        return script.to_string();
    }
    script
        .lines()
        .map(|line| match line.trim_start().strip_prefix(&label) {
            Some(rest) if rest.ends_with(')') && rest.starts_with("__subcmd__") => {
                line.replacen(&label, &state, 1)
            }
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}
