//! Run directories on object storage: `--run-dir s3://bucket/prefix` (also `gs://`,
//! `az://` and `file://`), through the `object_store` crate.
//!
//! The object store holds the run and is its only source of truth. Each process works on
//! a local working copy of it (the *cache*, see [`location`]), so the store's format, the
//! operators and SQL work there unchanged:
//!
//! - **Pull** ([`sync`]): before a command reads or runs anything, the working copy is
//!   brought up to date: every node's manifest (and shard markers) are fetched, then
//!   exactly the files they list, checked against their recorded hashes. Nothing is found
//!   by a directory glob: a part no manifest or marker lists does not exist for readers.
//! - **Commits** go to the store as they happen ([`crate::store::NodeDir`] forwards them
//!   here): a chunk's parts are uploaded before the manifest that lists them, and the
//!   manifest (the commit point) is then written whole, never renamed into place, since S3
//!   has no atomic rename. A node's first manifest after a sharded run, every shard part
//!   and every marker are written with a conditional create (`If-None-Match: *`): the
//!   store decides which writer was first.
//! - **The lock** becomes a lease object with an expiry, renewed while its holder runs
//!   ([`lease`]). A lease left by a killed process is reported as stale and taken over
//!   once it has expired.
//!
//! Credentials come from each cloud's usual environment variables (`AWS_*`,
//! `GOOGLE_*`, `AZURE_*`), read by `object_store`'s builders; none is ever written into a
//! manifest, a lease or a log line (URLs are shown without their query string).

pub mod lease;
pub mod location;
pub mod sync;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

pub use lease::Lease;
pub use location::{is_url, RemoteLocation};
pub use sync::PullReport;

/// What can go wrong with a run directory on object storage.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("run directory {url}: {reason}")]
    Location { url: String, reason: String },
    #[error("{url}: {source}")]
    Store {
        url: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: the object changed while it was copied (its hash is not the one its manifest records); run the command again")]
    Changed { url: String },
    #[error("run directory {url} is leased by {holder} until {expires_in}; wait for it to finish, or use another --run-dir (a lease whose holder was killed expires by itself)")]
    Leased {
        url: String,
        holder: String,
        expires_in: String,
    },
    #[error("{url}: invalid {what}: {source}")]
    Json {
        url: String,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// A run directory on an object store, and its local working copy.
pub struct RemoteRun {
    /// The run directory's URL as the user gave it, without any query string.
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    local: PathBuf,
    runtime: tokio::runtime::Runtime,
    /// Keys the store is known to hold, with their blake3: a file is uploaded once.
    known: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for RemoteRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteRun")
            .field("url", &self.url)
            .field("local", &self.local)
            .finish()
    }
}

/// Files moved between the store and the working copy at once.
const PARALLEL_TRANSFERS: usize = 8;

impl RemoteRun {
    /// The run directory at `location`, with its working copy at `local`.
    pub fn open(location: &RemoteLocation, local: PathBuf) -> Result<Arc<Self>, RemoteError> {
        let (store, prefix) = location.store()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sspo-object-store")
            .enable_all()
            .build()
            .map_err(|source| RemoteError::Io {
                path: local.clone(),
                source,
            })?;
        std::fs::create_dir_all(&local).map_err(|source| RemoteError::Io {
            path: local.clone(),
            source,
        })?;
        Ok(Arc::new(Self {
            url: location.display_url(),
            store,
            prefix,
            local,
            runtime,
            known: Mutex::new(HashMap::new()),
        }))
    }

    /// The run directory's URL (no credentials, no query string).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The local working copy.
    pub fn local(&self) -> &Path {
        &self.local
    }

    /// `rel` (a `/`-separated path inside the run directory) as a key of the store.
    fn key(&self, rel: &str) -> ObjectPath {
        rel.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |k, part| k.join(part))
    }

    /// `rel` as the user sees it in messages.
    pub fn url_of(&self, rel: &str) -> String {
        format!("{}/{rel}", self.url.trim_end_matches('/'))
    }

    /// The path inside the run directory of a path in the working copy, if it is there.
    pub fn rel_of(&self, local: &Path) -> Option<String> {
        crate::store::relative_name(&self.local, local)
    }

    fn store_err(&self, rel: &str) -> impl FnOnce(object_store::Error) -> RemoteError + '_ {
        let url = self.url_of(rel);
        move |source| RemoteError::Store {
            url,
            source: Box::new(source),
        }
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// The object at `rel`, or `None` if there is none.
    pub fn get(&self, rel: &str) -> Result<Option<Bytes>, RemoteError> {
        self.get_versioned(rel).map(|o| o.map(|(b, _)| b))
    }

    /// The object at `rel` and its entity tag (for a conditional update), if any.
    pub fn get_versioned(&self, rel: &str) -> Result<Option<(Bytes, Option<String>)>, RemoteError> {
        let key = self.key(rel);
        self.block_on(async {
            match self.store.get(&key).await {
                Ok(r) => {
                    let etag = r.meta.e_tag.clone();
                    let bytes = r.bytes().await.map_err(self.store_err(rel))?;
                    Ok(Some((bytes, etag)))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.store_err(rel)(e)),
            }
        })
    }

    /// Writes `bytes` at `rel`, replacing what is there (a whole-object put: readers see
    /// the old object or the new one).
    pub fn put(&self, rel: &str, bytes: &[u8]) -> Result<(), RemoteError> {
        self.put_mode(rel, bytes, PutMode::Overwrite).map(|_| ())
    }

    /// Writes `bytes` at `rel` only if nothing is there: `false` if another writer was
    /// first (and nothing was changed).
    pub fn create(&self, rel: &str, bytes: &[u8]) -> Result<bool, RemoteError> {
        self.put_mode(rel, bytes, PutMode::Create)
    }

    /// Replaces the object at `rel` only if it is still the version `etag`: `false` if
    /// someone changed it since.
    /// A store without conditional updates (a `file://` run directory) gets a delete
    /// and a conditional create instead: of two racing writers one still wins, but a
    /// third may slip in between.
    pub fn replace_if(&self, rel: &str, bytes: &[u8], etag: String) -> Result<bool, RemoteError> {
        let mode = PutMode::Update(object_store::UpdateVersion {
            e_tag: Some(etag),
            version: None,
        });
        match self.put_mode(rel, bytes, mode) {
            Err(RemoteError::Store { source, .. })
                if matches!(*source, object_store::Error::NotImplemented { .. }) =>
            {
                self.delete(rel)?;
                self.create(rel, bytes)
            }
            other => other,
        }
    }

    fn put_mode(&self, rel: &str, bytes: &[u8], mode: PutMode) -> Result<bool, RemoteError> {
        let key = self.key(rel);
        let payload = PutPayload::from(Bytes::copy_from_slice(bytes));
        let opts = PutOptions::from(mode);
        let put = self.block_on(self.store.put_opts(&key, payload, opts));
        match put {
            Ok(_) => {
                self.remember(rel, bytes);
                Ok(true)
            }
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(self.store_err(rel)(e)),
        }
    }

    fn remember(&self, rel: &str, bytes: &[u8]) {
        self.remember_hash(rel, &crate::fingerprint::hash_bytes(bytes));
    }

    /// Notes that the store holds `rel` with this blake3.
    fn remember_hash(&self, rel: &str, blake3: &str) {
        if let Ok(mut known) = self.known.lock() {
            known.insert(rel.to_string(), blake3.to_string());
        }
    }

    fn forget_under(&self, rel_dir: &str) {
        if let Ok(mut known) = self.known.lock() {
            let dir = format!("{}/", rel_dir.trim_end_matches('/'));
            known.retain(|k, _| !(k == rel_dir || k.starts_with(&dir)));
        }
    }

    /// Whether the store is known to hold `rel` with this blake3.
    fn holds(&self, rel: &str, blake3: &str) -> bool {
        self.known
            .lock()
            .map(|k| k.get(rel).is_some_and(|h| h == blake3))
            .unwrap_or(false)
    }

    /// Deletes the object at `rel` (nothing if there is none).
    pub fn delete(&self, rel: &str) -> Result<(), RemoteError> {
        let key = self.key(rel);
        self.forget_under(rel);
        match self.block_on(self.store.delete(&key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_err(rel)(e)),
        }
    }

    /// Every object under the directory `rel_dir`, as paths inside the run directory.
    pub fn list(&self, rel_dir: &str) -> Result<Vec<String>, RemoteError> {
        let key = self.key(rel_dir);
        let base = self.prefix.clone();
        self.block_on(async {
            let mut out = Vec::new();
            let mut stream = self.store.list(Some(&key));
            while let Some(meta) = stream.next().await {
                let meta = meta.map_err(self.store_err(rel_dir))?;
                if let Some(rel) = relative(&base, &meta.location) {
                    out.push(rel);
                }
            }
            out.sort();
            Ok(out)
        })
    }

    /// The names of the directories directly under `rel_dir`.
    pub fn subdirs(&self, rel_dir: &str) -> Result<Vec<String>, RemoteError> {
        let key = self.key(rel_dir);
        self.block_on(async {
            let listed = self
                .store
                .list_with_delimiter(Some(&key))
                .await
                .map_err(self.store_err(rel_dir))?;
            let mut out: Vec<String> = listed
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename().map(str::to_string))
                .collect();
            out.sort();
            Ok(out)
        })
    }

    /// Deletes every object under the directory `rel_dir`.
    pub fn delete_dir(&self, rel_dir: &str) -> Result<(), RemoteError> {
        let keys = self.list(rel_dir)?;
        self.forget_under(rel_dir);
        self.block_on(async {
            let results: Vec<_> = futures::stream::iter(keys.iter())
                .map(|rel| async move {
                    match self.store.delete(&self.key(rel)).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                        Err(e) => Err(self.store_err(rel)(e)),
                    }
                })
                .buffer_unordered(PARALLEL_TRANSFERS)
                .collect()
                .await;
            results.into_iter().collect::<Result<(), _>>()
        })
    }

    /// Uploads the working copy's files `rels` that the store is not known to hold with
    /// the given hash (`(rel, blake3)`; a `None` hash always uploads).
    pub fn upload(&self, files: &[(String, Option<String>)]) -> Result<(), RemoteError> {
        let todo: Vec<&(String, Option<String>)> = files
            .iter()
            .filter(|(rel, h)| !h.as_deref().is_some_and(|h| self.holds(rel, h)))
            .collect();
        let results: Vec<Result<(), RemoteError>> = self.block_on(async {
            futures::stream::iter(todo)
                .map(|(rel, _)| async move {
                    let path = self.local.join(rel);
                    let bytes = tokio::fs::read(&path)
                        .await
                        .map_err(|source| RemoteError::Io { path, source })?;
                    let hash = crate::fingerprint::hash_bytes(&bytes);
                    let payload = PutPayload::from(Bytes::from(bytes));
                    self.store
                        .put(&self.key(rel), payload)
                        .await
                        .map_err(self.store_err(rel))?;
                    if let Ok(mut known) = self.known.lock() {
                        known.insert(rel.clone(), hash);
                    }
                    Ok(())
                })
                .buffer_unordered(PARALLEL_TRANSFERS)
                .collect()
                .await
        });
        results.into_iter().collect()
    }
}

/// `key` relative to `base`, `/`-separated; `None` if it is not under it.
fn relative(base: &ObjectPath, key: &ObjectPath) -> Option<String> {
    let parts: Vec<String> = key
        .prefix_match(base)?
        .map(|p| p.as_ref().to_string())
        .collect();
    Some(parts.join("/"))
}
