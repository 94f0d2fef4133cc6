//! Where a store points: `s3://bucket/prefix` or a local directory.

use std::path::PathBuf;
use std::sync::Arc;

use super::{LocalStore, ObjectStore, S3Store, StoreError};
use crate::telemetry::Metrics;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl std::str::FromStr for Location {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("a location is empty".into());
        }
        let Some(rest) = text.strip_prefix("s3://") else {
            if text.contains("://") {
                return Err(format!(
                    "`{text}`: only s3:// URLs and local directories are supported"
                ));
            }
            return Ok(Location::Local(PathBuf::from(text)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !valid_bucket {
            return Err(format!(
                "`{text}`: `{bucket}` is not a valid S3 bucket name"
            ));
        }
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        Ok(Location::S3 {
            bucket: bucket.to_string(),
            prefix,
        })
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

impl Location {
    /// Opens the store. S3 uses the standard AWS configuration: credential chain, region,
    /// `AWS_ENDPOINT_URL`; `path_style` is for S3-compatible stores that need it. Requests
    /// to S3 are counted in `metrics`.
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!("gs://bucket/x".parse::<Location>().is_err());
        assert!("".parse::<Location>().is_err());
    }
}
