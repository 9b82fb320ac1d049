//! Password users and the profile file from the CLI: `shale user create NAME --new-password-file`
//! / `--password-stdin`, `--user` with `--password-file` or SHALE_USER/SHALE_PASSWORD, profiles
//! (`shale profile create|use|list|show|delete`), the precedence flags > environment > profile,
//! and a malformed profile file named with its line.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{assert_exit, run_shale_env, stderr, stdout};
use shale_node::testing::LocalCluster;
use shale_raft::network::tls::files;

fn auth_on(c: &mut shale_node::NodeConfig) {
    c.auth.enabled = true;
    c.auth.super_users = ["admin".to_string()].into();
}

fn s(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

fn env(config: &Path, more: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v = vec![("SHALE_CONFIG".to_string(), config.to_str().unwrap().to_string())];
    v.extend(more.iter().map(|(k, val)| (k.to_string(), val.to_string())));
    v
}

/// Runs `args` until it exits 0 (a user just created reaches every node within moments).
async fn until_ok(args: Vec<String>, environment: Vec<(String, String)>) -> String {
    let mut last = None;
    for _ in 0..100 {
        let out = run_shale_env(args.clone(), vec![], environment.clone()).await;
        if out.status.code() == Some(0) {
            return stdout(&out);
        }
        last = Some(out);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = last.unwrap();
    panic!("{args:?} never succeeded: {}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn profiles_are_created_used_listed_and_a_malformed_file_is_named_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shale/config.toml");
    let e = |more: &[(&str, &str)]| env(&config, more);
    let created = run_shale_env(
        s(&["profile", "create", "dev", "--bootstrap", "127.0.0.1:7001,127.0.0.1:7002", "--use"]),
        vec![],
        e(&[]),
    )
    .await;
    assert_exit(&created, 0);
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "hunter2\n").unwrap();
    let pw_path = pw.to_str().unwrap();
    let args = ["profile", "create", "prod", "--bootstrap", "a:1", "--tls-ca", "/ca.pem"];
    let mut args = s(&args);
    args.extend(s(&["--user", "alice", "--password-file", pw_path]));
    assert_exit(&run_shale_env(args, vec![], e(&[])).await, 0);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("current_profile = \"dev\"") && text.contains("[profiles.prod]"), "{text}");
    assert!(!text.contains("hunter2"), "the password file's path is stored, not the password");

    let list = run_shale_env(s(&["profile", "list", "-o", "json"]), vec![], e(&[])).await;
    assert_exit(&list, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout(&list)).unwrap();
    assert_eq!(v[0]["name"], "dev");
    assert_eq!(v[0]["current"], true);
    assert_eq!((v[1]["auth"].as_str(), v[1]["user"].as_str()), (Some("password"), Some("alice")));
    // SHALE_PROFILE picks another profile than the file's current one.
    let show = run_shale_env(s(&["profile", "show", "-o", "json"]), vec![], e(&[("SHALE_PROFILE", "prod")])).await;
    assert_exit(&show, 0);
    assert!(stdout(&show).contains("\"a:1\""), "{}", stdout(&show));

    assert_exit(&run_shale_env(s(&["profile", "use", "prod"]), vec![], e(&[])).await, 0);
    assert!(std::fs::read_to_string(&config).unwrap().contains("current_profile = \"prod\""));
    let unknown = run_shale_env(s(&["profile", "use", "staging"]), vec![], e(&[])).await;
    assert_exit(&unknown, 2);
    assert!(stderr(&unknown).contains("no profile \"staging\"") && stderr(&unknown).contains("dev, prod"));
    assert_exit(&run_shale_env(s(&["profile", "delete", "prod"]), vec![], e(&[])).await, 0);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(!text.contains("prod") && !text.contains("current_profile"), "{text}");

    // A malformed file: a usage error naming the file and the line, for every networked command.
    std::fs::write(&config, "current_profile = \"dev\"\n[profiles.dev]\naddresses = \"not a list\"\n").unwrap();
    let bad = run_shale_env(s(&["topic", "list"]), vec![], e(&[])).await;
    assert_exit(&bad, 2);
    let err = stderr(&bad);
    assert!(err.contains(config.to_str().unwrap()) && err.contains("line 3"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn password_users_from_the_cli_with_flags_env_and_profiles() {
    let root = tempfile::tempdir().unwrap();
    let c = LocalCluster::start_tls(3, root.path(), auth_on).await.unwrap();
    assert!(c.not_ready(Duration::from_secs(30)).await.is_empty());
    let tls_dir = c.tls_dir();
    let d = tls_dir.to_str().unwrap().to_string();
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config.toml");
    let none = || env(&config, &[]);
    assert_exit(&run_shale_env(s(&["cert", "client", "--dir", &d, "--principal", "admin"]), vec![], none()).await, 0);
    let path = |name: String| tls_dir.join(name).to_str().unwrap().to_string();
    let ca = path(files::CA_CERT.to_string());
    let bootstrap = c.endpoints().join(",");
    let tls = s(&["--bootstrap", &bootstrap, "--tls-ca", &ca]);
    let admin = |args: &[&str]| {
        let mut v = tls.clone();
        v.extend(["--tls-cert".to_string(), path(files::client_cert("admin")), "--tls-key".into()]);
        v.push(path(files::client_key("admin")));
        v.extend(s(args));
        v
    };

    // Two password users: from a file and from stdin. `--password` needs a terminal.
    let pw = work.path().join("bob.pw");
    std::fs::write(&pw, "correct horse\n").unwrap();
    let pw = pw.to_str().unwrap().to_string();
    let created = run_shale_env(admin(&["user", "create", "bob", "--new-password-file", &pw]), vec![], none()).await;
    assert_exit(&created, 0);
    assert!(stdout(&created).contains("SCRAM-SHA-256"), "{}", stdout(&created));
    let from_stdin =
        run_shale_env(admin(&["user", "create", "carol", "--password-stdin"]), b"battery\n".to_vec(), none());
    assert_exit(&from_stdin.await, 0);
    let no_tty = run_shale_env(admin(&["user", "create", "dave", "--password"]), vec![], none()).await;
    assert_exit(&no_tty, 2);
    assert!(stderr(&no_tty).contains("terminal"), "{}", stderr(&no_tty));

    // Flags: --user with --password-file.
    let mut as_bob = tls.clone();
    as_bob.extend(s(&["--user", "bob", "--password-file", &pw, "user", "whoami", "-o", "json"]));
    let who = until_ok(as_bob, none()).await;
    assert!(who.contains("\"principal\": \"user:bob\"") && who.contains("\"source\": \"password\""), "{who}");
    // Environment: SHALE_USER and SHALE_PASSWORD.
    let mut whoami = tls.clone();
    whoami.extend(s(&["user", "whoami", "-o", "json"]));
    let who = until_ok(whoami.clone(), env(&config, &[("SHALE_USER", "carol"), ("SHALE_PASSWORD", "battery")])).await;
    assert!(who.contains("\"principal\": \"user:carol\""), "{who}");
    // A wrong password is refused with UNAUTHENTICATED and a hint naming the options.
    let wrong =
        run_shale_env(whoami.clone(), vec![], env(&config, &[("SHALE_USER", "carol"), ("SHALE_PASSWORD", "x")]));
    let wrong = wrong.await;
    assert_exit(&wrong, 1);
    assert!(
        stderr(&wrong).contains("UNAUTHENTICATED") && stderr(&wrong).contains("SHALE_PASSWORD"),
        "{}",
        stderr(&wrong)
    );
    // A token and a user together is a usage error.
    let both = run_shale_env(
        whoami.clone(),
        vec![],
        env(&config, &[("SHALE_USER", "carol"), ("SHALE_TOKEN", &format!("carol:{}", "0".repeat(64)))]),
    );
    assert_exit(&both.await, 2);

    // A profile holding the cluster, the CA and bob's password file: no flags needed.
    let mut make = tls.clone();
    make.extend(s(&["--user", "bob", "--password-file", &pw, "profile", "create", "test", "--use"]));
    assert_exit(&run_shale_env(make, vec![], none()).await, 0);
    let who = until_ok(s(&["user", "whoami", "-o", "json"]), none()).await;
    assert!(who.contains("\"principal\": \"user:bob\""), "{who}");
    // The environment wins over the profile (carol, not bob), and flags over the environment.
    let who = until_ok(
        s(&["user", "whoami", "-o", "json"]),
        env(&config, &[("SHALE_USER", "carol"), ("SHALE_PASSWORD", "battery")]),
    )
    .await;
    assert!(who.contains("\"principal\": \"user:carol\""), "{who}");
    let who = until_ok(
        s(&["user", "whoami", "-o", "json", "--user", "bob", "--password-file", &pw]),
        env(&config, &[("SHALE_USER", "carol"), ("SHALE_PASSWORD", "battery")]),
    )
    .await;
    assert!(who.contains("\"principal\": \"user:bob\""), "{who}");
    // A bootstrap flag wins over the profile's addresses: a dead address in the flag fails.
    let dead = run_shale_env(s(&["--bootstrap", "127.0.0.1:1", "--attempts", "1", "user", "whoami"]), vec![], none());
    assert_exit(&dead.await, 1);

    // A changed password: the old one is refused (once every node applied the change).
    let new_pw = work.path().join("bob2.pw");
    std::fs::write(&new_pw, "staple\n").unwrap();
    let new_pw = new_pw.to_str().unwrap().to_string();
    // (Without the profile: its user would be sent along with the admin's certificate, and win.)
    let no_profile = env(&work.path().join("none.toml"), &[]);
    let set = admin(&["user", "set-password", "bob", "--new-password-file", &new_pw]);
    assert_exit(&run_shale_env(set, vec![], no_profile).await, 0);
    let mut refused = false;
    for _ in 0..100 {
        let old = run_shale_env(s(&["--attempts", "1", "user", "whoami"]), vec![], none()).await;
        if old.status.code() == Some(1) && stderr(&old).contains("UNAUTHENTICATED") {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "the old password (the profile's file) is refused after the change");
    let who = until_ok(s(&["user", "whoami", "-o", "json", "--password-file", &new_pw]), none()).await;
    assert!(who.contains("\"principal\": \"user:bob\""), "{who}");
    c.shutdown().await.unwrap();
}
