//! The deployment files parse and agree with the code: probes hit the endpoints the worker
//! serves on the port its config listens on, the ConfigMap's config is accepted by the binary,
//! the IAM policy grants only what the worker needs, and the dashboard queries only metrics
//! that /metrics exports. Two replicas (a sender holding the lease and a ready standby) are
//! never both down by a rollout or a drain, and each stop has time to release the lease.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use currents_heap::commands::config::HumanDuration;
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
        deployment["spec"]["replicas"], 2,
        "one sender (the lease holder) and a hot standby"
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

/// The lease's metrics (issue 20), by the names the lease's implementation exports.
const LEASE_METRICS: [&str; 3] = [
    "currents_heap_lease_held",
    "currents_heap_lease_transitions_total",
    "currents_heap_lease_renewal_age_seconds",
];

/// TODO(merger, issue 20): the dashboard's lease panels query these, and src/telemetry does not
/// export them yet. Once it does, emit them in `the_dashboard_queries_only_exported_metrics`
/// (a transition, so the labelled counter shows a series) and empty this list: the registry
/// check then covers them like every other metric (the test fails until the list is emptied).
const LEASE_METRICS_NOT_YET_EXPORTED: &[&str] = &[];

fn dashboard() -> Json {
    serde_json::from_str(&std::fs::read_to_string(deploy("grafana-dashboard.json")).unwrap())
        .unwrap()
}

/// The metric names the panels' queries use.
fn queried_metrics(panels: &Json) -> BTreeSet<String> {
    let mut queried = BTreeSet::new();
    for panel in panels.as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("currents_heap_") {
                    queried.insert(word.to_string());
                }
            }
        }
    }
    queried
}

#[test]
fn the_dashboard_queries_only_exported_metrics() {
    let dashboard = dashboard();
    let metrics = Metrics::new();
    // Families show their series only once a label value exists.
    metrics.lease_role(currents_heap::telemetry::LeaseRole::Held);
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
    let queried = queried_metrics(&dashboard["panels"]);
    assert!(queried.len() >= 10, "{queried:?}");
    let missing: Vec<&String> = queried
        .difference(&exported)
        .filter(|name| !LEASE_METRICS_NOT_YET_EXPORTED.contains(&name.as_str()))
        .collect();
    let exported_now: Vec<&&str> = LEASE_METRICS_NOT_YET_EXPORTED
        .iter()
        .filter(|name| exported.contains(**name))
        .collect();
    assert!(
        exported_now.is_empty(),
        "exported now: emit them above and take them off LEASE_METRICS_NOT_YET_EXPORTED: {exported_now:?}"
    );
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

/// The effective `run` configuration of the ConfigMap, as the binary prints it.
fn effective_run_config() -> toml::Table {
    let dir = TempDir::new("deploy-effective");
    let path = dir.0.join("config.toml");
    std::fs::write(&path, config_map_toml()).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_currents-heap"))
        .args(["run", "--config", path.to_str().unwrap(), "--print-config"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    toml::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap()
}

#[test]
fn a_rollout_or_a_lost_node_leaves_a_ready_replica_to_take_the_lease() {
    let deployment = yaml("kubernetes/deployment.yaml");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 2, "a sender and a hot standby");
    assert_eq!(spec["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0,
        "a rollout starts the new pod before it stops an old one: never zero ready"
    );
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxSurge"], 1);
    let pod_labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&spec["selector"]["matchLabels"], pod_labels);

    let preferred = spec["template"]["spec"]["affinity"]["podAntiAffinity"]
        ["preferredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .expect("anti-affinity across nodes");
    assert!(
        preferred.iter().any(|term| {
            let term = &term["podAffinityTerm"];
            term["topologyKey"] == "kubernetes.io/hostname"
                && &term["labelSelector"]["matchLabels"] == pod_labels
        }),
        "the replicas prefer different nodes: {preferred:?}"
    );
    assert_eq!(
        container(&spec["template"]["spec"])["readinessProbe"]["httpGet"]["path"],
        "/readyz",
        "a rollout waits for the new pod (a standby, ready) before stopping an old one"
    );
}

#[test]
fn a_drain_evicts_one_replica_at_a_time() {
    let pdb = yaml("kubernetes/pdb.yaml");
    let deployment = yaml("kubernetes/deployment.yaml");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(pdb["kind"], "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"],
        "the budget covers the Deployment's pods"
    );
    assert!(
        pdb["spec"]["minAvailable"].as_u64() < deployment["spec"]["replicas"].as_u64(),
        "a budget of every replica would block drains for ever"
    );
}

#[test]
fn the_grace_period_covers_the_drain_the_checkpoints_and_the_release() {
    let deployment = yaml("kubernetes/deployment.yaml");
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("a grace period");
    let config = effective_run_config();
    let shutdown_timeout: HumanDuration = config["shutdown_timeout"]
        .as_str()
        .expect("shutdown_timeout in the effective config")
        .parse()
        .unwrap();
    // After the drain (--shutdown-timeout, then about a second to abandon the rest) come the
    // checkpoint writes and the lease's release: 30 s leaves them a retried store request.
    // Killed before the release, the standby waits out the lease (15 s) instead of ~2 s.
    assert!(
        Duration::from_secs(grace) >= shutdown_timeout.get() + Duration::from_secs(30),
        "terminationGracePeriodSeconds {grace} < --shutdown-timeout {shutdown_timeout} + 30 s"
    );
}

#[test]
fn the_dashboard_shows_who_sends() {
    let queried = queried_metrics(&dashboard()["panels"]);
    let lease: BTreeSet<&str> = queried
        .iter()
        .map(String::as_str)
        .filter(|name| name.starts_with("currents_heap_lease_"))
        .collect();
    assert_eq!(
        lease,
        BTreeSet::from(LEASE_METRICS),
        "the lease's panels query exactly the metrics the lease exports"
    );
}

#[test]
fn the_readme_names_every_kind_of_manifest() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let deploying = readme
        .split("\n## Deploying\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Deploying section");
    for entry in std::fs::read_dir(deploy("kubernetes")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let kind = yaml(&format!("kubernetes/{name}"))["kind"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            deploying.contains(&format!("`{kind}`")),
            "README's Deploying section does not list the {kind} in {name}"
        );
    }
}
