//! The deployment files parse and agree with the code: probes hit the endpoints the worker
//! serves on the port its config listens on, the ConfigMap's config is accepted by the binary,
//! the IAM policy grants only what the worker needs, and the dashboard queries only metrics
//! that /metrics exports.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use currents_heap::telemetry::Metrics;
use currents_heap::telemetry::events::{
    EventsRead, HeapRequest, NotificationDropped, StoreRequest,
};
use serde::Deserialize;
use serde_json::Value as Json;
use support::TempDir;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn yaml(path: &str) -> Json {
    let text = std::fs::read_to_string(deploy(path)).unwrap();
    let doc = serde_norway::Deserializer::from_str(&text)
        .next()
        .expect("one document");
    Json::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn every_manifest_is_a_named_resource_in_one_namespace() {
    for entry in std::fs::read_dir(deploy("kubernetes")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let doc = yaml(&format!("kubernetes/{name}"));
        for field in ["apiVersion", "kind"] {
            assert!(doc[field].is_string(), "{name}: no {field}");
        }
        assert!(
            doc["metadata"]["name"]
                .as_str()
                .is_some_and(|n| !n.is_empty()),
            "{name}"
        );
        assert_eq!(doc["metadata"]["namespace"], "currents-heap", "{name}");
    }
}

fn container(pod_spec: &Json) -> &Json {
    &pod_spec["containers"][0]
}

#[test]
fn the_deployment_probes_the_worker_where_it_listens_and_locks_it_down() {
    let deployment = yaml("kubernetes/deployment.yaml");
    assert_eq!(deployment["kind"], "Deployment");
    assert_eq!(
        deployment["spec"]["replicas"], 1,
        "the ledger assumes one worker"
    );
    let pod = &deployment["spec"]["template"]["spec"];
    let c = container(pod);
    assert_eq!(c["args"][0], "run");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["containerPort"], 9090);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    for kind in ["requests", "limits"] {
        assert!(
            c["resources"][kind]["memory"].is_string(),
            "no memory {kind}"
        );
    }
    assert!(
        pod["terminationGracePeriodSeconds"].as_u64().unwrap() > 30,
        "longer than --shutdown-timeout"
    );
    let config = config_map_toml();
    assert!(config.contains("listen = \"0.0.0.0:9090\""));
}

fn config_map_toml() -> String {
    yaml("kubernetes/configmap.yaml")["data"]["config.toml"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_config_map_and_the_job_are_accepted_by_the_binary() {
    let dir = TempDir::new("deploy");
    let path = dir.0.join("config.toml");
    std::fs::write(&path, config_map_toml()).unwrap();
    let job = yaml("kubernetes/backfill-job.yaml");
    let args: Vec<String> = container(&job["spec"]["template"]["spec"])["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace("/etc/currents-heap/config.toml", path.to_str().unwrap())
        })
        .collect();
    assert_eq!(args[0], "backfill");
    assert!(
        !args.iter().any(|a| a == "--no-handover"),
        "the Job hands its range to the Deployment's worker: beside it, the two would send up to twice the rate limit"
    );
    for command in [
        vec![
            "run".to_string(),
            "--config".into(),
            path.to_str().unwrap().into(),
        ],
        args,
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_currents-heap"))
            .args(&command)
            .arg("--print-config")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(
            printed.contains("source = \"s3://my-braze-currents/currents/\""),
            "{printed}"
        );
    }
}

#[test]
fn the_iam_policy_grants_read_on_the_source_read_write_on_the_state_and_the_queue_only() {
    let policy: Json =
        serde_json::from_str(&std::fs::read_to_string(deploy("iam-policy.json")).unwrap()).unwrap();
    let config = config_map_toml();
    assert!(
        config.contains("s3://my-braze-currents/currents")
            && config.contains("s3://my-currents-heap-state/prod")
    );
    for statement in policy["Statement"].as_array().unwrap() {
        let actions: Vec<&str> = match &statement["Action"] {
            Json::String(a) => vec![a.as_str()],
            Json::Array(a) => a.iter().map(|a| a.as_str().unwrap()).collect(),
            other => panic!("{other}"),
        };
        let resource = statement["Resource"].as_str().unwrap();
        for action in actions {
            match action {
                "s3:ListBucket" => assert!(
                    statement["Condition"]["StringLike"]["s3:prefix"].is_array(),
                    "listing is limited to a prefix"
                ),
                "s3:GetObject" => assert!(
                    resource.ends_with("my-braze-currents/currents/*")
                        || resource.ends_with("my-currents-heap-state/prod/*")
                ),
                "s3:PutObject" | "s3:DeleteObject" => assert_eq!(
                    resource, "arn:aws:s3:::my-currents-heap-state/prod/*",
                    "writes only to the state"
                ),
                // What `--sqs-queue-url` calls (the batch calls need the same actions; the
                // attributes are read once at start), on the one queue.
                "sqs:ReceiveMessage"
                | "sqs:DeleteMessage"
                | "sqs:ChangeMessageVisibility"
                | "sqs:GetQueueAttributes" => {
                    assert_eq!(resource, "arn:aws:sqs:us-east-1:123456789012:currents-heap")
                }
                other => panic!("unexpected action {other}"),
            }
        }
    }
}

#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let dashboard: Json =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana-dashboard.json")).unwrap())
            .unwrap();
    let metrics = Metrics::new();
    // Families show their series only once a label value exists.
    EventsRead {
        event_type: "x",
        count: 1,
    }
    .emit(&metrics);
    HeapRequest {
        status: Some(200),
        latency: std::time::Duration::from_millis(5),
    }
    .emit(&metrics);
    StoreRequest {
        service: "s3",
        operation: "ListObjectsV2",
    }
    .emit(&metrics);
    NotificationDropped::TestEvent.emit(&metrics);
    let exported: BTreeSet<String> = metrics
        .render()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect();
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("currents_heap_") {
                    queried.insert(word.to_string());
                }
            }
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");
    let missing: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics nobody exports: {missing:?}"
    );
}

#[test]
fn the_image_runs_as_non_root_on_a_minimal_base() {
    let dockerfile = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    let final_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    assert!(
        final_stage.starts_with("gcr.io/distroless/"),
        "{final_stage}"
    );
    assert!(final_stage.contains("USER nonroot"));
    assert!(dockerfile.contains("--locked"));
}

#[test]
fn the_image_build_resolves_the_workspace_and_builds_only_the_production_crate() {
    let dockerfile = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    let build_stage = dockerfile.rsplit("\nFROM ").nth(1).unwrap();
    let manifest: toml::Table = toml::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap(),
    )
    .unwrap();
    // Cargo reads every member's manifest to resolve the workspace, even to build one crate.
    for member in manifest["workspace"]["members"].as_array().unwrap() {
        let member = member.as_str().unwrap();
        let wanted = match member {
            "." => "Cargo.toml".to_string(),
            other => format!("{other}/Cargo.toml"),
        };
        assert!(
            build_stage
                .lines()
                .any(|l| l.starts_with("COPY ") && l.split_whitespace().any(|w| w == wanted)),
            "the build stage does not copy {wanted}"
        );
    }
    let builds: Vec<&str> = build_stage
        .split("&&")
        .flat_map(|part| part.split('\n'))
        .filter(|part| part.contains("cargo build"))
        .collect();
    assert!(!builds.is_empty());
    for build in builds {
        assert!(
            build.contains("--locked") && build.contains("-p currents-heap"),
            "builds the production crate alone, from the lock file: {build}"
        );
    }
}
