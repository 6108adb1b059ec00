//! Files that must not be sent: each kind is skipped with a reason, recorded, and never
//! uploaded; symbolic links are never followed out of the folder.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_ineligible_file_is_skipped_with_its_reason() {
    let env = Env::with_config("", "ignore: [\"draft-*\"]").await;
    let outside = env.dir.path().join("outside.pdf");
    std::fs::write(&outside, b"not yours").unwrap();
    let daemon = env.start();
    daemon.wait_for_log("target verified").await;

    let cases: &[(&str, &str)] = &[
        // Office lock files (`~$report.docx`) are passed over without a word: tests/logging.rs.
        (".hidden.pdf", "hidden file"),
        ("scan.pdf.part", "temporary file"),
        ("data.tmp", "temporary file"),
        ("get.pdf.crdownload", "temporary file"),
        ("edit.swp", "temporary file"),
        (
            "draft-1.pdf",
            "matches the folder's ignore pattern \"draft-*\"",
        ),
        ("setup.exe", "extension .exe is not accepted by Tallyfy"),
        ("README", "no file extension"),
        ("link.pdf", "symbolic link"),
        ("huge.pdf", "is over Tallyfy's limit of 100 MiB"),
    ];
    for (name, _) in cases {
        let path = env.tasks.join(name);
        match *name {
            "link.pdf" => std::os::unix::fs::symlink(&outside, &path).unwrap(),
            "huge.pdf" => std::fs::File::create(&path)
                .unwrap()
                .set_len(100 * 1024 * 1024 + 1)
                .unwrap(),
            _ => std::fs::write(&path, b"x").unwrap(),
        }
    }
    drop_file(&env.tasks, "fine.PDF", b"ok");
    eventually(
        "the eligible file is attached",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
    for (name, reason) in cases {
        eventually(
            &format!("{name} is skipped with its reason"),
            || {
                daemon.log().lines().any(|line| {
                    line.contains("WARN")
                        && line.contains(&format!("file={} ", env.tasks.join(name).display()))
                        && line.contains(reason)
                })
            },
            &daemon,
        )
        .await;
    }
    assert_eq!(env.uploads(), 1, "only fine.PDF was sent");
    assert_eq!(filenames(&env.task_field()), vec!["fine.PDF"]);
    assert_eq!(daemon.stop().await.code(), Some(0));

    let status = env.command(&["status"]);
    assert!(status.status.success(), "{}", status.stderr);
    assert!(
        status
            .stdout
            .contains("1 synced, 0 pending, 0 held, 10 rejected, 0 failed"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains("setup.exe  extension .exe"),
        "{}",
        status.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlinked_directory_is_not_followed_out_of_a_recursive_folder() {
    let env = Env::with_config("", "recursive: true").await;
    let secret_dir = env.dir.path().join("secrets");
    std::fs::create_dir(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("shadow.txt"), b"root:*:").unwrap();
    std::os::unix::fs::symlink(&secret_dir, env.tasks.join("sub")).unwrap();
    std::fs::create_dir(env.tasks.join("real")).unwrap();
    let daemon = env.start();
    drop_file(&env.tasks.join("real"), "nested.pdf", b"nested");
    eventually(
        "the nested file is attached",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
    drop_file(&secret_dir, "later.txt", b"also secret");
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(filenames(&env.task_field()), vec!["nested.pdf"]);
    assert!(env
        .fake
        .assets()
        .iter()
        .all(|asset| !asset.content.starts_with(b"root") && !asset.content.starts_with(b"also")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_file_is_taken_once_it_changes_into_an_eligible_one() {
    let env = Env::new().await;
    let daemon = env.start();
    let path = env.tasks.join("grows.pdf");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(100 * 1024 * 1024 + 1)
        .unwrap();
    daemon.wait_for_log("is over Tallyfy's limit").await;
    std::fs::write(&path, b"small now").unwrap();
    eventually(
        "the now-small file is attached",
        || env.task_field().len() == 1,
        &daemon,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_is_not_utf8_is_skipped_with_its_reason_and_the_rest_carries_on() {
    use std::os::unix::ffi::OsStrExt;
    let (env, daemon) = Env::running().await;
    let name = std::ffi::OsStr::from_bytes(b"Rechnung \xff.pdf");
    std::fs::write(env.tasks.join(name), b"latin-1 name").unwrap();
    drop_file(&env.tasks, "fine.pdf", b"ok");
    daemon
        .wait_for_log("file name is not valid UTF-8, so Tallyfy cannot store it; rename the file")
        .await;
    eventually(
        "the other file is attached",
        || filenames(&env.task_field()) == ["fine.pdf"],
        &daemon,
    )
    .await;
    assert_eq!(env.uploads(), 1);
    let status = env.command(&["status"]);
    assert!(status.status.success(), "{}", status.stderr);
    assert!(
        status.stdout.contains("Rechnung \u{fffd}.pdf"),
        "{}",
        status.stdout
    );
}
