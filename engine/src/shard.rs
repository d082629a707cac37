//! Which chunks a shard of a sharded node run owns (`--shard I/N`).
//!
//! Ownership is a function of the chunk index alone (`chunk % N == I`): it does not
//! depend on which chunks are done, on timing or on the host, so re-running a shard, or a
//! whole array of shards, assigns exactly the same chunks to the same shard.

use std::fmt;

/// Environment variables `--shard auto` reads, in the order they are tried.
pub const SLURM_INDEX: &str = "SLURM_ARRAY_TASK_ID";
pub const SLURM_MIN: &str = "SLURM_ARRAY_TASK_MIN";
pub const SLURM_COUNT: &str = "SLURM_ARRAY_TASK_COUNT";
/// Set by Kubernetes on every pod of an Indexed Job.
pub const K8S_INDEX: &str = "JOB_COMPLETION_INDEX";
/// The shard count for an index that does not come with one (Kubernetes).
pub const COUNT_VAR: &str = "SSPO_SHARD_COUNT";

/// Shard `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error(
        "`--shard {0}`: expected I/N (shard I of N, 0 ≤ I < N), e.g. `--shard 0/4`, or `auto`"
    )]
    Syntax(String),
    #[error("`--shard {index}/{count}`: the index must be below the count (shards are numbered 0 to {last})", last = .count.saturating_sub(1))]
    OutOfRange { index: u64, count: u64 },
    #[error("`--shard auto`: none of {SLURM_INDEX} (a Slurm job array) or {K8S_INDEX} (a Kubernetes Indexed Job) is set; give the shard as `--shard I/N`")]
    NoIndex,
    #[error("`--shard auto`: {index_var} is set but the shard count is not: set {COUNT_VAR}=N (or run as a Slurm array, which sets {SLURM_COUNT})")]
    NoCount { index_var: &'static str },
    #[error("`--shard auto`: {var}={value} is not a number")]
    NotANumber { var: &'static str, value: String },
}

impl Shard {
    pub fn new(index: u64, count: u64) -> Result<Self, ShardError> {
        if count == 0 || index >= count {
            return Err(ShardError::OutOfRange { index, count });
        }
        Ok(Shard { index, count })
    }

    /// `I/N`.
    pub fn parse(text: &str) -> Result<Self, ShardError> {
        let syntax = || ShardError::Syntax(text.to_string());
        let (i, n) = text.split_once('/').ok_or_else(syntax)?;
        let i = i.trim().parse().map_err(|_| syntax())?;
        let n = n.trim().parse().map_err(|_| syntax())?;
        Shard::new(i, n)
    }

    /// `auto`: the shard of this Slurm array task or Kubernetes Indexed Job pod, read
    /// from `env` (a lookup, so that tests need not touch the process environment).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, ShardError> {
        let number = |var: &'static str| -> Result<Option<u64>, ShardError> {
            match env(var) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| ShardError::NotANumber {
                        var,
                        value: v.clone(),
                    }),
            }
        };
        let (index, index_var) = if let Some(id) = number(SLURM_INDEX)? {
            // An array may be numbered from any base (`--array=1-4`).
            (
                id.saturating_sub(number(SLURM_MIN)?.unwrap_or(0)),
                SLURM_INDEX,
            )
        } else if let Some(id) = number(K8S_INDEX)? {
            (id, K8S_INDEX)
        } else {
            return Err(ShardError::NoIndex);
        };
        let count = match (index_var, number(SLURM_COUNT)?, number(COUNT_VAR)?) {
            (SLURM_INDEX, Some(n), _) => n,
            (_, _, Some(n)) => n,
            _ => return Err(ShardError::NoCount { index_var }),
        };
        Shard::new(index, count)
    }

    /// Whether this shard computes chunk `chunk`.
    pub fn owns(&self, chunk: u64) -> bool {
        chunk % self.count == self.index
    }

    /// The shard that owns `chunk` among `count`.
    pub fn owner_of(chunk: u64, count: u64) -> u64 {
        chunk % count.max(1)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn parses_and_owns_by_chunk_index_alone() {
        let s = Shard::parse("1/4").unwrap();
        assert_eq!(s, Shard { index: 1, count: 4 });
        let owned: Vec<u64> = (0..10).filter(|c| s.owns(*c)).collect();
        assert_eq!(owned, [1, 5, 9]);
        assert_eq!(s.to_string(), "1/4");
        for bad in ["4/4", "1/0"] {
            assert!(matches!(
                Shard::parse(bad),
                Err(ShardError::OutOfRange { .. })
            ));
        }
        for bad in ["1", "a/4", "1/4/2", ""] {
            assert!(matches!(Shard::parse(bad), Err(ShardError::Syntax(_))));
        }
        // Every chunk has exactly one owner.
        for c in 0..20 {
            let owners = (0..3)
                .filter(|i| Shard::new(*i, 3).unwrap().owns(c))
                .count();
            assert_eq!(owners, 1);
        }
    }

    #[test]
    fn auto_reads_slurm_then_kubernetes_and_says_what_is_missing() {
        let slurm = env(&[(SLURM_INDEX, "3"), (SLURM_MIN, "1"), (SLURM_COUNT, "4")]);
        assert_eq!(Shard::from_env(slurm).unwrap(), Shard::new(2, 4).unwrap());
        let k8s = env(&[(K8S_INDEX, "2"), (COUNT_VAR, "3")]);
        assert_eq!(Shard::from_env(k8s).unwrap(), Shard::new(2, 3).unwrap());
        assert_eq!(Shard::from_env(env(&[])), Err(ShardError::NoIndex));
        let e = Shard::from_env(env(&[(K8S_INDEX, "0")])).unwrap_err();
        assert!(e.to_string().contains(COUNT_VAR), "{e}");
        let e = Shard::from_env(env(&[(K8S_INDEX, "x")])).unwrap_err();
        assert!(e.to_string().contains("JOB_COMPLETION_INDEX=x"), "{e}");
    }
}
