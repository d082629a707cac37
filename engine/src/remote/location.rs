//! A run directory's URL: which object store it names, how to reach it, and where its
//! local working copy lives.

use std::path::PathBuf;
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use url::Url;

use super::RemoteError;

/// The schemes a run directory may have, and what each means (for error messages).
const SCHEMES: &str = "s3:// (also s3a://), gs://, az:// (also abfs://, abfss://) or file://";

/// Whether `text` names a run directory by URL (`scheme://…`) rather than a local path.
pub fn is_url(text: &str) -> bool {
    match text.split_once("://") {
        Some((scheme, _)) => {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

/// `text` without its query string and any `user:password@`, for messages.
fn redacted(text: &str) -> String {
    let text = text.split('?').next().unwrap_or(text);
    match text.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit('@').next().unwrap_or(authority);
            format!("{scheme}://{host}{path}")
        }
        None => text.to_string(),
    }
}

/// The cloud behind a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cloud {
    S3,
    Gcs,
    Azure,
    File,
}

/// A run directory on an object store, as a URL.
#[derive(Debug, Clone)]
pub struct RemoteLocation {
    url: Url,
    cloud: Cloud,
}

impl RemoteLocation {
    /// Parses `text`; an unknown scheme or a URL without a bucket is an error that names
    /// the schemes there are.
    pub fn parse(text: &str) -> Result<Self, RemoteError> {
        let bad = |reason: String| RemoteError::Location {
            url: redacted(text),
            reason,
        };
        let url = Url::parse(text).map_err(|e| bad(format!("not a valid URL ({e})")))?;
        let cloud = match url.scheme() {
            "s3" | "s3a" => Cloud::S3,
            "gs" => Cloud::Gcs,
            "az" | "abfs" | "abfss" | "azure" => Cloud::Azure,
            "file" => Cloud::File,
            other => {
                return Err(bad(format!(
                    "unsupported scheme `{other}://`: a run directory is a local path or a URL with {SCHEMES}"
                )))
            }
        };
        if cloud != Cloud::File && url.host_str().is_none_or(str::is_empty) {
            return Err(bad(format!(
                "no bucket or container: write {}://BUCKET/PREFIX",
                url.scheme()
            )));
        }
        if url.password().is_some() {
            return Err(bad(
                "credentials in the URL are not accepted (they would show in logs and launch files): use the cloud's environment variables".into(),
            ));
        }
        Ok(Self { url, cloud })
    }

    /// The URL without query string or fragment, as shown in messages.
    pub fn display_url(&self) -> String {
        let mut u = self.url.clone();
        u.set_query(None);
        u.set_fragment(None);
        u.to_string().trim_end_matches('/').to_string()
    }

    /// The store, built from the URL and the cloud's usual environment variables, and
    /// the key prefix of the run directory in it.
    pub fn store(&self) -> Result<(Arc<dyn ObjectStore>, ObjectPath), RemoteError> {
        let failed = |e: object_store::Error| RemoteError::Location {
            url: self.display_url(),
            reason: e.to_string(),
        };
        let url = self.display_url();
        let store: Arc<dyn ObjectStore> = match self.cloud {
            Cloud::S3 => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(failed)?,
            ),
            Cloud::Gcs => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(failed)?,
            ),
            Cloud::Azure => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(failed)?,
            ),
            Cloud::File => Arc::new(object_store::local::LocalFileSystem::new()),
        };
        let path = match self.cloud {
            Cloud::File => {
                let local = self
                    .url
                    .to_file_path()
                    .map_err(|()| RemoteError::Location {
                        url: self.display_url(),
                        reason: "not an absolute file path".into(),
                    })?;
                std::fs::create_dir_all(&local).map_err(|source| RemoteError::Io {
                    path: local.clone(),
                    source,
                })?;
                ObjectPath::from_absolute_path(&local).map_err(|e| failed(e.into()))?
            }
            _ => ObjectPath::from_url_path(self.url.path()).map_err(|e| failed(e.into()))?,
        };
        Ok((store, path))
    }

    /// Where the working copy lives unless `--cache-dir` says otherwise:
    /// `$SSPO_CACHE_DIR/runs/…`, else `$XDG_CACHE_HOME/sspo/runs/…`, else
    /// `~/.cache/sspo/runs/…`, one directory per URL.
    pub fn default_cache_dir(&self, env: impl Fn(&str) -> Option<String>) -> PathBuf {
        let root = match (env("SSPO_CACHE_DIR"), env("XDG_CACHE_HOME"), env("HOME")) {
            (Some(d), _, _) if !d.is_empty() => PathBuf::from(d),
            (_, Some(d), _) if !d.is_empty() => PathBuf::from(d).join("sspo"),
            (_, _, Some(h)) if !h.is_empty() => PathBuf::from(h).join(".cache").join("sspo"),
            _ => std::env::temp_dir().join("sspo-cache"),
        };
        let url = self.display_url();
        let name: String = url
            .rsplit('/')
            .find(|s| !s.is_empty())
            .unwrap_or("run")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let hash = &crate::fingerprint::hash_bytes(url.as_bytes())[..12];
        root.join("runs").join(format!("{name}-{hash}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_from_paths() {
        assert!(is_url("s3://bucket/run"));
        assert!(is_url("file:///tmp/run"));
        assert!(!is_url("runs/quickstart"));
        assert!(!is_url("/tmp/a://b"));
        assert!(!is_url("C:\\runs"));
    }

    #[test]
    fn bad_urls_say_what_is_accepted() {
        let err = RemoteLocation::parse("ftp://host/run")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported scheme `ftp://`"), "{err}");
        assert!(err.contains("s3://"), "{err}");
        let err = RemoteLocation::parse("s3:///run").unwrap_err().to_string();
        assert!(err.contains("no bucket"), "{err}");
        let err = RemoteLocation::parse("s3://user:secret@bucket/run")
            .unwrap_err()
            .to_string();
        assert!(err.contains("credentials in the URL"), "{err}");
        assert!(
            !err.contains("secret") && err.contains("s3://bucket/run"),
            "{err}"
        );
    }

    #[test]
    fn the_cache_is_one_directory_per_url() {
        let a = RemoteLocation::parse("s3://bucket/runs/gsm8k?versionId=1").unwrap();
        assert_eq!(a.display_url(), "s3://bucket/runs/gsm8k");
        let env = |k: &str| (k == "SSPO_CACHE_DIR").then(|| "/c".to_string());
        let dir = a.default_cache_dir(env);
        assert!(dir.starts_with("/c/runs"), "{}", dir.display());
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("gsm8k-"), "{name}");
        let b = RemoteLocation::parse("s3://other/runs/gsm8k").unwrap();
        assert_ne!(b.default_cache_dir(env), dir);
        let home = |k: &str| (k == "HOME").then(|| "/home/u".to_string());
        assert!(a
            .default_cache_dir(home)
            .starts_with("/home/u/.cache/sspo/runs"));
    }
}
