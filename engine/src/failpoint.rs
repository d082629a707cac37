//! Fault injection into the store's atomic writes, for tests of the commit protocol.
//!
//! Compiled only with the `failpoints` cargo feature, which the workspace's tests turn on
//! (engine and CLI dev-dependencies) and a plain build never does: a release binary
//! has no fail point at all. With the feature, a fail point is armed per thread by
//! [`arm`] (in-process tests), or for the main thread of a process by the environment
//! variable `SSPO_FAILPOINT` (tests of the binary):
//!
//! - `error:N`: the N-th atomic write from now (1-based) fails with an I/O error after
//!   its temp file is written and before the rename;
//! - `pause:N:PATH`: at that point the N-th write creates the file PATH and waits until
//!   the process is killed (or interrupted: then the write goes on), so that a test can
//!   signal the process at a known point of a commit.

use std::path::Path;

/// What an armed fail point does at its write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Error,
    /// Create the marker file, then wait until killed.
    Pause(std::path::PathBuf),
}

#[cfg(feature = "failpoints")]
mod armed {
    use super::Action;
    use std::cell::RefCell;
    use std::path::Path;

    struct Armed {
        /// Writes left before the one that fails (1 = the next).
        countdown: u64,
        action: Action,
    }

    thread_local! {
        static ARMED: RefCell<Option<Armed>> = RefCell::new(from_env());
    }

    /// `SSPO_FAILPOINT`, for the process's main thread only: other threads of a run do
    /// not commit, and one count per process keeps the N-th write well defined.
    fn from_env() -> Option<Armed> {
        if std::thread::current().name() != Some("main") {
            return None;
        }
        let spec = std::env::var("SSPO_FAILPOINT").ok()?;
        let mut parts = spec.splitn(3, ':');
        let kind = parts.next()?;
        let countdown = parts.next()?.parse().ok()?;
        let action = match (kind, parts.next()) {
            ("error", None) => Action::Error,
            ("pause", Some(path)) => Action::Pause(path.into()),
            _ => return None,
        };
        Some(Armed { countdown, action })
    }

    pub fn arm(nth: u64, action: Action) {
        ARMED.with(|a| {
            *a.borrow_mut() = Some(Armed {
                countdown: nth,
                action,
            })
        });
    }

    pub fn disarm() {
        ARMED.with(|a| *a.borrow_mut() = None);
    }

    pub fn before_rename(tmp: &Path) -> std::io::Result<()> {
        let fired = ARMED.with(|a| {
            let mut a = a.borrow_mut();
            let armed = a.as_mut()?;
            armed.countdown = armed.countdown.saturating_sub(1);
            if armed.countdown > 0 {
                return None;
            }
            a.take().map(|armed| armed.action)
        });
        match fired {
            None => Ok(()),
            Some(Action::Error) => Err(std::io::Error::other(format!(
                "injected write failure (fail point) before renaming {}",
                tmp.display()
            ))),
            Some(Action::Pause(marker)) => {
                std::fs::write(&marker, tmp.display().to_string())?;
                // Until killed; a Ctrl-C or SIGTERM lets the write finish, as it would
                // have had it come a moment later.
                while !crate::run::cancel_requested() {
                    std::thread::park_timeout(std::time::Duration::from_millis(10));
                }
                Ok(())
            }
        }
    }
}

/// Arms this thread's fail point: the `nth` atomic write from now (1 = the next) does
/// `action`. Only with the `failpoints` feature.
#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub fn arm(nth: u64, action: Action) {
    armed::arm(nth, action);
}

/// Disarms this thread's fail point.
#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub fn disarm() {
    armed::disarm();
}

/// Called by every atomic write between its fsync and its rename.
#[inline]
pub(crate) fn before_rename(tmp: &Path) -> std::io::Result<()> {
    #[cfg(feature = "failpoints")]
    {
        armed::before_rename(tmp)
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = tmp;
        Ok(())
    }
}
