//! The chunk loop of one shard of a sharded node run: the chunks the shard owns, each
//! committed through a create-only marker ([`crate::markers`]), never the manifest.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Instant;

use super::{cancel_requested, chunk_range, ChunkOutput, RunContext};
use crate::error::OpError;
use crate::markers::{self, MarkerHeader};
use crate::shard::Shard;
use crate::store::{schema_records, ChunkRecord};

impl RunContext<'_> {
    /// Computes the chunks of `shard` that no attempt has committed yet, and stops the
    /// operator with [`OpError::ShardDone`] after the last: what an operator does after
    /// its chunk loop (a summary over all rows) runs once, at the commit.
    pub(super) fn run_shard_chunks<F>(
        &mut self,
        shard: Shard,
        attempt: String,
        input_rows: usize,
        chunk_rows: usize,
        mut f: F,
    ) -> Result<(), OpError>
    where
        F: FnMut(&mut Self, Range<usize>) -> Result<ChunkOutput, OpError>,
    {
        let chunk_rows = chunk_rows.max(1);
        let n_chunks = input_rows.div_ceil(chunk_rows).max(1);
        if let Some(m) = &self.manifest {
            if m.chunk_rows != chunk_rows as u64 || m.input_rows != input_rows as u64 {
                return Err(OpError::msg(format!(
                    "the chunks committed so far were made from {} input rows in chunks of {}, \
                     this shard sees {input_rows} in chunks of {chunk_rows}; run the node \
                     without --shard once to start it over",
                    m.input_rows, m.chunk_rows
                )));
            }
        }
        let done = self.committed_chunks(n_chunks);
        let owned: Vec<usize> = (0..n_chunks)
            .filter(|&i| shard.owns(i as u64) && !done.contains(&(i as u64)))
            .collect();
        let header = MarkerHeader {
            node: self.node_id.clone(),
            op: self.op.clone(),
            op_version: self.op_version,
            fingerprint: self.fingerprint.clone(),
            chunk_rows: chunk_rows as u64,
            input_rows: input_rows as u64,
            shard: shard.to_string(),
            attempt: attempt.clone(),
        };
        let owned_rows: usize = owned
            .iter()
            .map(|&i| chunk_range(i, chunk_rows, input_rows).len())
            .sum();
        self.progress.set_total(owned_rows as u64);
        self.log(&format!(
            "shard {shard}: {} of {n_chunks} chunks to compute",
            owned.len()
        ));
        self.dir.ensure()?;
        let mut lost = 0usize;
        for i in owned {
            if cancel_requested() {
                return Err(OpError::Cancelled);
            }
            let range = chunk_range(i, chunk_rows, input_rows);
            // Another attempt of this shard (a duplicate job) may have done it meanwhile.
            if markers::has_marker(&self.dir, &self.fingerprint, i as u64) {
                self.progress.inc(range.len() as u64);
                continue;
            }
            let counted = self.counters.clone();
            let started = Instant::now();
            let out = f(self, range.clone())?;
            let mut schema = BTreeMap::new();
            schema.insert(String::new(), schema_records(&out.main.schema()));
            let mut tables = vec![("", &out.main)];
            for (table, batch) in &out.extra {
                schema.insert(table.clone(), schema_records(&batch.schema()));
                tables.push((table.as_str(), batch));
            }
            let chunk = ChunkRecord {
                index: i as u64,
                input_start: range.start as u64,
                input_end: range.end as u64,
                files: Vec::new(),
            };
            let marker = markers::new_marker(
                &header,
                chunk,
                schema,
                counters_since(&counted, &self.counters),
                started.elapsed().as_secs_f64(),
            );
            if !markers::commit_chunk(&self.dir, marker, &tables)? {
                lost += 1;
            }
            self.progress.inc(range.len() as u64);
        }
        if lost > 0 {
            let what = format!(
                "{lost} chunk{{|s}} had been committed by another attempt meanwhile; \
                 {{its|their}} output stands and this attempt's was discarded"
            );
            self.log(&sspo_common::plural::agree(lost as u64, &what));
        }
        Err(OpError::ShardDone)
    }
}

/// What each counter gained since `before` (a chunk's own counts).
fn counters_since(
    before: &BTreeMap<String, u64>,
    now: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    now.iter()
        .filter_map(|(k, v)| {
            let gained = v - before.get(k).copied().unwrap_or(0);
            (gained > 0).then(|| (k.clone(), gained))
        })
        .collect()
}
