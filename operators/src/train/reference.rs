//! Reference log-probs of the preference losses: computed once with the input model
//! before the first step, and cached in the scratch directory as Parquet
//! (`ref_logprobs-<fingerprint>.parquet`: `seq`, `logprobs list<float>`), so a resumed
//! run reads them back instead of recomputing.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Float32Builder, Int64Builder, ListBuilder, RecordBatch};
use arrow::datatypes::{DataType, Field, Float32Type, Schema};
use sspo_engine::store::{read_parquet, NodeDir};
use sspo_engine::{OpError, RunContext};
use sspo_model::train::{reference_logprobs, ScoredSeq};
use sspo_model::Model;

use super::examples::{Example, Seq};

/// The cache's file name in the scratch directory (one per fingerprint).
pub fn file_name(fingerprint: &str) -> String {
    let short: String = fingerprint.chars().take(16).collect();
    format!("ref_logprobs-{short}.parquet")
}

/// The reference log-probs of every sequence of `examples` (example-major: chosen then
/// rejected), read from the cache at `path` when it fits, else computed with `model` in
/// batches of `batch` sequences and cached.
pub fn cached_logprobs(
    ctx: &RunContext,
    model: &Model,
    examples: &[Example],
    path: &Path,
    batch: usize,
) -> Result<Vec<Vec<f32>>, OpError> {
    let seqs: Vec<&Seq> = examples.iter().flat_map(Example::seqs).collect();
    let lens: Vec<usize> = seqs.iter().map(|s| s.scored()).collect();
    if let Some(refs) = read(path, &lens) {
        ctx.log("reference log-probs read from the cache");
        return Ok(refs);
    }
    ctx.log(&format!(
        "computing reference log-probs of {} sequences",
        lens.len()
    ));
    let scored: Vec<ScoredSeq<'_>> = seqs.iter().map(|s| s.as_scored()).collect();
    let refs = reference_logprobs(&model.decoder, &scored, batch)
        .map_err(|e| OpError::context("reference log-probs", e))?;
    write(path, &refs)?;
    Ok(refs)
}

/// Staging directory of a cache being written (inside the scratch directory, which
/// prunes it if a run dies mid-write).
const STAGING: &str = ".tmp-ref_logprobs";

/// Writes the cache through the store's part writer (temporary name, fsync, rename),
/// then moves the part to `path`.
fn write(path: &Path, refs: &[Vec<f32>]) -> Result<(), OpError> {
    let mut seq = Int64Builder::new();
    let mut lists = ListBuilder::new(Float32Builder::new());
    for (i, r) in refs.iter().enumerate() {
        seq.append_value(i as i64);
        lists.values().append_slice(r);
        lists.append(true);
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("seq", DataType::Int64, false),
        Field::new(
            "logprobs",
            DataType::List(Arc::new(Field::new("item", DataType::Float32, true))),
            true,
        ),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![Arc::new(seq.finish()), Arc::new(lists.finish())],
    )?;
    // Scratch is never committed: a local-only view of the directory.
    let scratch = NodeDir {
        path: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        remote: None,
    };
    let part = scratch.write_part(STAGING, 0, &batch)?;
    let written = scratch.path.join(&part.file);
    std::fs::rename(&written, path).map_err(|e| OpError::context(path.display().to_string(), e))?;
    // Empty now; a leftover is pruned with the scratch directory's other strays.
    let _ = std::fs::remove_dir(scratch.path.join(STAGING));
    Ok(())
}

/// The cached reference log-probs, when the file exists and fits `expected` lengths.
fn read(path: &Path, expected: &[usize]) -> Option<Vec<Vec<f32>>> {
    let (_, batches) = read_parquet(path).ok()?;
    let mut out = Vec::with_capacity(expected.len());
    for b in &batches {
        let l = b.column_by_name("logprobs")?.as_list_opt::<i32>()?;
        for i in 0..l.len() {
            let v = l.value(i);
            let f = v.as_primitive_opt::<Float32Type>()?;
            out.push(f.values().to_vec());
        }
    }
    let fits = out.len() == expected.len() && out.iter().zip(expected).all(|(v, &n)| v.len() == n);
    fits.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_reads_back_exactly_and_only_when_it_fits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name("0123456789abcdef0123"));
        assert!(path.ends_with("ref_logprobs-0123456789abcdef.parquet"));
        let refs = vec![vec![-0.5f32, -1.25, f32::MIN_POSITIVE], vec![], vec![-3.0]];
        write(&path, &refs).unwrap();
        assert_eq!(read(&path, &[3, 0, 1]), Some(refs));
        assert_eq!(read(&path, &[3, 0, 2]), None);
        assert_eq!(read(&path, &[3, 0]), None);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "only the cache: {left:?}");
        assert_eq!(read(&dir.path().join("absent.parquet"), &[]), None);
    }
}
