//! `drover bench` end to end, small: it starts its own nats-server, controller and
//! agents, runs the workloads (w3 checks its own outcomes) and prints JSON.

use assert_cmd::cargo::cargo_bin_cmd;
use std::time::Duration;

#[test]
fn bench_runs_its_workloads_and_reports_json() {
    let out = cargo_bin_cmd!("drover")
        .args(["bench", "--nodes", "3", "--runs", "1", "--workloads", "floor,w1,w3", "-o", "json"])
        .timeout(Duration::from_secs(120))
        .output()
        .expect("drover bench runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "drover bench failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let figures = report["figures"].as_array().expect("figures");
    let names: Vec<(&str, u64)> =
        figures.iter().map(|f| (f["workload"].as_str().unwrap(), f["nodes"].as_u64().unwrap())).collect();
    assert_eq!(names, [("floor", 3), ("w1", 3), ("w3", 20)], "{report}");
    let w1 = &figures[1];
    assert!(w1["median_ms"].as_f64().unwrap() > 0.0);
    assert!(w1["ratio"].as_f64().unwrap() > 0.0, "w1 is compared with the floor: {w1}");
    assert!(w1["node_p99_ms"].as_f64().is_some());
    // The measured runs only (each workload's warm-up run is not counted).
    assert_eq!(w1["runs_ms"].as_array().map(Vec::len), Some(1), "{w1}");
    // NATS messages per node-step, read from the server: the floor is one request and
    // one reply (it runs on the fleet's server, so a heartbeat may land in its count); a
    // node-step at least sends its command and gets its answer.
    let floor = &figures[0];
    assert!(floor["note"].as_str().unwrap().contains("same server as the fleet"), "{floor}");
    assert_eq!(floor["runs_ms"].as_array().map(Vec::len), Some(1), "{floor}");
    let floor_msgs = &floor["messages"];
    assert_eq!(floor_msgs["node_steps"].as_u64(), Some(3), "3 requests, the warm-up not counted: {floor_msgs}");
    let floor_in = floor_msgs["msgs_in"].as_f64().unwrap();
    assert!((2.0..3.5).contains(&floor_in), "{floor_msgs}");
    // What the floor cost: its process and its server.
    assert!(floor["floor_cost"]["process_cpu_s"].as_f64().is_some_and(|s| s >= 0.0), "{floor}");
    assert!(floor["floor_cost"]["nats_cpu_s"].as_f64().is_some_and(|s| s >= 0.0), "{floor}");
    let w1_msgs = &w1["messages"];
    assert_eq!(w1_msgs["node_steps"].as_u64(), Some(3), "{w1_msgs}");
    assert!(w1_msgs["msgs_in"].as_f64().unwrap() >= 2.0, "{w1_msgs}");
    assert!(report["process_peak_rss_mb"].as_f64().unwrap() > 0.0);
}

/// Stopped by SIGTERM mid-run, the bench stops what it started: no nats-server, agent
/// or floor process is left behind.
#[test]
fn bench_stopped_by_sigterm_leaves_no_process_behind() {
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin!("drover"))
        .args(["bench", "--nodes", "5", "--runs", "100000", "--workloads", "floor,w1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("drover bench starts");
    // Wait until the fleet is up and the runs go: its nats-server, agent process and
    // floor process.
    let started = std::time::Instant::now();
    let ours = || children_of(child.id());
    let is_floor =
        |p: &u32| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.windows(11).any(|w| w == b"bench-floor"));
    while ours().len() < 3 || !ours().iter().any(is_floor) {
        assert!(started.elapsed() < Duration::from_secs(90), "the bench never started its fleet and floor");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let started_children = ours();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().expect("bench exits");
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut stderr).expect("stderr");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let left: Vec<u32> = started_children.into_iter().filter(|&p| alive(p)).collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

/// Running (not a zombie waiting to be reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z")))
        .unwrap_or(false)
}

/// The pids whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_string)))
                .flatten()
                .is_some_and(|ppid| ppid == pid.to_string())
        })
        .collect()
}

#[test]
fn bench_rejects_bad_arguments_with_exit_2() {
    let out = cargo_bin_cmd!("drover").args(["bench", "--workloads", "w9"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown workload \"w9\""));
}
