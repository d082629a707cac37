//! The lock of a run directory on object storage: lease objects with an expiry.
//!
//! A local run directory is locked with `flock`; an object store has no locks, so a
//! holder writes a lease object under `<run>/.lease/` that says who holds it and until
//! when, and renews it (every third of its lifetime) while it runs:
//!
//! - an exclusive holder (a run, a commit) creates `.lease/exclusive.json` with a
//!   conditional create, then checks that no live shared lease exists;
//! - a shared holder (a shard) checks that no live exclusive lease exists, writes its own
//!   `.lease/shared-<attempt>.json`, then checks again.
//!
//! Either way, two conflicting holders cannot both pass. A lease whose expiry has passed
//! belongs to a holder that was killed or lost its connection: it is reported as stale
//! and taken over (the exclusive one with a conditional update, so that of two
//! processes taking it over one wins). The lifetime is `SSPO_LEASE_TTL_S` seconds
//! (default 60): a killed holder blocks the run directory that long at most.
//!
//! There is no fencing: a holder paused for longer than the lifetime (a stopped process,
//! a partitioned machine) may find its lease taken when it resumes. Renewal failures are
//! printed as warnings.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{RemoteError, RemoteRun};
use crate::store::{now_s, LockMode};

/// Where the leases live, inside the run directory.
pub const LEASE_DIR: &str = ".lease";
const EXCLUSIVE: &str = ".lease/exclusive.json";
const DEFAULT_TTL_S: f64 = 60.0;

/// What a lease object says.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRecord {
    /// `host:pid` of the holder.
    holder: String,
    /// `exclusive` or `shared`.
    mode: String,
    acquired_at: f64,
    expires_at: f64,
}

/// The lease's lifetime: `SSPO_LEASE_TTL_S`, or 60 s.
pub fn ttl_s() -> f64 {
    std::env::var("SSPO_LEASE_TTL_S")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
        .unwrap_or(DEFAULT_TTL_S)
}

fn holder() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host}:{}", std::process::id())
}

/// A held lease: renewed until dropped, then deleted.
pub struct Lease {
    remote: Arc<RemoteRun>,
    rel: String,
    stop: Arc<(Mutex<bool>, Condvar)>,
    renewer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("rel", &self.rel).finish()
    }
}

impl Lease {
    /// The lease in `mode`. A conflicting live lease is an error at once unless `wait`,
    /// when `log` says once that it waits, and it polls until the lease is free.
    pub fn acquire(
        remote: &Arc<RemoteRun>,
        mode: LockMode,
        wait: bool,
        log: &dyn Fn(&str),
    ) -> Result<Self, RemoteError> {
        let ttl = ttl_s();
        let mut said_waiting = false;
        loop {
            let attempt = match mode {
                LockMode::Exclusive => try_exclusive(remote, ttl, log)?,
                LockMode::Shared => try_shared(remote, ttl, log)?,
            };
            let other = match attempt {
                Attempt::Held(rel) => return Ok(Self::start(remote, rel, mode, ttl)),
                Attempt::Retry => continue,
                Attempt::Blocked(other) => other,
            };
            let expires_in = format!("{:.0} s from now", (other.expires_at - now_s()).max(0.0));
            if !wait {
                return Err(RemoteError::Leased {
                    url: remote.url().to_string(),
                    holder: format!("{} ({})", other.holder, other.mode),
                    expires_in,
                });
            }
            if !said_waiting {
                log(&format!(
                    "waiting for the lease of {} ({}) on {} (it expires {expires_in} unless renewed)",
                    other.holder,
                    other.mode,
                    remote.url()
                ));
                said_waiting = true;
            }
            std::thread::sleep(Duration::from_secs_f64((ttl / 4.0).clamp(0.1, 1.0)));
        }
    }

    fn start(remote: &Arc<RemoteRun>, rel: String, mode: LockMode, ttl: f64) -> Self {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let renewer = {
            let (remote, rel, stop) = (remote.clone(), rel.clone(), stop.clone());
            std::thread::Builder::new()
                .name("sspo-lease".into())
                .spawn(move || renew(&remote, &rel, mode, ttl, &stop))
                .ok()
        };
        Self {
            remote: remote.clone(),
            rel,
            stop,
            renewer,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let (stopped, cv) = &*self.stop;
        if let Ok(mut s) = stopped.lock() {
            *s = true;
        }
        cv.notify_all();
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        let _ = self.remote.delete(&self.rel);
    }
}

/// Rewrites the lease with a new expiry every third of its lifetime until stopped.
fn renew(remote: &RemoteRun, rel: &str, mode: LockMode, ttl: f64, stop: &(Mutex<bool>, Condvar)) {
    let (stopped, cv) = stop;
    let acquired_at = now_s();
    let Ok(mut guard) = stopped.lock() else {
        return;
    };
    loop {
        let Ok((g, _)) = cv.wait_timeout(guard, Duration::from_secs_f64(ttl / 3.0)) else {
            return;
        };
        guard = g;
        if *guard {
            return;
        }
        let mut rec = record(mode, ttl);
        rec.acquired_at = acquired_at;
        if let Err(e) = remote.put(rel, &to_bytes(&rec)) {
            eprintln!(
                "warning: could not renew the lease {}: {e}",
                remote.url_of(rel)
            );
        }
    }
}

fn record(mode: LockMode, ttl: f64) -> LeaseRecord {
    let now = now_s();
    LeaseRecord {
        holder: holder(),
        mode: match mode {
            LockMode::Exclusive => "exclusive",
            LockMode::Shared => "shared",
        }
        .into(),
        acquired_at: now,
        expires_at: now + ttl,
    }
}

fn to_bytes(rec: &LeaseRecord) -> Vec<u8> {
    serde_json::to_vec_pretty(rec).unwrap_or_default()
}

/// A lease object's record; an unreadable one counts as expired (its holder is unknown).
fn parse(bytes: &[u8]) -> LeaseRecord {
    serde_json::from_slice(bytes).unwrap_or(LeaseRecord {
        holder: "an unreadable lease".into(),
        mode: "unknown".into(),
        acquired_at: 0.0,
        expires_at: 0.0,
    })
}

fn report_stale(remote: &RemoteRun, rel: &str, rec: &LeaseRecord, log: &dyn Fn(&str)) {
    log(&format!(
        "stale lease {}: {} ({}) let it expire {:.0} s ago (killed or disconnected); taking over",
        remote.url_of(rel),
        rec.holder,
        rec.mode,
        (now_s() - rec.expires_at).max(0.0)
    ));
}

/// One try at a lease.
enum Attempt {
    /// Held now: the lease object's path.
    Held(String),
    /// A live lease is in the way.
    Blocked(LeaseRecord),
    /// Another process moved at the same time: try again at once.
    Retry,
}

/// Tries the exclusive lease once.
fn try_exclusive(remote: &RemoteRun, ttl: f64, log: &dyn Fn(&str)) -> Result<Attempt, RemoteError> {
    let mine = to_bytes(&record(LockMode::Exclusive, ttl));
    let mut held = remote.create(EXCLUSIVE, &mine)?;
    if !held {
        let Some((bytes, etag)) = remote.get_versioned(EXCLUSIVE)? else {
            // Released between the create and the read.
            return Ok(Attempt::Retry);
        };
        let other = parse(&bytes);
        if other.expires_at > now_s() {
            return Ok(Attempt::Blocked(other));
        }
        report_stale(remote, EXCLUSIVE, &other, log);
        held = match etag {
            Some(etag) => remote.replace_if(EXCLUSIVE, &mine, etag)?,
            None => false,
        };
        if !held {
            return Ok(Attempt::Retry);
        }
    }
    if let Some(shard) = live_shared(remote, log)? {
        remote.delete(EXCLUSIVE)?;
        return Ok(Attempt::Blocked(shard));
    }
    Ok(Attempt::Held(EXCLUSIVE.to_string()))
}

/// Tries a shared lease once.
fn try_shared(remote: &RemoteRun, ttl: f64, log: &dyn Fn(&str)) -> Result<Attempt, RemoteError> {
    if let Some(other) = live_exclusive(remote, log)? {
        return Ok(Attempt::Blocked(other));
    }
    let rel = format!("{LEASE_DIR}/shared-{}.json", crate::markers::attempt_tag());
    remote.put(&rel, &to_bytes(&record(LockMode::Shared, ttl)))?;
    if let Some(other) = live_exclusive(remote, &|_| {})? {
        remote.delete(&rel)?;
        return Ok(Attempt::Blocked(other));
    }
    Ok(Attempt::Held(rel))
}

/// The exclusive lease if it is live; an expired one is reported.
fn live_exclusive(
    remote: &RemoteRun,
    log: &dyn Fn(&str),
) -> Result<Option<LeaseRecord>, RemoteError> {
    let Some(bytes) = remote.get(EXCLUSIVE)? else {
        return Ok(None);
    };
    let rec = parse(&bytes);
    if rec.expires_at > now_s() {
        return Ok(Some(rec));
    }
    log(&format!(
        "stale lease {}: {} ({}) let it expire {:.0} s ago; ignored",
        remote.url_of(EXCLUSIVE),
        rec.holder,
        rec.mode,
        (now_s() - rec.expires_at).max(0.0)
    ));
    Ok(None)
}

/// A live shared lease, if any; expired ones are reported and deleted.
fn live_shared(remote: &RemoteRun, log: &dyn Fn(&str)) -> Result<Option<LeaseRecord>, RemoteError> {
    for rel in remote.list(LEASE_DIR)? {
        let name = rel.rsplit('/').next().unwrap_or(&rel);
        if !name.starts_with("shared-") {
            continue;
        }
        let Some(bytes) = remote.get(&rel)? else {
            continue;
        };
        let rec = parse(&bytes);
        if rec.expires_at > now_s() {
            return Ok(Some(rec));
        }
        report_stale(remote, &rel, &rec, log);
        remote.delete(&rel)?;
    }
    Ok(None)
}
