//! Careless configurations: a folder mixed up with the state directory is refused; a system
//! directory, a secret file or config others can read, and metrics open to the network are
//! warned about in `check` and when the daemon starts.

mod common;

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_that_is_holds_or_lies_inside_the_state_directory_is_refused_with_78() {
    let env = Env::new().await;
    let good = std::fs::read_to_string(&env.config).unwrap();
    let state_line = format!("state_dir: {}\n", env.state.display());
    let tasks = env.tasks.display().to_string();
    for (state_dir, relation) in [
        (env.tasks.clone(), "is"),
        (env.tasks.join("state"), "contains"),
        (env.dir.path().canonicalize().unwrap(), "lies inside"),
    ] {
        env.write_raw_config(&good.replace(
            &state_line,
            &format!("state_dir: {}\n", state_dir.display()),
        ));
        for command in ["check", "run"] {
            let output = env.command(&[command]);
            assert_eq!(output.status.code(), Some(78), "{}", describe(&output));
            let problem = format!(
                "\n  - folders[0].path {tasks:?}: {relation} the state directory {} (state_dir)",
                state_dir.display()
            );
            assert!(
                output.stderr.contains(&problem),
                "{problem}\n{}",
                describe(&output)
            );
        }
    }
    assert!(
        !env.tasks.join("state").exists() && !env.tasks.join("db").exists(),
        "nothing written into the folder"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn careless_settings_are_warned_about_in_check_and_when_the_daemon_starts() {
    let env = Env::new().await;
    let token_file = env.dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let api_extra = format!(
        "  token_file: {}\n  proxy: http://operator:Pr0xyPassw0rd@127.0.0.1:9\n",
        token_file.display()
    );
    env.write_config_with_api(&api_extra, "metrics:\n  listen: 0.0.0.0:0\n", "");
    std::fs::set_permissions(&env.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The API is on 127.0.0.1: the proxy is never used.
    let vars = [("NO_PROXY", OsStr::new("127.0.0.1"))];
    let warnings = [
        format!(
            "api.token_file {}: readable by other users (mode 0644) though it holds a secret; chmod 600 it",
            token_file.display()
        ),
        format!(
            "config file {}: readable by other users (mode 0644) though api.proxy holds a password",
            env.config.display()
        ),
        "metrics.listen 0.0.0.0:0: reachable from other machines".to_string(),
    ];

    let yaml = std::fs::read_to_string(&env.config).unwrap();
    let with_etc = yaml.clone()
        + "  - path: /etc\n    task:\n      run_id: r\n      task_id: t\n      capture_id: c\n";
    env.write_raw_config(&with_etc);
    let check = run_command_with_env(&["check"], Some(TOKEN), &env.config, &vars);
    assert!(check.status.success(), "{}", describe(&check));
    for warning in warnings.iter().chain([
        &"folders[2].path /etc: in the system directory /etc; every file there would be uploaded"
            .to_string(),
    ]) {
        assert!(
            check.stdout.contains(&format!("warning: {warning}")),
            "{warning}\n{}",
            describe(&check)
        );
    }
    assert!(
        !check.stdout.contains("Pr0xyPassw0rd"),
        "{}",
        describe(&check)
    );

    env.write_raw_config(&yaml);
    let daemon = env.start_with_env(TOKEN, &vars);
    daemon.wait_for_log("target verified").await;
    let log = daemon.log();
    for warning in &warnings {
        assert!(
            log.lines()
                .any(|line| line.contains(" WARN ") && line.contains(warning.as_str())),
            "{warning}\n{log}"
        );
    }
    assert!(!log.contains("Pr0xyPassw0rd"), "{log}");
    assert_eq!(daemon.stop().await.code(), Some(0));

    // Readable by the daemon's own group, as the README has it: nothing to warn about.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    env.write_config_with_api(&api_extra, "metrics:\n  listen: 127.0.0.1:0\n", "");
    std::fs::set_permissions(&env.config, std::fs::Permissions::from_mode(0o640)).unwrap();
    let check = run_command_with_env(&["check"], Some(TOKEN), &env.config, &vars);
    assert!(check.status.success(), "{}", describe(&check));
    assert!(!check.stdout.contains("warning:"), "{}", describe(&check));
}
