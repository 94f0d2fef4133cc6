//! Azurite, the Azure Storage emulator (npm), for the Azure store's tests: its Blob service
//! on a loopback port of its own, in memory, with an account and key of ours (so a test can
//! check the key never shows).
//!
//! The executable is `AZURITE_BLOB` if set, else `<target dir>/azurite/node_modules/.bin/azurite-blob`
//! (where `.ci/run` installs it), else the tests install it there with npm, once.

use std::path::PathBuf;
use std::sync::Arc;

use currents_heap::store::CloudStore;
use currents_heap::store::cloud_env::{apply_connection_string, retry};
use object_store::azure::{
    AzureAccessKey, AzureAuthorizer, AzureCredential, MicrosoftAzureBuilder,
};
use object_store::client::{HttpConnector, ReqwestConnector};
use tokio::process::{Child, Command};

use super::install;

/// What npm installs; `.ci/run` installs the same.
pub const AZURITE_PACKAGE: &str = "azurite@3.37.0";
pub const ACCOUNT: &str = "currentsacct";
/// Base64, as Azure's keys are; checked for leaks.
pub const ACCOUNT_KEY: &str = "YXp1cml0ZS1hY2NvdW50LWtleS10aGF0LW11c3QtbmV2ZXItYmUtbG9nZ2Vk";

/// An Azurite Blob service, killed when dropped.
pub struct Azurite {
    /// `http://127.0.0.1:PORT/currentsacct`: the account's blob endpoint.
    pub endpoint: String,
    _child: Child,
    _dir: super::TempDir,
}

impl Azurite {
    pub async fn start() -> Azurite {
        let exe = tokio::task::spawn_blocking(azurite_blob).await.unwrap();
        let dir = super::TempDir::new("azurite");
        // Port 0: Azurite says which port it got.
        let (child, url) = install::launch(
            Command::new(&exe)
                .args(["--blobHost", "127.0.0.1", "--blobPort", "0"])
                .args(["--inMemoryPersistence", "--skipApiVersionCheck", "--loose"])
                // Its debug log and any stray file land here, not in the package.
                .current_dir(&dir.0)
                .env("AZURITE_ACCOUNTS", format!("{ACCOUNT}:{ACCOUNT_KEY}")),
            |line| {
                let url = line.split("successfully listens on ").nth(1)?;
                Some(url.trim().trim_end_matches('/').to_string())
            },
        )
        .await;
        Azurite {
            endpoint: format!("{url}/{ACCOUNT}"),
            _child: child,
            _dir: dir,
        }
    }

    /// The connection string Azure's portal gives, pointing here.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};BlobEndpoint={}/;",
            self.endpoint
        )
    }

    /// A client configured from [`Azurite::connection_string`].
    pub fn builder(&self) -> MicrosoftAzureBuilder {
        apply_connection_string(MicrosoftAzureBuilder::new(), &self.connection_string()).unwrap()
    }

    /// Creates `container` (object_store cannot), with a request signed by the account key.
    pub async fn create_container(&self, container: &str) {
        let mut request = http::Request::builder()
            .method(http::Method::PUT)
            .uri(format!("{}/{container}?restype=container", self.endpoint))
            .header(http::header::CONTENT_LENGTH, "0")
            .body(Vec::new().into())
            .unwrap();
        let credential = AzureCredential::AccessKey(AzureAccessKey::try_new(ACCOUNT_KEY).unwrap());
        AzureAuthorizer::new(&credential, ACCOUNT)
            .try_authorize(&mut request)
            .unwrap();
        let client = ReqwestConnector::default()
            .connect(&object_store::ClientOptions::new().with_allow_http(true))
            .unwrap();
        let response = client.execute(request).await.unwrap();
        assert_eq!(
            response.status(),
            http::StatusCode::CREATED,
            "create {container}"
        );
    }

    /// A store on `container` under `prefix`, as the worker opens one.
    pub fn store(&self, container: &str, prefix: &str) -> CloudStore {
        let client = self
            .builder()
            .with_container_name(container)
            .with_retry(retry())
            .build()
            .unwrap();
        CloudStore::new(
            Arc::new(client),
            &format!("az://{container}"),
            prefix,
            vec![ACCOUNT_KEY.to_string()],
        )
    }
}

/// The azurite-blob executable, installing it first if needed.
pub fn azurite_blob() -> PathBuf {
    install::installed(&install::Tool {
        name: "azurite",
        override_variable: "AZURITE_BLOB",
        dir: "azurite",
        executable: "node_modules/.bin/azurite-blob",
        install: |dir| install::npm(dir, AZURITE_PACKAGE),
    })
}
