//! Where a store points: `s3://bucket/prefix`, `az://container/prefix` (or the container's
//! `https://<account>.blob.core.windows.net/container/prefix` URL), `gs://bucket/prefix`, or
//! a local directory.

use std::path::PathBuf;
use std::sync::Arc;

use super::cloud::{CloudStore, CountingConnector, unnameable};
use super::{LocalStore, ObjectStore, S3Store, StoreError};
use crate::telemetry::Metrics;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3 {
        bucket: String,
        prefix: String,
    },
    /// Azure Blob Storage. The account comes from the URL when given as
    /// `https://<account>.blob.core.windows.net/...`, else from the environment.
    Azure {
        account: Option<String>,
        container: String,
        prefix: String,
    },
    Gcs {
        bucket: String,
        prefix: String,
    },
}

impl std::str::FromStr for Location {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("a location is empty".into());
        }
        // A pasted SAS or signed URL carries its signature in the query: refuse it without
        // echoing it, since locations are logged everywhere.
        if text.contains("://")
            && let Some(cut) = text.find(['?', '#'])
        {
            return Err(format!(
                "`{}…`: a location cannot carry a query string or fragment (a SAS token or \
                 signed URL?); give Azure's SAS token in AZURE_STORAGE_SAS_TOKEN or \
                 AZURE_STORAGE_CONNECTION_STRING, and drop everything from the `{}`",
                &text[..cut],
                &text[cut..cut + 1]
            ));
        }
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = split_bucket(text, rest, "S3 bucket", valid_s3_bucket)?;
            return Ok(Location::S3 { bucket, prefix });
        }
        if let Some(rest) = text.strip_prefix("az://") {
            let (container, prefix) = split_bucket(text, rest, "Azure container", valid_container)?;
            let prefix = cloud_prefix(text, prefix)?;
            return Ok(Location::Azure {
                account: None,
                container,
                prefix,
            });
        }
        if let Some(rest) = text
            .strip_prefix("https://")
            .and_then(|rest| rest.split_once(".blob.core.windows.net/"))
        {
            let (account, rest) = rest;
            let valid_account = (3..=24).contains(&account.len())
                && account
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !valid_account {
                return Err(format!(
                    "`{text}`: `{account}` is not a valid Azure storage account name"
                ));
            }
            let (container, prefix) = split_bucket(text, rest, "Azure container", valid_container)?;
            let prefix = cloud_prefix(text, prefix)?;
            return Ok(Location::Azure {
                account: Some(account.to_string()),
                container,
                prefix,
            });
        }
        if let Some(rest) = text.strip_prefix("gs://") {
            let (bucket, prefix) = split_bucket(text, rest, "GCS bucket", valid_gcs_bucket)?;
            let prefix = cloud_prefix(text, prefix)?;
            return Ok(Location::Gcs { bucket, prefix });
        }
        if text.contains("://") {
            return Err(format!(
                "`{text}`: only s3://, az://, https://<account>.blob.core.windows.net/, gs:// \
                 URLs and local directories are supported"
            ));
        }
        Ok(Location::Local(PathBuf::from(text)))
    }
}

/// `bucket` and `prefix/` (or an empty prefix) from `bucket/prefix`, checking the bucket's
/// name with `valid`.
fn split_bucket(
    text: &str,
    rest: &str,
    kind: &str,
    valid: fn(&str) -> bool,
) -> Result<(String, String), String> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if !valid(bucket) {
        return Err(format!("`{text}`: `{bucket}` is not a valid {kind} name"));
    }
    let prefix = prefix.trim_matches('/');
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    Ok((bucket.to_string(), prefix))
}

/// A prefix the object_store client can name (see [`super::cloud`]).
fn cloud_prefix(text: &str, prefix: String) -> Result<String, String> {
    match prefix.strip_suffix('/').and_then(unnameable) {
        Some(why) => Err(format!("`{text}`: the prefix cannot be used: {why}")),
        None => Ok(prefix),
    }
}

fn valid_s3_bucket(bucket: &str) -> bool {
    (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
}

/// 3–63 lowercase letters, digits and single hyphens, starting and ending with a letter or
/// digit (`$root` and `$web` too).
fn valid_container(name: &str) -> bool {
    if name == "$root" || name == "$web" {
        return true;
    }
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// 3–222 lowercase letters, digits, `-`, `_` and `.`, starting and ending with a letter or
/// digit.
fn valid_gcs_bucket(name: &str) -> bool {
    let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (3..=222).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
        && edge(name.bytes().next())
        && edge(name.bytes().last())
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Location::Azure {
                account: Some(account),
                container,
                prefix,
            } => write!(
                f,
                "https://{account}.blob.core.windows.net/{container}/{prefix}"
            ),
            Location::Azure {
                account: None,
                container,
                prefix,
            } => write!(f, "az://{container}/{prefix}"),
            Location::Gcs { bucket, prefix } => write!(f, "gs://{bucket}/{prefix}"),
        }
    }
}

impl Location {
    /// Opens the store. S3 uses the standard AWS configuration: credential chain, region,
    /// `AWS_ENDPOINT_URL`; `path_style` is for S3-compatible stores that need it. Azure and
    /// GCS use theirs (see [`super::cloud_env`]). Requests to the cloud stores are counted
    /// in `metrics`.
    pub async fn open(
        &self,
        path_style: bool,
        metrics: &Arc<Metrics>,
    ) -> Result<Arc<dyn ObjectStore>, StoreError> {
        Ok(match self {
            Location::Local(path) => Arc::new(LocalStore::new(path)),
            Location::S3 { bucket, prefix } => {
                Arc::new(S3Store::connect(bucket, prefix, path_style, metrics.clone()).await?)
            }
            Location::Azure {
                account,
                container,
                prefix,
            } => {
                let root = Location::Azure {
                    account: account.clone(),
                    container: container.clone(),
                    prefix: String::new(),
                }
                .to_string();
                let (builder, secrets) = super::cloud_env::azure_from_env(account.as_deref())
                    .map_err(|reason| connect_error(&root, reason))?;
                let client = builder
                    .with_container_name(container)
                    .with_http_connector(CountingConnector::new("azure", metrics.clone()))
                    .with_retry(super::cloud_env::retry())
                    .build()
                    .map_err(|e| connect_error(&root, e.to_string()))?;
                Arc::new(CloudStore::new(Arc::new(client), &root, prefix, secrets))
            }
            Location::Gcs { bucket, prefix } => {
                let root = format!("gs://{bucket}/");
                let (builder, secrets) = super::cloud_env::gcs_from_env();
                let client = builder
                    .with_bucket_name(bucket)
                    .with_http_connector(CountingConnector::new("gcs", metrics.clone()))
                    .with_retry(super::cloud_env::retry())
                    .build()
                    .map_err(|e| connect_error(&root, e.to_string()))?;
                Arc::new(CloudStore::new(Arc::new(client), &root, prefix, secrets))
            }
        })
    }
}

fn connect_error(root: &str, reason: String) -> StoreError {
    // A client that cannot be built is a configuration to fix (a malformed account name,
    // an unreadable service-account file), not an outage.
    StoreError::new(
        "connect to",
        root,
        super::StoreErrorKind::Invalid,
        reason.split_whitespace().collect::<Vec<_>>().join(" "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_a_query_is_refused_without_echoing_it() {
        let sas = "https://acct.blob.core.windows.net/currents/p?sv=2022&sig=SECRETSIG%2B";
        let error = sas.parse::<Location>().unwrap_err();
        assert!(
            !error.contains("SECRETSIG") && !error.contains("sv=2022"),
            "{error}"
        );
        assert!(error.contains("AZURE_STORAGE_SAS_TOKEN"), "{error}");
        for text in [
            "az://c0n/p?sig=SECRETSIG",
            "gs://bucket/p#SECRETSIG",
            "ftp://x/y?sig=SECRETSIG",
        ] {
            let error = text.parse::<Location>().unwrap_err();
            assert!(!error.contains("SECRETSIG"), "{error}");
        }
    }

    #[test]
    fn parses_s3_urls_and_directories() {
        assert_eq!(
            "s3://my-bucket/currents/".parse(),
            Ok(Location::S3 {
                bucket: "my-bucket".into(),
                prefix: "currents/".into()
            })
        );
        assert_eq!(
            "s3://my-bucket".parse(),
            Ok(Location::S3 {
                bucket: "my-bucket".into(),
                prefix: String::new()
            })
        );
        assert_eq!(
            "fixtures/bucket".parse(),
            Ok(Location::Local(PathBuf::from("fixtures/bucket")))
        );
        assert!("s3://My_Bucket/x".parse::<Location>().is_err());
        assert!("ftp://bucket/x".parse::<Location>().is_err());
        assert!("".parse::<Location>().is_err());
    }

    #[test]
    fn parses_azure_and_gcs_urls() {
        let azure = |account: Option<&str>, prefix: &str| Location::Azure {
            account: account.map(String::from),
            container: "currents".into(),
            prefix: prefix.into(),
        };
        assert_eq!(
            "az://currents/exports/".parse(),
            Ok(azure(None, "exports/"))
        );
        assert_eq!("az://currents".parse(), Ok(azure(None, "")));
        assert_eq!(
            "https://brazeacct.blob.core.windows.net/currents/a/b".parse(),
            Ok(azure(Some("brazeacct"), "a/b/"))
        );
        assert_eq!(
            "https://brazeacct.blob.core.windows.net/currents/a/b"
                .parse::<Location>()
                .unwrap()
                .to_string(),
            "https://brazeacct.blob.core.windows.net/currents/a/b/"
        );
        assert_eq!(
            "gs://my_bucket.example/currents".parse(),
            Ok(Location::Gcs {
                bucket: "my_bucket.example".into(),
                prefix: "currents/".into()
            })
        );
        for bad in [
            "az://Currents/x",
            "az://a--b/x",
            "az://ab/x",
            "https://Bad_Account.blob.core.windows.net/currents/x",
            "gs://-bucket/x",
            "gs://B/x",
            // object_store cannot name these prefixes.
            "az://currents/a//b",
            "gs://bucket/a/../b",
        ] {
            assert!(bad.parse::<Location>().is_err(), "{bad}");
        }
    }
}
