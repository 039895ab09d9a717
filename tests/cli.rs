//! The `eventstream` command end to end: serve, pub (TCP and UDP), sub, health, signals, and
//! one-line errors instead of panics.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_eventstream");

struct Served {
    child: Child,
    grpc: String,
    /// Kept open: the server's log goes there.
    _log: BufReader<std::process::ChildStderr>,
    tcp: String,
    udp: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(extra: &[&str]) -> Served {
    let mut child = Command::new(BIN)
        // The tests' servers are not bridged, whatever the environment says.
        .env_remove("EVENTSTREAM_BRIDGE")
        .args([
            "serve",
            "--bind",
            "127.0.0.1",
            "--tcp-port",
            "0",
            "--udp-port",
            "0",
        ])
        .args([
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            "--shards",
            "4",
            "--no-pin",
        ])
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut log = BufReader::new(child.stderr.take().unwrap());
    log.read_line(&mut line).unwrap();
    // "eventstream 0.1.0 serving: native tcp 127.0.0.1:P, udp 127.0.0.1:Q"
    let addr_after = |key: &str| {
        let rest = &line[line
            .find(key)
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
            + key.len()..];
        rest.split([',', '\n']).next().unwrap().trim().to_owned()
    };
    Served {
        grpc: addr_after("grpc "),
        _log: log,
        tcp: addr_after("native tcp "),
        udp: addr_after("udp "),
        child,
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn the_readme_walkthrough_prints_exactly_the_two_sensor_events() {
    let served = serve(&[]);
    let sub = Command::new(BIN)
        .args([
            "sub",
            "--server",
            &served.tcp,
            "sensors/*",
            "--count",
            "2",
            "--json",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the subscription is registered (it shows in health's counters).
    for _ in 0..100 {
        let out = run(&["health", "--server", &served.tcp]);
        if String::from_utf8_lossy(&out.stdout).contains("subscriptions=1") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let p1 = run(&["pub", "--server", &served.tcp, "sensors/t1", "a"]);
    assert!(p1.status.success(), "{p1:?}");
    assert_eq!(
        String::from_utf8_lossy(&p1.stdout),
        "sensors/t1 sequence=1\n"
    );
    assert!(run(&["pub", "--server", &served.tcp, "other/x", "b"])
        .status
        .success());
    let p3 = run(&[
        "pub",
        "--udp",
        "--server",
        &served.udp,
        "--priority",
        "HIGH",
        "--meta",
        "k=v",
        "sensors/t2",
        "c",
    ]);
    assert!(p3.status.success(), "{p3:?}");
    let out = sub.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["topic"], "sensors/t1");
    assert_eq!(lines[0]["payload"], "a");
    assert_eq!(lines[0]["priority"], "MEDIUM");
    assert_eq!(lines[0]["sequence"], 1);
    assert_eq!(lines[1]["topic"], "sensors/t2");
    assert_eq!(lines[1]["payload"], "c");
    assert_eq!(lines[1]["priority"], "HIGH");
    assert_eq!(lines[1]["metadata"]["k"], "v");
    for l in &lines {
        assert_eq!(l["id"].as_str().unwrap().len(), 36);
        assert!(l["timestamp_ns"].as_i64().unwrap() > 0);
    }
}

#[test]
fn binary_payloads_come_out_as_base64_and_stdin_payloads_work() {
    let served = serve(&[]);
    let sub = Command::new(BIN)
        .args([
            "sub",
            "--server",
            &served.tcp,
            "bin",
            "--count",
            "1",
            "--json",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut publisher = Command::new(BIN)
        .args(["pub", "--server", &served.tcp, "bin", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    publisher
        .stdin
        .take()
        .unwrap()
        .write_all(&[0xff, 0x00, 0x01])
        .unwrap();
    assert!(publisher.wait().unwrap().success());
    let out = sub.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["payload_base64"], "/wAB");
    assert!(v.get("payload").is_none());
}

#[test]
fn health_exits_zero_and_sigterm_stops_the_server_cleanly() {
    let mut served = serve(&[]);
    let out = run(&["health", "--server", &served.tcp]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("healthy"),
        "{out:?}"
    );
    unsafe { libc::kill(served.child.id() as i32, libc::SIGTERM) };
    let status = served.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let down = run(&["health", "--server", &served.tcp]);
    assert!(!down.status.success());
}

/// Runs the CLI with `args` and checks it failed with one `eventstream: error:` line that
/// contains `needle`, and no panic.
fn fails_in_one_line(args: &[&str], needle: &str) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(
        stderr.starts_with("eventstream: error:") && stderr.contains(needle),
        "{args:?}: {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn errors_are_one_clear_line_and_a_nonzero_exit() {
    let served = serve(&[]);
    fails_in_one_line(
        &["pub", "--server", &served.tcp, "bad//topic", "x"],
        "empty segment",
    );
    fails_in_one_line(&["sub", "--server", &served.tcp, "a/**/b"], "'**'");
    fails_in_one_line(&["health", "--server", "127.0.0.1:1"], "cannot reach");
    // A busy port names its key; too many pinned shards names its key.
    let port = served.tcp.rsplit(':').next().unwrap();
    fails_in_one_line(
        &[
            "serve",
            "--bind",
            "127.0.0.1",
            "--tcp-port",
            port,
            "--udp-port",
            "0",
            "--no-pin",
            "--shards",
            "1",
        ],
        "native.port",
    );
    fails_in_one_line(&["serve", "--shards", "4096"], "shards.count");
    fails_in_one_line(
        &[
            "serve",
            "--tcp-port",
            "0",
            "--udp-port",
            "0",
            "--shards",
            "512",
        ],
        "shards.count",
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, "native:\n  prot: 1\n").unwrap();
    fails_in_one_line(&["serve", "--config", file.to_str().unwrap()], "prot");
    fails_in_one_line(
        &["serve", "--config", "/nonexistent/eventstream.yaml"],
        "/nonexistent/eventstream.yaml",
    );
}

#[test]
fn pub_sub_and_health_over_grpc() {
    let served = serve(&[]);
    let sub = Command::new(BIN)
        .args([
            "sub",
            "--grpc",
            "--server",
            &served.grpc,
            "orders/*",
            "--count",
            "2",
            "--json",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        let out = run(&["health", "--server", &served.tcp]);
        if String::from_utf8_lossy(&out.stdout).contains("subscriptions=1") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let p = run(&[
        "pub",
        "--grpc",
        "--server",
        &served.grpc,
        "--meta",
        "k=v",
        "orders/new",
        "one",
    ]);
    assert!(p.status.success(), "{p:?}");
    assert!(run(&["pub", "--server", &served.tcp, "orders/old", "two"])
        .status
        .success());
    let out = sub.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut topics: Vec<&str> = lines.iter().map(|l| l["topic"].as_str().unwrap()).collect();
    topics.sort();
    assert_eq!(topics, vec!["orders/new", "orders/old"]);
    let health = run(&["health", "--grpc", "--server", &served.grpc]);
    assert!(health.status.success());
    assert!(String::from_utf8_lossy(&health.stdout).starts_with("healthy"));
    let bad = run(&["pub", "--grpc", "--server", &served.grpc, "bad//topic", "x"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("status 3"));
}

#[test]
fn a_starred_topic_or_pattern_gets_the_rule_in_one_line() {
    let served = serve(&[]);
    let topic_rule = "a topic never contains '*'";
    fails_in_one_line(&["pub", "--server", &served.tcp, "a*b", "x"], topic_rule);
    fails_in_one_line(
        &["pub", "--grpc", "--server", &served.grpc, "a*b", "x"],
        topic_rule,
    );
    // The UDP door never answers: the command itself refuses to send what would be dropped.
    fails_in_one_line(
        &["pub", "--udp", "--server", &served.udp, "a*b", "x"],
        topic_rule,
    );
    let pattern_rule = "must be exactly '*' or, as the last segment, '**'";
    fails_in_one_line(
        &["sub", "--server", &served.tcp, "sensors/t*"],
        pattern_rule,
    );
    fails_in_one_line(
        &["sub", "--grpc", "--server", &served.grpc, "sensors/t*"],
        pattern_rule,
    );
}
