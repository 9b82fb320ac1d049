//! The real `shale` binary against an in-process three-node cluster.

mod common;

use std::fs;

use common::{TestCluster, assert_exit, find_record, json, stderr, stdout};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topic_lifecycle() {
    let c = TestCluster::start(3).await;
    let o =
        c.shale(&["topic", "create", "orders", "-p", "3", "-r", "3", "--retention-ms", "7d", "-o", "json"], b"").await;
    assert_exit(&o, 0);
    let created = json(&o);
    assert_eq!(created["name"], "orders");
    assert_eq!(created["partitions"], 3);
    assert_eq!(created["replication_factor"], 3);
    assert_eq!(created["retention_ms"], 7 * 86_400_000u64);

    let o = c.shale(&["topic", "create", "orders"], b"").await;
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("--if-not-exists"), "{}", stderr(&o));
    assert_exit(&c.shale(&["topic", "create", "orders", "--if-not-exists"], b"").await, 0);

    let o = c.shale(&["topic", "list", "-o", "json"], b"").await;
    assert_exit(&o, 0);
    let names: Vec<String> =
        json(&o).as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, vec!["orders"]);

    let o = c.shale(&["topic", "describe", "orders"], b"").await;
    assert_exit(&o, 0);
    let text = stdout(&o);
    assert!(text.contains("Name:                orders") && text.contains("Retention age:       7d"), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with(['0', '1', '2'])).count(), 3, "one row per partition:\n{text}");

    let o = c
        .shale(
            &["topic", "alter", "orders", "--retention-ms", "unlimited", "--retention-bytes", "1GiB", "-o", "yaml"],
            b"",
        )
        .await;
    assert_exit(&o, 0);
    assert!(stdout(&o).contains("retention_bytes: 1073741824"), "{}", stdout(&o));
    assert!(stdout(&o).contains("retention_ms: null"), "{}", stdout(&o));

    assert_exit(&c.shale(&["topic", "delete", "orders"], b"").await, 0);
    let o = c.shale(&["topic", "describe", "orders"], b"").await;
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("shale topic list"), "{}", stderr(&o));
    assert_exit(&c.shale(&["topic", "delete", "orders", "--if-exists"], b"").await, 0);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn produce_then_consume_round_trips_through_pipes() {
    let c = TestCluster::start(3).await;
    assert_exit(&c.shale(&["topic", "create", "events", "-p", "3"], b"").await, 0);
    let lines: Vec<String> = (0..20).map(|i| format!("event number {i} {{\"n\":{i}}}")).collect();
    let input = lines.join("\n") + "\n";
    let o = c.shale(&["produce", "events", "--key", "user-1", "-H", "source=test"], input.as_bytes()).await;
    assert_exit(&o, 0);
    assert!(stderr(&o).contains("produced 20 records to events"), "{}", stderr(&o));

    // One key: one partition, so the order is the input's.
    let o = c.shale(&["consume", "events", "--from-beginning", "--max-records", "20"], b"").await;
    assert_exit(&o, 0);
    assert_eq!(stdout(&o).lines().collect::<Vec<_>>(), lines.iter().map(String::as_str).collect::<Vec<_>>());

    // Without --max-records it stops at the log end.
    let o = c.shale(&["consume", "events", "--from-beginning", "--format", "json"], b"").await;
    assert_exit(&o, 0);
    let records: Vec<Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 20);
    for (r, line) in records.iter().zip(&lines) {
        assert_eq!(r["value"], line.as_str());
        assert_eq!(r["key"], "user-1");
        assert_eq!(r["headers"][0]["key"], "source");
        assert_eq!(r["headers"][0]["value"], "test");
        assert_eq!(r["chain_hash"].as_str().unwrap().len(), 64);
    }
    // One partition, offsets dense from 0; each record names its entry and place in the batch.
    let offsets: Vec<u64> = records.iter().map(|r| r["offset"].as_u64().unwrap()).collect();
    let first = offsets[0];
    assert_eq!(offsets, (first..first + 20).collect::<Vec<_>>());
    for w in records.windows(2) {
        if w[0]["entry_index"] == w[1]["entry_index"] {
            assert_eq!(w[0]["chain_hash"], w[1]["chain_hash"], "one entry, one hash");
            assert_eq!(w[1]["position"].as_u64(), w[0]["position"].as_u64().map(|p| p + 1));
        }
    }

    // --verify reports the chain it checked, per partition read; --no-verify prints no hashes.
    let o = c.shale(&["consume", "events", "--from-beginning", "--verify"], b"").await;
    assert_exit(&o, 0);
    assert_eq!(stdout(&o).lines().count(), 20);
    let report = stderr(&o);
    assert_eq!(report.matches("chain verified: events/").count(), 3, "{report}");
    assert!(report.contains(", 20 records, last hash "), "{report}");
    let o = c.shale(&["consume", "events", "--from-beginning", "--no-verify", "--format", "json"], b"").await;
    assert_exit(&o, 0);
    let unchecked: Vec<Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(unchecked.len(), 20);
    assert!(unchecked.iter().all(|r| r.get("chain_hash").is_none() && r["entry_index"].is_u64()));
    assert!(c.shale(&["consume", "events", "--verify", "--no-verify"], b"").await.status.code() == Some(2));

    // A group starts at its committed offsets and commits what it printed.
    let o = c.shale(&["consume", "events", "--group", "g1", "--from-beginning", "--max-records", "5"], b"").await;
    assert_exit(&o, 0);
    assert_eq!(stdout(&o).lines().count(), 5);
    let o = c.shale(&["consume", "events", "--group", "g1", "--max-records", "5"], b"").await;
    assert_exit(&o, 0);
    assert_eq!(stdout(&o).lines().collect::<Vec<_>>(), lines[5..10].iter().map(String::as_str).collect::<Vec<_>>());
    let o = c.shale(&["group", "describe", "g1", "-o", "json"], b"").await;
    assert_exit(&o, 0);
    let g = json(&o);
    assert_eq!(g["group"], "g1");
    assert!(g["total_lag"].as_u64().unwrap() >= 10, "{g}");

    // Whole-stdin and file records keep their bytes (binary values come back as base64).
    assert_exit(&c.shale(&["topic", "create", "blobs", "-p", "1"], b"").await, 0);
    assert_exit(&c.shale(&["produce", "blobs", "--whole"], b"line one\nline two\n").await, 0);
    let file = tempfile::NamedTempFile::new().unwrap();
    fs::write(file.path(), [0xffu8, 0x00, 0x80]).unwrap();
    let path = file.path().to_string_lossy().into_owned();
    assert_exit(&c.shale(&["produce", "blobs", "--file", &path], b"").await, 0);
    let o = c.shale(&["consume", "blobs", "--from-beginning", "--format", "json"], b"").await;
    assert_exit(&o, 0);
    let blobs: Vec<Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(blobs.len(), 2, "{}", stdout(&o));
    assert_eq!(blobs[0]["value"], "line one\nline two\n");
    assert_eq!(blobs[1]["value_base64"], "/wCA");

    // A bad line stops the input, and what came before it is still delivered.
    assert_exit(&c.shale(&["topic", "create", "kv", "-p", "1"], b"").await, 0);
    let o = c.shale(&["produce", "kv", "--key-separator", "="], b"a=1\nb=2\nno separator\nc=3\n").await;
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("line 3 has no key separator"), "{}", stderr(&o));
    assert!(stderr(&o).contains("produced 2 records to kv before the error"), "{}", stderr(&o));
    let o = c.shale(&["consume", "kv", "--from-beginning", "--print-key"], b"").await;
    assert_exit(&o, 0);
    assert_eq!(stdout(&o), "a\t1\nb\t2\n");

    // Reset to the end, then the group has nothing left.
    let o = c
        .shale(&["group", "reset-offsets", "g1", "--topic", "events", "--to-latest", "--execute", "-o", "json"], b"")
        .await;
    assert_exit(&o, 0);
    assert_eq!(json(&o)["executed"], true);
    let o = c.shale(&["group", "describe", "g1", "-o", "json"], b"").await;
    assert_eq!(json(&o)["total_lag"], 0, "{}", stdout(&o));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn produce_json_prints_each_acknowledgement_as_it_arrives_and_each_failure() {
    let c = TestCluster::start(3).await;
    assert_exit(&c.shale(&["topic", "create", "acks", "-p", "1"], b"").await, 0);
    // Record 2 is over the node's record limit (1 MiB by default; and over the producer's 128 KiB
    // batch, so it travels alone): it fails, the records around it are delivered.
    let big = "x".repeat((1 << 20) + 1);
    let input = format!("a\nb\n{big}\nc\n");
    let o = c.shale(&["produce", "acks", "--key", "k", "-o", "json"], input.as_bytes()).await;
    assert_exit(&o, 1);
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    let records: Vec<u64> = lines.iter().map(|l| l["record"].as_u64().unwrap()).collect();
    assert_eq!(records, [0, 1, 2, 3], "one line per record, in input order:\n{}", stdout(&o));
    for ack in [&lines[0], &lines[1], &lines[3]] {
        assert_eq!(ack["key"], "k", "{ack}");
        assert_eq!(ack["partition"], 0, "{ack}");
        assert_eq!(ack["chain_hash"].as_str().unwrap().len(), 64, "{ack}");
        assert!(ack.get("error").is_none(), "{ack}");
    }
    let offsets: Vec<u64> = [&lines[0], &lines[1], &lines[3]].iter().map(|l| l["offset"].as_u64().unwrap()).collect();
    assert!(offsets[0] < offsets[1] && offsets[1] < offsets[2], "{offsets:?}");
    let failed = &lines[2];
    assert_eq!(failed["key"], "k", "{failed}");
    assert_eq!(failed["error"]["code"], "RECORD_TOO_LARGE", "{failed}");
    assert!(failed["error"]["message"].as_str().unwrap().contains("max_record_bytes = 1048576"), "{failed}");
    assert!(failed.get("offset").is_none(), "{failed}");
    let err = stderr(&o);
    assert!(err.contains("produced 3 records to acks (1 not delivered)"), "{err}");
    assert!(err.contains("1 of 4 records to acks not delivered; the first, record 2: RECORD_TOO_LARGE"), "{err}");
    assert!(err.contains("send smaller records"), "{err}");
    let o = c.shale(&["consume", "acks", "--from-beginning"], b"").await;
    assert_exit(&o, 0);
    assert_eq!(stdout(&o), "a\nb\nc\n");
    // What a consumer reads back is what the producer was told: offset, entry and its chain hash.
    let o = c.shale(&["consume", "acks", "--from-beginning", "-o", "json"], b"").await;
    assert_exit(&o, 0);
    let read: Vec<(u64, u64, String)> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|r| (r["offset"].as_u64().unwrap(), r["entry_index"].as_u64().unwrap(), r["chain_hash"].to_string()))
        .collect();
    let acked: Vec<(u64, u64, String)> = [&lines[0], &lines[1], &lines[3]]
        .iter()
        .map(|a| (a["offset"].as_u64().unwrap(), a["entry_index"].as_u64().unwrap(), a["chain_hash"].to_string()))
        .collect();
    assert_eq!(read, acked);

    // As it arrives: with stdin still open, the first record's acknowledgement is already printed.
    let args: Vec<String> = ["produce", "acks", "-o", "json", "--attempts", "20", "--bootstrap"]
        .iter()
        .map(|s| s.to_string())
        .chain([c.bootstrap()])
        .collect();
    let streamed = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, Read, Write};
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("shale"))
            .args(&args)
            .env_remove("SHALE_BOOTSTRAP")
            .env_remove("RUST_LOG")
            .env("SHALE_CONFIG", std::env::temp_dir().join("shale-cli-tests-no-such-dir/config.toml"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn shale");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"early\n").unwrap();
        stdin.flush().unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        stdin.write_all(b"late\n").unwrap();
        drop(stdin);
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        (first, rest, child.wait().unwrap())
    });
    let (first, rest, status) =
        tokio::time::timeout(common::WAIT, streamed).await.expect("the first acknowledgement is printed").unwrap();
    assert!(status.success(), "{status:?}");
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["record"], 0, "{first}");
    assert!(first["offset"].as_u64().unwrap() > offsets[2], "{first}");
    let rest: Value = serde_json::from_str(rest.trim()).unwrap();
    assert_eq!(rest["record"], 1, "{rest}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_list_names_groups_that_committed() {
    let c = TestCluster::start(3).await;
    assert_exit(&c.shale(&["topic", "create", "t", "-p", "1"], b"").await, 0);
    assert_exit(&c.shale(&["produce", "t"], b"x\ny\n").await, 0);
    let o = c.shale(&["consume", "t", "--group", "readers", "--from-beginning"], b"").await;
    assert_exit(&o, 0);
    assert_eq!(stdout(&o), "x\ny\n");
    let o = c.shale(&["group", "list", "-o", "json"], b"").await;
    assert_exit(&o, 0);
    assert_eq!(json(&o), serde_json::json!(["readers"]));
    let o = c.shale(&["group", "list"], b"").await;
    assert_eq!(stdout(&o), "GROUP\nreaders\n");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_group_consumers_share_a_topic_and_each_record_is_printed_once() {
    let c = TestCluster::start(3).await;
    assert_exit(&c.shale(&["topic", "create", "shared", "-p", "4"], b"").await, 0);
    let lines: Vec<String> = (0..40).map(|i| format!("record {i}")).collect();
    assert_exit(&c.shale(&["produce", "shared"], (lines.join("\n") + "\n").as_bytes()).await, 0);
    let args = ["consume", "shared", "--group", "team", "--from-beginning"];
    let (a, b) = tokio::join!(c.shale(&args, b""), c.shale(&args, b""));
    assert_exit(&a, 0);
    assert_exit(&b, 0);
    let mut printed: Vec<String> = stdout(&a).lines().chain(stdout(&b).lines()).map(str::to_string).collect();
    printed.sort();
    let mut expected = lines.clone();
    expected.sort();
    assert_eq!(printed, expected, "every record printed once, by one of the two members");
    // Both left: the group is empty, everything committed.
    let o = c.shale(&["group", "describe", "team", "-o", "json"], b"").await;
    assert_exit(&o, 0);
    let g = json(&o);
    assert_eq!(g["state"], "empty", "{g}");
    assert_eq!(g["assignor"], "uniform", "{g}");
    assert!(g["members"].as_array().unwrap().is_empty(), "{g}");
    assert_eq!(g["total_lag"], 0, "{g}");
    assert!(stdout(&c.shale(&["group", "describe", "team"], b"").await).contains("state empty"));
    // A reset (on an empty group) and a delete.
    let o = c.shale(&["group", "reset-offsets", "team", "--topic", "shared", "--to-earliest", "--execute"], b"").await;
    assert_exit(&o, 0);
    assert_exit(&c.shale(&["group", "delete", "team"], b"").await, 0);
    let o = c.shale(&["group", "list", "-o", "json"], b"").await;
    assert_eq!(json(&o), serde_json::json!([]));
    let o = c.shale(&["group", "delete", "team"], b"").await;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("UNKNOWN_GROUP"), "{}", stderr(&o));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_status_and_bench_report_json() {
    let c = TestCluster::start(3).await;
    assert_exit(&c.shale(&["topic", "create", "b", "-p", "2"], b"").await, 0);
    let o = c.shale(&["cluster", "status", "-o", "json"], b"").await;
    assert_exit(&o, 0);
    let s = json(&o);
    let members = s["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m["health"] == "up"), "{s}");
    assert_eq!(s["partitions"].as_array().unwrap().len(), 2, "{s}");
    assert!(s["meta"]["leader"].as_u64().unwrap() >= 1);
    let o = c.shale(&["cluster", "status"], b"").await;
    assert_exit(&o, 0);
    assert!(stdout(&o).contains("MEMBERS") && stdout(&o).contains("b/1"), "{}", stdout(&o));

    // Leadership moves on request.
    let leader = s["partitions"][0]["leader"].as_u64().unwrap();
    let target = if leader == 3 { 2 } else { 3 };
    let o = c.shale(&["cluster", "transfer-leader", "b", "0", "--to", &target.to_string()], b"").await;
    assert_exit(&o, 0);
    assert_eq!(stdout(&o), format!("b/0: leader is now node {target}\n"));
    let o = c.shale(&["cluster", "remove-node", "42"], b"").await;
    assert_exit(&o, 1);
    assert!(stderr(&o).contains("remove node 42") && stderr(&o).contains("`shale cluster status`"), "{}", stderr(&o));

    // Runs of one 1 KiB batch (~8 records): both partitions get records to verify below.
    let bench = ["bench", "produce", "-t", "b", "-n", "300", "-s", "100", "-c", "2", "-o", "json"];
    let runs = ["--batch-max-bytes", "1KiB", "--keyless-run-batches", "1"];
    let o = c.shale(&[&bench[..], &runs[..]].concat(), b"").await;
    assert_exit(&o, 0);
    let r = json(&o);
    assert_eq!(r["records"], 300);
    assert_eq!(r["errors"], 0);
    assert_eq!(r["bytes"], 30_000);
    assert!(r["latency"]["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(r["latency"]["max_ms"].as_f64().unwrap() >= r["latency"]["p99_ms"].as_f64().unwrap());
    let o = c.shale(&["bench", "consume", "-t", "b", "-n", "300", "-o", "json"], b"").await;
    assert_exit(&o, 0);
    assert_eq!((&json(&o)["records"], &json(&o)["chain_verified"]), (&Value::from(300), &Value::from(true)));
    let o = c.shale(&["bench", "consume", "-t", "b", "-n", "300", "--no-verify"], b"").await;
    assert_exit(&o, 0);
    assert!(stdout(&o).contains("chain: not checked (--no-verify)"), "{}", stdout(&o));
    let o = c.shale(&["verify", "b", "--sweep", "-o", "json"], b"").await;
    assert_exit(&o, 0);
    let v = json(&o);
    let statuses: Vec<(u64, &str)> = v["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["partition"].as_u64().unwrap(), p["status"].as_str().unwrap()))
        .collect();
    assert_eq!(statuses, vec![(0, "agree"), (1, "agree")], "{v}");
    assert!(v["partitions"][0]["probes"].as_u64().unwrap() >= 2, "the sweep probes more than the newest offset: {v}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_status_with_a_member_down_prints_what_it_read_names_the_member_and_exits_3() {
    let mut c = TestCluster::start(3).await;
    assert_exit(&c.shale(&["topic", "create", "s", "-p", "2", "-r", "3"], b"").await, 0);
    let down_addr = c.bootstrap().split(',').nth(2).unwrap().to_string();
    c.stop(3).await;

    let o = c.shale(&["cluster", "status"], b"").await;
    assert_exit(&o, 3);
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(out.contains("MEMBERS") && out.contains("GROUPS") && out.contains("s/0") && out.contains("s/1"), "{out}");
    let row = out.lines().find(|l| l.starts_with('3')).unwrap_or_else(|| panic!("no row of node 3:\n{out}"));
    assert!(row.contains(&down_addr) && row.contains("unreachable ("), "{row}");
    assert!(err.contains("cluster status is incomplete: 1 of 3 members did not answer"), "{err}");
    let named = err.lines().find(|l| l.trim_start().starts_with("node 3 at")).unwrap_or_else(|| panic!("{err}"));
    assert!(
        named.contains(&format!("node 3 at {down_addr}: "))
            && named.len() > format!("node 3 at {down_addr}: ").len() + 2,
        "{named}"
    );
    assert!(!err.contains("node 1 at") && !err.contains("node 2 at"), "{err}");
    assert!(err.contains("hint: each member is asked at the address it advertises"), "{err}");

    // JSON: the same report on stdout, the members that answered up, the error in the member's row.
    let o = c.shale(&["cluster", "status", "-o", "json"], b"").await;
    assert_exit(&o, 3);
    let s = json(&o);
    let members = s["members"].as_array().unwrap();
    assert_eq!(members.iter().filter(|m| m["health"] == "up").count(), 2, "{s}");
    assert_eq!(members[2]["health"], "unreachable", "{s}");
    assert_eq!(members[2]["addr"], down_addr.as_str(), "{s}");
    assert!(members[2]["error"].as_str().is_some_and(|e| !e.is_empty()), "{s}");
    assert_eq!(s["partitions"].as_array().unwrap().len(), 2, "{s}");
    assert!(stderr(&o).contains("node 3 at"), "{}", stderr(&o));

    // Back up: every member answers, exit 0.
    c.restart(3).await;
    let o = c.shale(&["cluster", "status", "-o", "json"], b"").await;
    assert_exit(&o, 0);
    assert!(json(&o)["members"].as_array().unwrap().iter().all(|m| m["health"] == "up"), "{}", stdout(&o));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_reports_agreement_then_names_a_damaged_replica() {
    // No background scrubber: it would find and repair the damage this test plants for `verify`.
    let mut c = TestCluster::start_with(3, |c| c.scrub.enabled = false).await;
    assert_exit(&c.shale(&["topic", "create", "ledger", "-p", "1", "-r", "3"], b"").await, 0);
    let input: String = (0..40).map(|i| format!("entry-{i:03}\n")).collect();
    assert_exit(&c.shale(&["produce", "ledger"], input.as_bytes()).await, 0);
    // Verify compares at the newest offset every replica has applied: no wait needed.
    let o = c.shale(&["verify", "ledger", "--sweep", "--step", "8"], b"").await;
    assert_exit(&o, 0);
    assert!(stdout(&o).contains("OK: 1 partition(s), every replica agrees"), "{}", stdout(&o));
    let o = c.shale(&["verify", "ledger", "-o", "json"], b"").await;
    assert_exit(&o, 0);
    let v = json(&o);
    assert_eq!(v["partitions"][0]["status"], "agree");
    assert_eq!(v["partitions"][0]["detail"]["replicas"].as_array().unwrap().len(), 3);

    // Damage node 3's replica offline: flip one payload byte of a record in the middle.
    let victim = 3;
    c.stop(victim).await;
    let o = c.shale(&["cluster", "status", "-o", "json"], b"").await;
    // Exit 3: the report is printed, but a member did not answer (see the test below).
    assert_exit(&o, 3);
    let status = json(&o);
    let health: Vec<(u64, String)> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_u64().unwrap(), m["health"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(health, vec![(1, "up".into()), (2, "up".into()), (3, "unreachable".into())], "{status}");
    let (segment_path, position, offset) = find_record(c.data_dir(victim), b"entry-020");
    let mut bytes = fs::read(&segment_path).unwrap();
    bytes[position + 7] ^= 0x01;
    fs::write(&segment_path, &bytes).unwrap();

    let common::OfflineDamage { report, stream, damage } = common::verify_offline_damaged(c.data_dir(victim)).await;
    assert_eq!(stream["status"], "damaged", "{stream}");
    assert_eq!(stream["role"], "topic ledger partition 0, raft log", "named from the node's own metadata");
    assert_eq!(stream["holds"]["topic"], "ledger", "{stream}");
    assert_eq!(stream["holds"]["partition"], 0, "{stream}");
    assert_eq!(damage["offset"], offset, "{damage}");
    assert_eq!(damage["file"], segment_path.file_name().unwrap().to_string_lossy().as_ref());
    assert!(damage["detail"].as_str().unwrap().contains("CRC mismatch"), "{damage}");
    assert_eq!(report["damaged_streams"], 1, "only the flipped stream is damaged: {report}");
    let dir = c.data_dir(victim).to_string_lossy().into_owned();
    let o = common::run_shale(vec!["verify".into(), "--data-dir".into(), dir], Vec::new()).await;
    assert_exit(&o, 1);
    assert!(stdout(&o).contains(&format!("offset {offset}")), "{}", stdout(&o));

    // Online, after a restart: node 3 cannot serve the damaged partition (its Raft group refuses to
    // start on a corrupt log, so it answers at no offset) or, if it can, the sweep reads the
    // damaged stretch; either way node 3 alone is named, and an offset if one is named is the one.
    c.restart(victim).await;
    let o = c.shale(&["verify", "ledger", "--sweep", "--step", "8", "-o", "json"], b"").await;
    assert_exit(&o, 1);
    let v = json(&o);
    let p = &v["partitions"][0];
    assert!(p["status"] == "disagree" || p["status"] == "unavailable", "{v}");
    if p["status"] == "disagree" {
        assert_eq!(p["first_divergent_offset"], offset, "{v}");
    }
    let suspects: Vec<u64> = p["suspects"].as_array().unwrap().iter().map(|s| s["node_id"].as_u64().unwrap()).collect();
    assert_eq!(suspects, vec![victim], "{v}");
    let o = c.shale(&["verify", "ledger", "--sweep", "--step", "8"], b"").await;
    assert_exit(&o, 1);
    assert!(stdout(&o).contains("replica node 3"), "{}", stdout(&o));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn add_node_then_remove_node() {
    let mut c = TestCluster::start(3).await;
    let addr = c.start_joiner().await;
    let o = c.shale(&["cluster", "add-node", "4", &addr, "-o", "json"], b"").await;
    assert_exit(&o, 0);
    let ids: Vec<u64> = json(&o).as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, vec![1, 2, 3, 4]);
    let o = c.shale(&["cluster", "status", "-o", "json"], b"").await;
    assert_exit(&o, 0);
    let s = json(&o);
    assert_eq!(s["members"].as_array().unwrap().len(), 4, "{s}");
    assert!(s["members"].as_array().unwrap().iter().all(|m| m["health"] == "up"), "{s}");

    let o = c.shale(&["cluster", "remove-node", "4"], b"").await;
    assert_exit(&o, 0);
    assert!(stderr(&o).contains("removed node 4"), "{}", stderr(&o));
    let remaining: Vec<String> =
        stdout(&o).lines().skip(1).map(|l| l.split_whitespace().next().unwrap().to_string()).collect();
    assert_eq!(remaining, vec!["1", "2", "3"], "{}", stdout(&o));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follow_waits_for_new_records_until_max_records() {
    let c = TestCluster::start(3).await;
    assert_exit(&c.shale(&["topic", "create", "live", "-p", "2"], b"").await, 0);
    assert_exit(&c.shale(&["produce", "live", "--key", "k"], b"one\ntwo\n").await, 0);
    let args: Vec<String> =
        ["consume", "live", "--from-beginning", "--follow", "-n", "4", "--attempts", "20", "--bootstrap"]
            .iter()
            .map(|s| s.to_string())
            .chain([c.bootstrap()])
            .collect();
    let follower = tokio::spawn(common::run_shale(args, Vec::new()));
    assert_exit(&c.shale(&["produce", "live", "--key", "k"], b"three\nfour\n").await, 0);
    let o = tokio::time::timeout(common::WAIT, follower).await.expect("follow ends at --max-records").unwrap();
    assert_exit(&o, 0);
    assert_eq!(stdout(&o), "one\ntwo\nthree\nfour\n");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consume_from_a_time_and_reset_a_group_to_a_time() {
    let c = TestCluster::start(3).await;
    assert_exit(&c.shale(&["topic", "create", "timed", "-p", "1"], b"").await, 0);
    assert_exit(&c.shale(&["produce", "timed"], b"old-1\nold-2\n").await, 0);
    // The leader stamps records with its clock: a time strictly between the two writes.
    let now_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let between = now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_exit(&c.shale(&["produce", "timed"], b"new-1\nnew-2\n").await, 0);
    let t = between.to_string();
    let o = c.shale(&["consume", "timed", "--from-time", &t], b"").await;
    assert_exit(&o, 0);
    assert_eq!(stdout(&o), "new-1\nnew-2\n");
    // RFC 3339, and a time before every record.
    let o = c.shale(&["consume", "timed", "--from-time", "2000-01-01T00:00:00Z"], b"").await;
    assert_eq!(stdout(&o), "old-1\nold-2\nnew-1\nnew-2\n");
    // After every record: nothing to read (the end).
    let o = c.shale(&["consume", "timed", "--from-time", &(now_ms() + 60_000).to_string()], b"").await;
    assert_exit(&o, 0);
    assert_eq!(stdout(&o), "");
    assert_eq!(c.shale(&["consume", "timed", "--from-time", "yesterday"], b"").await.status.code(), Some(2));

    let o = c
        .shale(&["group", "reset-offsets", "g", "--topic", "timed", "--to-time", &t, "--execute", "-o", "json"], b"")
        .await;
    assert_exit(&o, 0);
    assert_eq!(json(&o)["partitions"][0]["new_offset"], 2, "{}", stdout(&o));
    let o = c.shale(&["consume", "timed", "--group", "g"], b"").await;
    assert_exit(&o, 0);
    assert_eq!(stdout(&o), "new-1\nnew-2\n");
    c.shutdown().await;
}
