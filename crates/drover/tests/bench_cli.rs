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
    assert!(report["process_peak_rss_mb"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_rejects_bad_arguments_with_exit_2() {
    let out = cargo_bin_cmd!("drover").args(["bench", "--workloads", "w9"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown workload \"w9\""));
}
