//! The `shale` binary without a cluster: usage errors, help, completions, unreachable clusters and
//! the offline `verify --data-dir` check against storage directories written with shale-storage.

use std::fs;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use bytes::Bytes;
use shale_storage::format::{names, record, segment};
use shale_storage::{Offset, Storage, StorageBackend, StreamId};

fn shale() -> Command {
    let mut cmd = Command::cargo_bin("shale").unwrap();
    cmd.env_remove("SHALE_BOOTSTRAP").env_remove("RUST_LOG").env_remove("SHALE_PROFILE");
    // Never the profile file of whoever runs the tests.
    cmd.env("SHALE_CONFIG", std::env::temp_dir().join("shale-cli-tests-no-such-dir/config.toml"));
    cmd
}

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_flags_and_arguments_exit_2() {
    for args in [
        &["topic", "list", "--no-such-flag"][..],
        &["topic", "create"],
        &["topic", "create", "t", "--partitions", "0"],
        &["consume", "t", "--from-beginning", "--offset", "1"],
        &["verify"],
        &["topic", "list", "-o", "xml"],
        &["completions", "powershell-classic"],
        &["no-such-command"],
    ] {
        let out = shale().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr_of(&out));
        assert!(!stderr_of(&out).is_empty(), "{args:?} explains itself on stderr");
    }
}

#[test]
fn help_shows_examples() {
    let out = shale().arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = stdout_of(&out);
    assert!(text.contains("Examples:") && text.contains("SHALE_BOOTSTRAP"), "{text}");
    let out = shale().args(["verify", "--help"]).output().unwrap();
    assert!(stdout_of(&out).contains("shale verify --data-dir"), "{}", stdout_of(&out));
}

#[test]
fn completions_print_for_each_shell() {
    for (shell, marker) in [("bash", "_shale()"), ("zsh", "#compdef shale"), ("fish", "complete -c shale")] {
        let out = shale().args(["completions", shell]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let text = stdout_of(&out);
        assert!(text.contains(marker), "{shell} script lacks {marker:?}");
        assert!(text.contains("reset-offsets"), "{shell} script covers subcommands");
    }
}

#[test]
fn an_unreachable_cluster_exits_1_with_a_hint() {
    // Port 1 on localhost refuses connections at once.
    let out = shale().args(["topic", "list", "--bootstrap", "127.0.0.1:1", "--attempts", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains("error: list topics"), "{err}");
    assert!(err.contains("hint:") && err.contains("127.0.0.1:1"), "{err}");
}

/// A data dir with stream 4 holding `n` records, closed cleanly.
fn data_dir(n: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(dir.path()).unwrap();
    let events: Vec<Bytes> = (0..n).map(|i| Bytes::from(format!("record number {i}"))).collect();
    s.append_batch(StreamId::new(4), events, Offset::ZERO, true).unwrap();
    s.close().unwrap();
    dir
}

/// Segment path and the position of the first payload byte of record `offset`.
fn payload_position(dir: &Path, offset: u64) -> (PathBuf, usize) {
    let path = dir.join("4").join(names::segment(0));
    let bytes = fs::read(&path).unwrap();
    let mut pos = segment::HEADER_LEN;
    loop {
        let this = u64::from_le_bytes(bytes[pos + record::OFFSET_AT..pos + record::OFFSET_AT + 8].try_into().unwrap());
        let stored =
            u32::from_le_bytes(bytes[pos + record::STORED_LEN_AT..pos + record::STORED_LEN_AT + 4].try_into().unwrap())
                as usize;
        if this == offset {
            return (path, pos + record::PAYLOAD_AT);
        }
        pos += record::encoded_len(stored);
    }
}

#[test]
fn offline_verify_passes_a_clean_dir_and_names_a_flipped_byte() {
    let dir = data_dir(30);
    let out = shale().args(["verify", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout_of(&out), stderr_of(&out));
    assert!(stdout_of(&out).contains("OK: 1 stream(s) verified"), "{}", stdout_of(&out));

    let (path, pos) = payload_position(dir.path(), 12);
    let mut bytes = fs::read(&path).unwrap();
    bytes[pos + 3] ^= 0x40;
    fs::write(&path, &bytes).unwrap();

    let out = shale().args(["verify", "-o", "json", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout_of(&out)).unwrap();
    assert_eq!(report["damaged_streams"], 1);
    let stream = &report["streams"][0];
    assert_eq!(stream["stream"], 4);
    assert_eq!(stream["status"], "damaged");
    let damage: Vec<&serde_json::Value> =
        stream["findings"].as_array().unwrap().iter().filter(|f| f["severity"] == "damage").collect();
    assert_eq!(damage.len(), 1, "{stream}");
    assert_eq!(damage[0]["offset"], 12);
    assert_eq!(damage[0]["file"], "segment_000000.log");
    assert!(stderr_of(&out).contains("damage found in 1 of 1 stream(s)"), "{}", stderr_of(&out));
    assert_eq!(fs::read(&path).unwrap(), bytes, "verify never writes the data dir");
}

#[test]
fn offline_verify_of_a_non_data_dir_fails() {
    let dir = tempfile::tempdir().unwrap();
    let out = shale().args(["verify", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("no stream directory"), "{}", stderr_of(&out));
}

#[test]
fn bench_partitions_reports_a_node_that_exits_while_starting_with_its_log() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // A "shale-node" that refuses to start, as one given a bad flag or config would.
    let bin = dir.path().join("shale-node-refuses");
    fs::write(
        &bin,
        "#!/bin/sh\necho \"error: config file /nowhere/shale.toml: No such file or directory\" >&2\nexit 3\n",
    )
    .unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    let out = shale()
        .args(["bench", "partitions", "--partitions", "3", "--idle-seconds", "1", "--wait-seconds", "120"])
        .args(["--base-port", "17600", "--node-bin"])
        .arg(&bin)
        .arg("--dir")
        .arg(dir.path().join("bench"))
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("exited while starting") && err.contains("exit status: 3"), "{err}");
    assert!(err.contains("config file /nowhere/shale.toml: No such file or directory"), "the node's own words: {err}");
}
