//! Where the API token comes from, as the real binary finds and reports it: the environment,
//! `api.token_file`, the systemd credential, and, for a command run by hand (with sudo), the
//! file the installed unit's `LoadCredential=` reads.

mod common;

use std::ffi::OsStr;
use std::path::Path;

use common::*;

/// `args` with the test's config and exactly `vars` as the token's possible sources.
fn command(env: &Env, args: &[&str], vars: &[(&str, &Path)]) -> Output {
    let vars: Vec<(&str, &OsStr)> = vars
        .iter()
        .map(|(name, value)| (*name, value.as_os_str()))
        .collect();
    run_command_with_env(args, None, &env.config, &vars)
}

/// Asserts that the command printed `text`, on stdout or stderr.
fn says(output: &Output, text: impl AsRef<str>) {
    let text = text.as_ref();
    assert!(
        output.stdout.contains(text) || output.stderr.contains(text),
        "no {text:?} in\n{}",
        describe(output)
    );
}

fn warnings(output: &Output) -> Vec<&str> {
    output
        .stderr
        .lines()
        .filter(|line| line.contains("WARN"))
        .collect()
}

/// The test's config with `api.token_file` set to `file`.
fn with_token_file(env: &Env, file: &Path) {
    env.write_config_with_api(&format!("  token_file: {}\n", file.display()), "", "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_where_the_token_came_from() {
    let env = Env::new().await;
    let from_env = env.command(&["check"]);
    says(
        &from_env,
        "; token from environment variable TALLYFY_ACCESS_TOKEN\n",
    );

    let credentials = env.dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::fs::write(credentials.join("tallyfy-token"), TOKEN).unwrap();
    let vars = [("CREDENTIALS_DIRECTORY", credentials.as_path())];
    let from_credential = command(&env, &["check", "--online"], &vars);
    assert_eq!(
        from_credential.status.code(),
        Some(0),
        "{}",
        describe(&from_credential)
    );
    says(
        &from_credential,
        format!(
            "; token from systemd credential {}\n",
            credentials.join("tallyfy-token").display()
        ),
    );

    let file = env.dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    with_token_file(&env, &file);
    let from_file = command(&env, &["check"], &vars);
    says(
        &from_file,
        format!("; token from file {} (api.token_file)\n", file.display()),
    );
    assert_eq!(warnings(&from_file), Vec::<&str>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_token_variable_hiding_the_token_file_is_named_in_a_warning() {
    let env = Env::new().await;
    let file = env.dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    with_token_file(&env, &file);

    let stale = command(
        &env,
        &["check", "--online"],
        &[("TALLYFY_ACCESS_TOKEN", Path::new("revoked-token"))],
    );
    // The variable wins, so the check fails with it; the warning says why and what to do.
    assert_eq!(stale.status.code(), Some(78), "{}", describe(&stale));
    says(
        &stale,
        "; token from environment variable TALLYFY_ACCESS_TOKEN\n",
    );
    let warned = warnings(&stale);
    assert_eq!(warned.len(), 1, "{}", describe(&stale));
    let expected = format!(
        "the file {} (api.token_file) holds another token: unset TALLYFY_ACCESS_TOKEN",
        file.display()
    );
    assert!(warned[0].contains(&expected), "{}", describe(&stale));
    assert!(!stale.stderr.contains("revoked-token") && !stale.stderr.contains(TOKEN));

    // The same token in both places hides nothing.
    let same = command(
        &env,
        &["check"],
        &[("TALLYFY_ACCESS_TOKEN", Path::new(TOKEN))],
    );
    assert_eq!(same.status.code(), Some(0), "{}", describe(&same));
    assert_eq!(warnings(&same), Vec::<&str>::new(), "{}", describe(&same));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_token_file_gives_way_to_the_systemd_credential_with_one_warning() {
    let env = Env::new().await;
    // Tests run as root, who may read any file: a path beneath a regular file fails to open
    // for everyone (ENOTDIR), as a file the service user may not read fails for that user.
    let blocker = env.dir.path().join("not-a-directory");
    std::fs::write(&blocker, "").unwrap();
    let unreadable = blocker.join("token");
    with_token_file(&env, &unreadable);

    let without = command(&env, &["check"], &[]);
    assert_eq!(without.status.code(), Some(78), "{}", describe(&without));
    says(
        &without,
        format!(
            "API token from file {} (api.token_file): cannot read it: Not a directory",
            unreadable.display()
        ),
    );

    let credentials = env.dir.path().join("credentials");
    std::fs::create_dir(&credentials).unwrap();
    let credential = credentials.join("tallyfy-token");
    std::fs::write(&credential, TOKEN).unwrap();
    let vars = [("CREDENTIALS_DIRECTORY", credentials.as_path())];
    let output = command(&env, &["check", "--online"], &vars);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    says(
        &output,
        format!("; token from systemd credential {}\n", credential.display()),
    );
    let warned = warnings(&output);
    assert_eq!(warned.len(), 1, "{}", describe(&output));
    assert!(
        warned[0].contains(&format!(
            "cannot read the API token file {} (api.token_file); using the systemd credential {} instead",
            unreadable.display(),
            credential.display()
        )),
        "{}",
        describe(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_run_by_hand_reads_the_token_file_the_installed_unit_loads() {
    let env = Env::new().await;
    let units = env.dir.path().join("units");
    std::fs::create_dir(&units).unwrap();
    let token = env.dir.path().join("etc-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let unit = units.join("tallyfy-sync.service");
    std::fs::write(
        &unit,
        format!(
            "[Service]\nExecStart=/usr/bin/tallyfy-sync run\nLoadCredential=tallyfy-token:{}\n",
            token.display()
        ),
    )
    .unwrap();
    let vars = [("SYSTEMD_UNIT_PATH", units.as_path())];

    let check = command(&env, &["check", "--online"], &vars);
    assert_eq!(check.status.code(), Some(0), "{}", describe(&check));
    says(
        &check,
        format!(
            "; token from file {} (LoadCredential=tallyfy-token in {})\n",
            token.display(),
            unit.display()
        ),
    );
    let verify = command(&env, &["verify"], &vars);
    assert_eq!(verify.status.code(), Some(0), "{}", describe(&verify));

    // A source that cannot be read (as /etc/tallyfy-sync/token cannot without root) says what
    // to do.
    std::fs::remove_file(&token).unwrap();
    std::fs::create_dir(&token).unwrap();
    let refused = command(&env, &["verify"], &vars);
    assert_eq!(refused.status.code(), Some(78), "{}", describe(&refused));
    says(&refused, format!(
            "API token from file {} (LoadCredential=tallyfy-token in {}): cannot read it: Is a directory (os error 21); the service reads it as root: run this command with sudo, or set TALLYFY_ACCESS_TOKEN",
            token.display(),
            unit.display()
        ));

    // A drop-in that clears the unit's credentials leaves none to read.
    let drop_ins = units.join("tallyfy-sync.service.d");
    std::fs::create_dir(&drop_ins).unwrap();
    std::fs::write(
        drop_ins.join("override.conf"),
        "[Service]\nLoadCredential=\n",
    )
    .unwrap();
    let none = command(&env, &["check"], &vars);
    assert_eq!(none.status.code(), Some(78), "{}", describe(&none));
    assert!(none.stderr.contains("none is set"), "{}", describe(&none));
}
