//! The deploy kit parses, renders and agrees with the code. Every kustomization under
//! deploy/kubernetes/ is rendered with kubectl's built-in kustomize (as `kubectl apply -k`
//! would): each cloud's overlay gives the worker that cloud's workload identity and a config
//! the binary accepts; the backfill Job is outside what an overlay applies and starts no range
//! by itself; probes hit the endpoints the worker serves on the port its config listens on; the
//! grace period covers the stop bound; the IAM policy grants only what the worker needs; the
//! dashboard and the alert rules query only metrics that /metrics exports; the rules file and
//! the PrometheusRule hold the same rules, each with its runbook. Two replicas (a sender holding
//! the lease and a ready standby) are never both down by a rollout or a drain.
//!
//! kubectl must be on the PATH (or in `KUBECTL`): `.ci/run` checks that it is.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use currents_heap::commands::config::HumanDuration;
use serde::Deserialize;
use serde_json::Value as Json;
use support::TempDir;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn deploy(path: &str) -> PathBuf {
    root().join("deploy").join(path)
}

/// Every YAML document of a text, as JSON values.
fn documents(text: &str, what: &str) -> Vec<Json> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Json::deserialize(doc).unwrap_or_else(|e| panic!("{what}: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The one document of a YAML file under deploy/.
fn yaml(path: &str) -> Json {
    let text = std::fs::read_to_string(deploy(path)).unwrap();
    let mut docs = documents(&text, path);
    assert_eq!(docs.len(), 1, "{path}: one document");
    docs.remove(0)
}

/// The clouds: each has a worker overlay and a backfill Job directory of its name.
const CLOUDS: [&str; 3] = ["eks", "aks", "gke"];

/// A kustomization under deploy/kubernetes/, rendered as `kubectl apply -k` would.
fn render(dir: &str) -> Vec<Json> {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let path = deploy("kubernetes").join(dir);
    let output = Command::new(&kubectl)
        .arg("kustomize")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("{kubectl} kustomize (kubectl renders the deploy kit): {e}"));
    assert!(
        output.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    documents(&String::from_utf8_lossy(&output.stdout), dir)
}

fn find<'a>(docs: &'a [Json], kind: &str, name: &str) -> &'a Json {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {docs:#?}"))
}

fn kinds(docs: &[Json]) -> Vec<String> {
    let mut kinds: Vec<String> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_string())
        .collect();
    kinds.sort();
    kinds
}

/// Every kustomization in the tree (the CI renders the same list and fails on a new one).
fn kustomizations() -> Vec<String> {
    fn walk(dir: &Path, base: &Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, base, found);
            } else if path.file_name().unwrap() == "kustomization.yaml" {
                let dir = path.parent().unwrap().strip_prefix(base).unwrap();
                found.push(dir.to_str().unwrap().to_string());
            }
        }
    }
    let base = deploy("kubernetes");
    let mut found = Vec::new();
    walk(&base, &base, &mut found);
    found.sort();
    found
}

#[test]
fn every_kustomization_renders_named_resources_in_one_namespace() {
    let all = kustomizations();
    for wanted in ["base", "monitoring"]
        .into_iter()
        .map(String::from)
        .chain(CLOUDS.iter().map(|c| format!("overlays/{c}")))
        .chain(CLOUDS.iter().map(|c| format!("jobs/backfill/{c}")))
    {
        assert!(all.contains(&wanted), "no kustomization {wanted}: {all:?}");
    }
    for dir in &all {
        for doc in render(dir) {
            for field in ["apiVersion", "kind"] {
                assert!(doc[field].is_string(), "{dir}: no {field}");
            }
            assert!(
                doc["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty()),
                "{dir}"
            );
            assert_eq!(doc["metadata"]["namespace"], "currents-heap", "{dir}");
        }
    }
}

#[test]
fn an_overlay_applies_the_worker_and_never_a_backfill() {
    for cloud in CLOUDS {
        let docs = render(&format!("overlays/{cloud}"));
        assert_eq!(
            kinds(&docs),
            [
                "ConfigMap",
                "ConfigMap",
                "Deployment",
                "PodDisruptionBudget",
                "Service",
                "ServiceAccount"
            ],
            "{cloud}: `kubectl apply -k overlays/{cloud}` starts the worker and nothing else (the backfill Job is applied on its own)"
        );
    }
}

fn container(pod_spec: &Json) -> &Json {
    &pod_spec["containers"][0]
}

fn annotations(doc: &Json) -> BTreeSet<String> {
    doc["metadata"]["annotations"]
        .as_object()
        .map(|a| a.keys().cloned().collect())
        .unwrap_or_default()
}

/// The identity annotations of the three clouds' workload identities.
const IDENTITY_ANNOTATIONS: [&str; 3] = [
    "eks.amazonaws.com/role-arn",
    "azure.workload.identity/client-id",
    "iam.gke.io/gcp-service-account",
];

#[test]
fn each_overlay_gives_the_worker_its_clouds_workload_identity() {
    for cloud in CLOUDS {
        let docs = render(&format!("overlays/{cloud}"));
        let account = find(&docs, "ServiceAccount", "currents-heap");
        let deployment = find(&docs, "Deployment", "currents-heap");
        let pod = &deployment["spec"]["template"];
        assert_eq!(pod["spec"]["serviceAccountName"], "currents-heap");
        let (wanted, value_ok): (&str, fn(&str) -> bool) = match cloud {
            "eks" => ("eks.amazonaws.com/role-arn", |v| {
                v.starts_with("arn:aws:iam::") && v.contains(":role/")
            }),
            "aks" => ("azure.workload.identity/client-id", |v| {
                v.len() == 36 && v.chars().filter(|c| *c == '-').count() == 4
            }),
            _ => ("iam.gke.io/gcp-service-account", |v| {
                v.ends_with(".iam.gserviceaccount.com")
            }),
        };
        let value = account["metadata"]["annotations"][wanted]
            .as_str()
            .unwrap_or_else(|| panic!("{cloud}: the ServiceAccount has no {wanted}"));
        assert!(value_ok(value), "{cloud}: {wanted}: {value}");
        let others: Vec<&str> = IDENTITY_ANNOTATIONS
            .into_iter()
            .filter(|a| *a != wanted && annotations(account).contains(*a))
            .collect();
        assert!(
            others.is_empty(),
            "{cloud}: another cloud's identity: {others:?}"
        );
        // AKS's webhook mutates only pods labelled so: the Deployment's and the Job's.
        let label = |pod: &Json| pod["metadata"]["labels"]["azure.workload.identity/use"].clone();
        let job = render(&format!("jobs/backfill/{cloud}"));
        let job_pod = &find(&job, "Job", "currents-heap-backfill")["spec"]["template"];
        if cloud == "aks" {
            assert_eq!(label(pod), "true", "aks: the worker's pods opt in");
            assert_eq!(label(job_pod), "true", "aks: the backfill's pods opt in");
        } else {
            assert!(label(pod).is_null() && label(job_pod).is_null(), "{cloud}");
        }
    }
}

fn config_toml(docs: &[Json]) -> String {
    find(docs, "ConfigMap", "currents-heap")["data"]["config.toml"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The effective `run` configuration of a config.toml, as the binary prints it.
fn effective_run_config(config: &str) -> toml::Table {
    let dir = TempDir::new("deploy-effective");
    let path = dir.0.join("config.toml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_currents-heap"))
        .args(["run", "--config", path.to_str().unwrap(), "--print-config"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{config}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    toml::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap()
}

#[test]
fn each_overlays_config_is_accepted_by_the_binary_and_names_its_clouds_locations() {
    let base = effective_run_config(&config_toml(&render("base")));
    for (cloud, scheme) in [("eks", "s3://"), ("aks", "az://"), ("gke", "gs://")] {
        let docs = render(&format!("overlays/{cloud}"));
        let effective = effective_run_config(&config_toml(&docs));
        for key in ["source", "state"] {
            let location = effective[key].as_str().unwrap();
            assert!(location.starts_with(scheme), "{cloud}: {key} = {location}");
        }
        // The overlay changes the locations only: the probes use `listen`'s port, the Secret
        // is mounted at heap_app_id_file.
        for (key, value) in &base {
            if key != "source" && key != "state" {
                assert_eq!(Some(value), effective.get(key), "{cloud}: {key}");
            }
        }
        let env = &find(&docs, "ConfigMap", "currents-heap-env")["data"];
        match cloud {
            "eks" => assert!(env["AWS_REGION"].is_string(), "eks: the region"),
            "aks" => assert!(
                env["AZURE_STORAGE_ACCOUNT_NAME"].is_string(),
                "aks: the account"
            ),
            _ => {}
        }
    }
}

/// The worker's Deployment and PodDisruptionBudget of each overlay.
fn each_overlays_worker() -> Vec<(&'static str, Vec<Json>)> {
    CLOUDS
        .into_iter()
        .map(|cloud| (cloud, render(&format!("overlays/{cloud}"))))
        .collect()
}

#[test]
fn the_deployment_probes_the_worker_where_it_listens_and_locks_it_down() {
    for (cloud, docs) in each_overlays_worker() {
        let deployment = find(&docs, "Deployment", "currents-heap");
        assert_eq!(
            deployment["spec"]["replicas"], 2,
            "{cloud}: one sender (the lease holder) and a hot standby"
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
                "{cloud}: no memory {kind}"
            );
        }
        assert_eq!(
            c["envFrom"][0]["configMapRef"]["name"], "currents-heap-env",
            "{cloud}: the cloud's environment"
        );
        let effective = effective_run_config(&config_toml(&docs));
        assert_eq!(
            effective["listen"].as_str(),
            Some("0.0.0.0:9090"),
            "{cloud}"
        );
    }
}

/// The backfill Job's container arguments with the range given, the config at `config`.
fn job_args(job: &Json, config: &Path, from: &str, to: &str) -> Vec<String> {
    container(&job["spec"]["template"]["spec"])["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace("/etc/currents-heap/config.toml", config.to_str().unwrap())
                .replace("$(BACKFILL_FROM)", from)
                .replace("$(BACKFILL_TO)", to)
        })
        .collect()
}

#[test]
fn the_backfill_job_runs_only_the_range_the_operator_gives_with_the_workers_config() {
    for cloud in CLOUDS {
        let worker = render(&format!("overlays/{cloud}"));
        let docs = render(&format!("jobs/backfill/{cloud}"));
        assert_eq!(
            kinds(&docs),
            ["ConfigMap", "Job"],
            "{cloud}: the Job and its range"
        );
        let job = find(&docs, "Job", "currents-heap-backfill");
        let pod = &job["spec"]["template"]["spec"];
        let c = container(pod);
        // It uses the worker's identity and config by name, applied by the overlay.
        let account = pod["serviceAccountName"].as_str().unwrap();
        find(&worker, "ServiceAccount", account);
        for volume in pod["volumes"].as_array().unwrap() {
            if let Some(name) = volume["configMap"]["name"].as_str() {
                find(&worker, "ConfigMap", name);
            }
        }
        find(
            &worker,
            "ConfigMap",
            c["envFrom"][0]["configMapRef"]["name"].as_str().unwrap(),
        );
        // Kubernetes expands $(VAR) in args only for variables the container defines.
        let defined: BTreeSet<&str> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(defined, BTreeSet::from(["BACKFILL_FROM", "BACKFILL_TO"]));
        let range = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap")
            .expect("the range's ConfigMap");
        for var in c["env"].as_array().unwrap() {
            let from = &var["valueFrom"]["configMapKeyRef"];
            assert_eq!(from["name"], range["metadata"]["name"], "{cloud}");
            assert_eq!(
                range["data"][from["key"].as_str().unwrap()],
                "",
                "{cloud}: the shipped range is empty, so applying the Job starts no backfill"
            );
        }

        let dir = TempDir::new("deploy-job");
        let path = dir.0.join("config.toml");
        std::fs::write(&path, config_toml(&worker)).unwrap();
        // As shipped (empty range): exit 2 at once, which the Job's podFailurePolicy fails
        // without retries, before any store or Heap is asked.
        let shipped = job_args(job, &path, "", "");
        assert!(
            !shipped.iter().any(|a| a == "--no-handover"),
            "the Job hands its range to the Deployment's worker: beside it, the two would send up to twice the rate limit"
        );
        let output = Command::new(env!("CARGO_BIN_EXE_currents-heap"))
            .args(&shipped)
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(2),
            "{cloud}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let fail_at_once = &job["spec"]["podFailurePolicy"]["rules"][0];
        assert_eq!(fail_at_once["action"], "FailJob");
        assert!(
            fail_at_once["onExitCodes"]["values"]
                .as_array()
                .unwrap()
                .contains(&Json::from(2))
        );
        // With a range, the binary accepts the Job's arguments and the worker's config.
        let given = job_args(job, &path, "2026-11-01", "2026-11-08");
        assert_eq!(given[0], "backfill");
        let output = Command::new(env!("CARGO_BIN_EXE_currents-heap"))
            .args(&given)
            .arg("--print-config")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{given:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
#[test]
fn the_iam_policy_grants_read_on_the_source_read_write_on_the_state_and_the_queue_only() {
    let policy: Json =
        serde_json::from_str(&std::fs::read_to_string(deploy("iam-policy.json")).unwrap()).unwrap();
    let config = config_toml(&render("overlays/eks"));
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
                // attributes are read at start and by `check`), on the one queue.
                "sqs:ReceiveMessage"
                | "sqs:DeleteMessage"
                | "sqs:ChangeMessageVisibility"
                | "sqs:GetQueueAttributes" => {
                    assert_eq!(resource, "arn:aws:sqs:us-east-1:123456789012:currents-heap")
                }
                // `check` reads the source bucket's notification configuration.
                "s3:GetBucketNotification" => {
                    assert_eq!(resource, "arn:aws:s3:::my-braze-currents")
                }
                // `check` finds the EventBridge rules that target the queue: they are found
                // by target, so no rule ARN is known beforehand; both calls only read rules.
                "events:ListRuleNamesByTarget" | "events:DescribeRule" => {
                    assert_eq!(resource, "*")
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
    let metrics = support::metrics_with_every_family();
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

/// The stub targets the image's dependency stage creates, by the shell loop over `dir/$x.rs`.
fn stubbed(build_stage: &str, dir: &str) -> BTreeSet<String> {
    let line = build_stage
        .lines()
        .find(|l| l.contains(&format!("> {dir}/$")))
        .unwrap_or_else(|| panic!("no stub loop for {dir}/ in the build stage"));
    let list = line
        .split(" in ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap();
    list.split_whitespace().map(String::from).collect()
}

#[test]
fn the_image_builds_its_dependencies_with_a_stub_for_every_target_the_manifest_declares() {
    // Cargo refuses a manifest whose declared bench or example file is missing ("can't find
    // `resume` bench"), so the dependency stage's build fails on a target it does not stub.
    let dockerfile = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    let build_stage = dockerfile.rsplit("\nFROM ").nth(1).unwrap();
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root().join("Cargo.toml")).unwrap()).unwrap();
    let declared = |kind: &str| -> BTreeSet<String> {
        manifest
            .get(kind)
            .and_then(|t| t.as_array())
            .map(|targets| {
                targets
                    .iter()
                    .map(|t| t["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let files = |dir: &str| -> BTreeSet<String> {
        std::fs::read_dir(root().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter_map(|n| n.strip_suffix(".rs").map(String::from))
            .collect()
    };
    let benches: BTreeSet<String> = declared("bench")
        .union(&files("benches"))
        .cloned()
        .collect();
    let examples: BTreeSet<String> = declared("example")
        .union(&files("examples"))
        .cloned()
        .collect();
    assert_eq!(stubbed(build_stage, "benches"), benches);
    assert_eq!(stubbed(build_stage, "examples"), examples);
}

#[test]
fn the_build_context_holds_what_the_image_copies_and_not_target_or_git() {
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        patterns[0], "*",
        "an allowlist: everything out, then what COPY takes"
    );
    let allowed: BTreeSet<&str> = patterns[1..]
        .iter()
        .map(|p| {
            p.strip_prefix('!')
                .unwrap_or_else(|| panic!("after `*` only exceptions: {p}"))
        })
        .collect();
    let dockerfile = std::fs::read_to_string(deploy("Dockerfile")).unwrap();
    let mut copied = BTreeSet::new();
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY ")) {
        if line.contains("--from=") {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        for source in &words[1..words.len() - 1] {
            copied.insert(*source);
        }
    }
    for source in &copied {
        assert!(
            allowed.contains(source) || allowed.contains(source.trim_end_matches('/')),
            ".dockerignore leaves out {source}, which the Dockerfile copies"
        );
        assert!(root().join(source).exists(), "{source}");
    }
    for out in ["target", ".git", "fixtures", "tests"] {
        assert!(!allowed.contains(out), "{out} enters the build context");
    }
}

#[test]
fn a_rollout_or_a_lost_node_leaves_a_ready_replica_to_take_the_lease() {
    for (cloud, docs) in each_overlays_worker() {
        let deployment = find(&docs, "Deployment", "currents-heap");
        let spec = &deployment["spec"];
        assert_eq!(spec["replicas"], 2, "{cloud}: a sender and a hot standby");
        assert_eq!(spec["strategy"]["type"], "RollingUpdate");
        assert_eq!(
            spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0,
            "a rollout starts the new pod before it stops an old one: never zero ready"
        );
        assert_eq!(spec["strategy"]["rollingUpdate"]["maxSurge"], 1);
        let selector = &spec["selector"]["matchLabels"];
        let pod_labels = spec["template"]["metadata"]["labels"].as_object().unwrap();
        for (key, value) in selector.as_object().unwrap() {
            assert_eq!(
                pod_labels.get(key),
                Some(value),
                "{cloud}: the selector selects the pods"
            );
        }

        let preferred = spec["template"]["spec"]["affinity"]["podAntiAffinity"]
            ["preferredDuringSchedulingIgnoredDuringExecution"]
            .as_array()
            .expect("anti-affinity across nodes");
        assert!(
            preferred.iter().any(|term| {
                let term = &term["podAffinityTerm"];
                term["topologyKey"] == "kubernetes.io/hostname"
                    && &term["labelSelector"]["matchLabels"] == selector
            }),
            "{cloud}: the replicas prefer different nodes: {preferred:?}"
        );
        assert_eq!(
            container(&spec["template"]["spec"])["readinessProbe"]["httpGet"]["path"],
            "/readyz",
            "a rollout waits for the new pod (a standby, ready) before stopping an old one"
        );
    }
}

#[test]
fn a_drain_evicts_one_replica_at_a_time() {
    for (cloud, docs) in each_overlays_worker() {
        let pdb = find(&docs, "PodDisruptionBudget", "currents-heap");
        let deployment = find(&docs, "Deployment", "currents-heap");
        assert_eq!(pdb["apiVersion"], "policy/v1");
        assert_eq!(pdb["spec"]["minAvailable"], 1, "{cloud}");
        assert_eq!(
            pdb["spec"]["selector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"],
            "{cloud}: the budget covers the Deployment's pods"
        );
        assert!(
            pdb["spec"]["minAvailable"].as_u64() < deployment["spec"]["replicas"].as_u64(),
            "a budget of every replica would block drains for ever"
        );
    }
}

/// How long a stopping holder gives the lease's release: `RELEASE_WITHIN` in the commands
/// that hold the lease (read from their source: it is private to them).
fn release_within() -> Duration {
    ["src/commands/run.rs", "src/commands/backfill.rs"]
        .into_iter()
        .map(|file| {
            let source = std::fs::read_to_string(root().join(file)).unwrap();
            let secs = source
                .lines()
                .find_map(|l| {
                    l.trim()
                        .strip_prefix("const RELEASE_WITHIN: Duration = Duration::from_secs(")
                })
                .and_then(|rest| rest.strip_suffix(");"))
                .unwrap_or_else(|| panic!("{file}: no `const RELEASE_WITHIN` in seconds"));
            Duration::from_secs(secs.parse().unwrap())
        })
        .max()
        .unwrap()
}

/// After `--shutdown-timeout` and before the release: about a second to abandon the rest,
/// then the checkpoint writes (a store request, retried once).
const STOP_MARGIN: Duration = Duration::from_secs(20);

#[test]
fn the_grace_period_covers_the_stop_bound_the_checkpoints_and_the_release() {
    for cloud in CLOUDS {
        let worker = render(&format!("overlays/{cloud}"));
        // The shutdown timeout in force: the ConfigMap's, else the binary's default.
        let config = effective_run_config(&config_toml(&worker));
        let shutdown_timeout: HumanDuration = config["shutdown_timeout"]
            .as_str()
            .expect("shutdown_timeout in the effective config")
            .parse()
            .unwrap();
        let bound = shutdown_timeout.get() + release_within() + STOP_MARGIN;
        let job = render(&format!("jobs/backfill/{cloud}"));
        for pod in [
            &find(&worker, "Deployment", "currents-heap")["spec"]["template"]["spec"],
            &find(&job, "Job", "currents-heap-backfill")["spec"]["template"]["spec"],
        ] {
            let grace = pod["terminationGracePeriodSeconds"]
                .as_u64()
                .expect("a grace period");
            // Killed before the release, the standby waits out the lease (15 s) instead of
            // taking over at its next read (~2 s).
            assert!(
                Duration::from_secs(grace) >= bound,
                "{cloud}: terminationGracePeriodSeconds {grace} < --shutdown-timeout {shutdown_timeout} + the release {:?} + {STOP_MARGIN:?}",
                release_within()
            );
        }
    }
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

/// Every metric name /metrics can show, from its `# TYPE` lines. A labelled family shows
/// nothing, not even its TYPE line, until a label value exists: one of each is emitted first.
fn exported_metric_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (name, kind) in support::exported_metric_families() {
        match kind.as_str() {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name);
            }
        }
    }
    names
}

/// Metrics the alerts read from other exporters: readiness as Kubernetes sees it, from
/// kube-state-metrics (the worker cannot report that it is not scraped or not ready).
const KUBE_STATE_METRICS: [&str; 2] = [
    "kube_deployment_status_replicas_ready",
    "kube_deployment_spec_replicas",
];

fn rules_file() -> Json {
    yaml("prometheus/alerts.yaml")
}

fn alert_rules() -> Vec<Json> {
    rules_file()["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect()
}

#[test]
fn the_alert_rules_query_only_exported_metrics() {
    let exported = exported_metric_names();
    // The check itself: names the dashboard test sees in series are among them.
    assert!(
        exported.contains("currents_heap_events_dead_lettered_total"),
        "{exported:?}"
    );
    assert!(exported.contains("currents_heap_lease_transitions_total"));
    let mut queried = BTreeSet::new();
    for rule in alert_rules() {
        let expr = rule["expr"].as_str().unwrap();
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("currents_heap_") || word.starts_with("kube_") {
                queried.insert(word.to_string());
            }
        }
    }
    assert!(queried.len() >= 8, "{queried:?}");
    let missing: Vec<&String> = queried
        .iter()
        .filter(|name| !exported.contains(*name) && !KUBE_STATE_METRICS.contains(&name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the alerts query metrics nobody exports: {missing:?}"
    );
}

#[test]
fn the_prometheus_rule_holds_the_rules_file_and_every_alert_has_its_runbook() {
    let rule = yaml("kubernetes/monitoring/prometheusrule.yaml");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(
        rule["spec"]["groups"],
        rules_file()["groups"],
        "deploy/prometheus/alerts.yaml and the PrometheusRule hold the same rules"
    );
    let runbook = std::fs::read_to_string(root().join("docs/runbooks/alerts.md")).unwrap();
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| {
            h.trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect();
    let tests = yaml("prometheus/alerts.test.yaml");
    let cases: Vec<&Json> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap())
        .collect();
    let mut names = BTreeSet::new();
    for rule in alert_rules() {
        let name = rule["alert"].as_str().expect("alerting rules only");
        assert!(names.insert(name.to_string()), "{name} twice");
        let annotations = &rule["annotations"];
        assert!(
            annotations["summary"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{name}: a summary"
        );
        let url = annotations["runbook_url"].as_str().unwrap();
        let anchor = url
            .strip_prefix("docs/runbooks/alerts.md#")
            .unwrap_or_else(|| panic!("{name}: {url}"));
        assert_eq!(anchor, name.to_lowercase(), "{name}: its own section");
        assert!(
            anchors.contains(anchor),
            "{name}: no section {anchor} in the runbook"
        );
        // promtool runs the cases in CI; here: each alert has one that fires and one quiet.
        let of_it = cases.iter().filter(|c| c["alertname"] == name);
        let (firing, quiet): (Vec<&&Json>, Vec<&&Json>) = of_it.partition(|c| {
            c["exp_alerts"]
                .as_array()
                .is_some_and(|alerts| !alerts.is_empty())
        });
        assert!(!firing.is_empty(), "{name}: no unit test where it fires");
        assert!(
            !quiet.is_empty(),
            "{name}: no unit test where it stays quiet"
        );
    }
}

#[test]
fn the_deploy_docs_name_every_kind_of_manifest() {
    let page = std::fs::read_to_string(root().join("docs/deploy/kubernetes.md")).unwrap();
    for dir in kustomizations() {
        for doc in render(&dir) {
            let kind = doc["kind"].as_str().unwrap();
            assert!(
                page.contains(&format!("`{kind}`")),
                "docs/deploy/kubernetes.md does not name the {kind} of {dir}"
            );
        }
        assert!(
            page.contains(&format!("deploy/kubernetes/{dir}")),
            "docs/deploy/kubernetes.md does not name deploy/kubernetes/{dir}"
        );
    }
}
