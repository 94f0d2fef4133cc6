//! The Azure and GCS clients' configuration, from the environment by each cloud's
//! conventions (object_store's `from_env` builders), plus what object_store does not read:
//! Azure's connection string. Each builder comes with the secret values it was given, which
//! [`super::cloud::CloudStore`] blanks out of every message.
//!
//! Azure, first match wins inside object_store: `AZURE_STORAGE_CONNECTION_STRING` (applied
//! over the variables below); an account key (`AZURE_STORAGE_ACCOUNT_KEY`); a SAS token
//! (`AZURE_STORAGE_SAS_TOKEN`); a service principal (`AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`,
//! `AZURE_TENANT_ID`); workload identity on AKS (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`,
//! `AZURE_FEDERATED_TOKEN_FILE`, which the AKS webhook sets); else managed identity (IMDS).
//! The account is `AZURE_STORAGE_ACCOUNT_NAME` unless the location's URL names it. Azurite:
//! `AZURE_STORAGE_USE_EMULATOR=true` (and `AZURITE_BLOB_STORAGE_URL`), or a connection string
//! with `UseDevelopmentStorage=true` or an `http://` `BlobEndpoint`.
//!
//! GCS: a service-account key file (`GOOGLE_SERVICE_ACCOUNT`) or its JSON
//! (`GOOGLE_SERVICE_ACCOUNT_KEY`); else Application Default Credentials
//! (`GOOGLE_APPLICATION_CREDENTIALS`, or gcloud's `application_default_credentials.json`);
//! else the metadata server, which is how workload identity on GKE (and a VM's service
//! account) answers. Emulators: `GOOGLE_BASE_URL=http://…` with `GOOGLE_SKIP_SIGNATURE=true`.

use std::sync::Arc;
use std::time::Duration;

use object_store::ClientConfigKey;
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::GcpCredential;
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::{RetryConfig, StaticCredentialProvider};

/// Environment variables whose values are secrets, wherever they appear.
const SECRET_VARIABLES: &[&str] = &[
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_MASTER_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_TOKEN",
    "AZURE_CLIENT_SECRET",
    "AZURE_STORAGE_CLIENT_SECRET",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "GOOGLE_BEARER_TOKEN",
];

/// Retries as the S3 client makes them: three attempts, then the caller's own retry.
pub fn retry() -> RetryConfig {
    RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(60),
        ..RetryConfig::default()
    }
}

/// The secret values in the environment, and the parts of them that travel alone (a SAS
/// token's signature, a connection string's key).
fn secrets_in_env() -> Vec<String> {
    let mut secrets = Vec::new();
    for name in SECRET_VARIABLES {
        if let Ok(value) = std::env::var(name) {
            secrets.extend(secret_parts(&value));
            secrets.push(value);
        }
    }
    secrets
}

/// `sig=…` of a SAS token and `AccountKey=…`/`SharedAccessSignature=…` of a connection
/// string, decoded and not.
fn secret_parts(value: &str) -> Vec<String> {
    let mut parts = Vec::new();
    for pair in value.split([';', '&', '?']) {
        let Some((name, secret)) = pair.split_once('=') else {
            continue;
        };
        if ["sig", "AccountKey", "SharedAccessSignature"].contains(&name.trim()) {
            parts.push(secret.to_string());
            if let Ok(decoded) = percent_encoding::percent_decode_str(secret).decode_utf8() {
                parts.push(decoded.into_owned());
            }
            parts.extend(secret_parts(secret).into_iter().filter(|p| p != secret));
        }
    }
    parts
}

/// The Azure builder from the environment, for `account` if the location named it.
/// Fails (without showing it) on a connection string it cannot read.
pub fn azure_from_env(
    account: Option<&str>,
) -> Result<(MicrosoftAzureBuilder, Vec<String>), String> {
    let mut builder = MicrosoftAzureBuilder::from_env();
    if let Ok(connection) = std::env::var("AZURE_STORAGE_CONNECTION_STRING") {
        if let (Some(named), Some(theirs)) = (account, connection_account(&connection))
            && named != theirs
        {
            // Its endpoint would win, and the worker would read and write another account
            // than every message names.
            return Err(format!(
                "the location names the account `{named}`, but AZURE_STORAGE_CONNECTION_STRING is for `{theirs}`: use az://<container>/<prefix> with the connection string, or a connection string for `{named}`"
            ));
        }
        builder = apply_connection_string(builder, &connection)?;
    }
    if let Some(account) = account {
        builder = builder.with_account(account);
    }
    Ok((builder, secrets_in_env()))
}

/// The account a connection string is for: its `AccountName`, else the account in its
/// `BlobEndpoint` (`https://<account>.blob…`, or an emulator's `http://host:port/<account>`).
fn connection_account(connection: &str) -> Option<String> {
    let field = |wanted: &str| {
        connection.split(';').find_map(|field| {
            let (name, value) = field.trim().split_once('=')?;
            (name == wanted).then(|| value.trim().to_string())
        })
    };
    if let Some(account) = field("AccountName") {
        return Some(account);
    }
    let endpoint = field("BlobEndpoint")?;
    let rest = endpoint.split_once("://")?.1;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    match host.split_once(".blob.") {
        Some((account, _)) => Some(account.to_string()),
        None => path
            .split('/')
            .next()
            .filter(|a| !a.is_empty())
            .map(str::to_string),
    }
}

/// An Azure Storage connection string (`AccountName=…;AccountKey=…;BlobEndpoint=…`) as
/// builder options. Errors name the field, never its value.
pub fn apply_connection_string(
    mut builder: MicrosoftAzureBuilder,
    connection: &str,
) -> Result<MicrosoftAzureBuilder, String> {
    let mut protocol = "https";
    let mut account = None;
    let mut suffix = None;
    let mut endpoint = None;
    let fields = connection
        .split(';')
        .map(str::trim)
        .filter(|f| !f.is_empty());
    for (n, field) in fields.enumerate() {
        let Some((name, value)) = field.split_once('=') else {
            return Err(format!(
                "AZURE_STORAGE_CONNECTION_STRING: field {} has no `=`",
                n + 1
            ));
        };
        match name {
            "DefaultEndpointsProtocol" if value == "http" => protocol = "http",
            "AccountName" => account = Some(value.to_string()),
            "AccountKey" => builder = builder.with_access_key(value),
            "SharedAccessSignature" => {
                builder = builder.with_config(AzureConfigKey::SasKey, value);
            }
            "BlobEndpoint" => endpoint = Some(value.trim_end_matches('/').to_string()),
            "EndpointSuffix" => suffix = Some(value.to_string()),
            "UseDevelopmentStorage" if value.eq_ignore_ascii_case("true") => {
                builder = builder.with_use_emulator(true);
            }
            // Queue, table and file endpoints, and the proxy of the old emulator.
            _ => {}
        }
    }
    if let Some(account) = &account {
        builder = builder.with_account(account);
    }
    let endpoint = endpoint.or_else(|| {
        Some(format!(
            "{protocol}://{}.blob.{}",
            account.as_ref()?,
            suffix.as_ref()?
        ))
    });
    if let Some(endpoint) = endpoint {
        if endpoint.starts_with("http://") {
            builder =
                builder.with_config(AzureConfigKey::Client(ClientConfigKey::AllowHttp), "true");
        }
        builder = builder.with_endpoint(endpoint);
    }
    Ok(builder)
}

/// The GCS builder from the environment.
pub fn gcs_from_env() -> (GoogleCloudStorageBuilder, Vec<String>) {
    let mut builder = GoogleCloudStorageBuilder::from_env();
    if std::env::var("GOOGLE_BASE_URL").is_ok_and(|url| url.starts_with("http://")) {
        builder = builder.with_config(GoogleConfigKey::Client(ClientConfigKey::AllowHttp), "true");
    }
    let anonymous = std::env::var("GOOGLE_SKIP_SIGNATURE")
        .is_ok_and(|v| ["true", "1", "yes"].contains(&v.to_ascii_lowercase().as_str()));
    if anonymous {
        builder = anonymous_gcs(builder);
    }
    (builder, secrets_in_env())
}

/// Unsigned requests, for emulators and public buckets. object_store 0.14 skips the token
/// for reads and listings but still asks for one before a write (and without credentials
/// that means the instance metadata server): an empty static token keeps every request off
/// the metadata server.
pub fn anonymous_gcs(builder: GoogleCloudStorageBuilder) -> GoogleCloudStorageBuilder {
    builder
        .with_skip_signature(true)
        .with_credentials(Arc::new(StaticCredentialProvider::new(GcpCredential {
            bearer: String::new(),
        })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sas_token_and_an_account_key_are_secrets_in_every_form() {
        let parts = secret_parts(
            "BlobEndpoint=https://a.blob.core.windows.net;AccountKey=S2V5PT0=;\
             SharedAccessSignature=sv=2024-11-04&sig=abc%2Bdef%3D",
        );
        for secret in ["S2V5PT0=", "abc%2Bdef%3D", "abc+def="] {
            assert!(parts.iter().any(|p| p == secret), "{secret} in {parts:?}");
        }
        assert!(!parts.iter().any(|p| p.contains("blob.core")));
    }

    #[test]
    fn the_account_a_connection_string_is_for() {
        assert_eq!(
            connection_account("AccountName=one;AccountKey=x"),
            Some("one".into())
        );
        assert_eq!(
            connection_account(
                "BlobEndpoint=https://two.blob.core.windows.net/;SharedAccessSignature=sv=1"
            ),
            Some("two".into())
        );
        assert_eq!(
            connection_account(
                "BlobEndpoint=http://127.0.0.1:10000/three;SharedAccessSignature=sv=1"
            ),
            Some("three".into())
        );
        assert_eq!(connection_account("UseDevelopmentStorage=true"), None);
    }

    #[test]
    fn a_bad_connection_string_is_refused_without_showing_it() {
        let error =
            apply_connection_string(MicrosoftAzureBuilder::new(), "AccountName=a;SecretNoEquals")
                .err()
                .unwrap();
        assert!(!error.contains("SecretNoEquals"), "{error}");
    }
}
