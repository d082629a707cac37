//! SQL over a run: every node's committed parts (complete or partial nodes alike) as a
//! DataFusion table named after the node; extra tables as `<node>_<table>`.
//!
//! Before a query every listed part is stat'ed against its recorded size, so a missing or
//! truncated part is named (node, chunk, file) instead of failing deep in DataFusion; if
//! the query fails all the same, the parts are hashed to name the one at fault. `sql`
//! does not hash parts that read fine: that is `sspo-run verify`'s job.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::integrity::{check_node, node_dirs};
use crate::store::{Check, Damage, Manifest, NodeDir, PartProblem};

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("{0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{}", damage_text(.0, .1.as_deref()))]
    Damaged(Vec<Damage>, Option<String>),
    #[error("{0} is not a run directory (no node has written output there yet)")]
    NotARun(PathBuf),
    #[error("cannot start the query runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{first} and {second} are both the SQL table `{name}`; rename one of the nodes")]
    TableClash {
        name: String,
        /// Which table of which node, as a phrase.
        first: String,
        second: String,
    },
}

/// A table of a run.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// The SQL name: the node's id, or `<node>_<table>` for an extra table.
    pub name: String,
    pub node: String,
    /// The table's name in the node ("" for the primary table).
    pub table: String,
    pub rows: u64,
    pub state: String,
    pub files: Vec<PathBuf>,
}

impl TableInfo {
    /// "the table of node `n`" or "table `t` of node `n`".
    fn describe(&self) -> String {
        if self.table.is_empty() {
            format!("the table of node `{}`", self.node)
        } else {
            format!("table `{}` of node `{}`", self.table, self.node)
        }
    }
}

/// Refuses two tables with one SQL name (the plan rejects such pipelines, but a run
/// directory can hold nodes of several pipelines): registering both would silently
/// replace one by the other.
fn check_unique_names(infos: &[TableInfo]) -> Result<(), SqlError> {
    for (k, info) in infos.iter().enumerate() {
        if let Some(first) = infos[..k].iter().find(|t| t.name == info.name) {
            return Err(SqlError::TableClash {
                name: info.name.clone(),
                first: first.describe(),
                second: info.describe(),
            });
        }
    }
    Ok(())
}

/// "N damaged parts" and each, then the query's error, if any.
fn damage_text(damage: &[Damage], error: Option<&str>) -> String {
    let n = damage.len() as u64;
    let mut text = sspo_common::plural::agree(
        n,
        &format!("{n} damaged part{{|s}} (`sspo-run verify` checks them all; the next run recomputes them):"),
    );
    for d in damage {
        text.push_str(&format!("\n  {d}"));
    }
    if let Some(e) = error {
        text.push_str(&format!("\nthe query failed with: {e}"));
    }
    text
}

/// Every table of the run, from the manifests (never from a directory listing, so
/// uncommitted files are invisible).
pub fn tables(run_dir: &Path) -> Result<Vec<TableInfo>, SqlError> {
    Ok(manifests(run_dir)?
        .iter()
        .flat_map(|(dir, m)| tables_of(&dir.path, m))
        .collect())
}

/// Every node's committed state; a node that shards are still computing shows the
/// chunks they have committed so far, as a partial table.
fn manifests(run_dir: &Path) -> Result<Vec<(NodeDir, Manifest)>, SqlError> {
    let dirs = node_dirs(run_dir).ok_or_else(|| SqlError::NotARun(run_dir.to_path_buf()))?;
    let mut out = Vec::new();
    for dir in dirs {
        if let Some(m) = crate::markers::node_view(&dir, None)? {
            out.push((dir, m));
        }
    }
    Ok(out)
}

/// Every damaged part of the run's nodes, checked as far as `check` goes.
fn damage(nodes: &[(NodeDir, Manifest)], check: Check) -> Vec<Damage> {
    nodes
        .iter()
        .flat_map(|(dir, m)| check_node(dir, m, check))
        .collect()
}

fn tables_of(dir: &Path, m: &Manifest) -> Vec<TableInfo> {
    m.table_names()
        .into_iter()
        .map(|t| TableInfo {
            name: if t.is_empty() {
                m.node.clone()
            } else {
                format!("{}_{t}", m.node)
            },
            node: m.node.clone(),
            table: t.clone(),
            rows: m.rows.get(&t).copied().unwrap_or(0),
            state: format!("{:?}", m.state).to_lowercase(),
            files: m.files_of(&t).iter().map(|f| dir.join(&f.file)).collect(),
        })
        .collect()
}

/// A DataFusion context with every table of the run registered.
pub async fn context(run_dir: &Path) -> Result<SessionContext, SqlError> {
    let infos = tables(run_dir)?;
    check_unique_names(&infos)?;
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_information_schema(true));
    for info in infos {
        if info.files.is_empty() {
            continue;
        }
        let urls = info
            .files
            .iter()
            .map(|f| {
                let abs = std::fs::canonicalize(f).unwrap_or_else(|_| f.clone());
                ListingTableUrl::parse(abs.to_string_lossy())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .infer_schema(&ctx.state())
            .await?;
        let table = ListingTable::try_new(config)?;
        ctx.register_table(info.name.as_str(), Arc::new(table))?;
    }
    Ok(ctx)
}

/// Runs one query to completion. A missing or truncated part is refused before the
/// query; a query that fails on a file is explained by the parts whose hash is wrong.
pub fn query(run_dir: &Path, sql: &str) -> Result<Vec<RecordBatch>, SqlError> {
    let nodes = manifests(run_dir)?;
    let damaged = damage(&nodes, Check::Size);
    if !damaged.is_empty() {
        return Err(SqlError::Damaged(damaged, None));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(SqlError::Runtime)?;
    let result = rt.block_on(async {
        let ctx = context(run_dir).await?;
        let df = ctx.sql(sql).await?;
        Ok(df.collect().await?)
    });
    match result {
        Err(SqlError::DataFusion(e)) if reads_files(&e) => {
            let mut damaged = damage(&nodes, Check::Hash);
            if damaged.is_empty() {
                // Parts of older manifests have no hash: name those that do not open.
                damaged = unopenable(&nodes);
            }
            if damaged.is_empty() {
                Err(SqlError::DataFusion(e))
            } else {
                Err(SqlError::Damaged(damaged, Some(e.to_string())))
            }
        }
        other => other,
    }
}

/// Parts whose Parquet footer does not read.
fn unopenable(nodes: &[(NodeDir, Manifest)]) -> Vec<Damage> {
    let mut out = Vec::new();
    for (dir, m) in nodes {
        for (chunk, f) in m.parts() {
            let path = dir.path.join(&f.file);
            let opened = std::fs::File::open(&path)
                .map_err(|e| e.to_string())
                .and_then(|file| {
                    ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| e.to_string())
                });
            if let Err(e) = opened {
                out.push(Damage {
                    node: dir.node(),
                    chunk,
                    path,
                    problem: PartProblem::Unreadable(e),
                });
            }
        }
    }
    out
}

/// Whether a query's error may come from a part file (not from the SQL text or plan).
fn reads_files(e: &datafusion::error::DataFusionError) -> bool {
    use datafusion::error::DataFusionError as E;
    match e {
        E::ParquetError(_) | E::ArrowError(..) | E::IoError(_) | E::External(_) => true,
        E::Context(_, inner) => reads_files(inner),
        E::Shared(inner) => reads_files(inner),
        _ => false,
    }
}

/// Runs `sql` and writes its result to the Parquet file `out` (created or replaced, via a
/// temp file and a rename); returns the number of rows. For exports to other tools.
pub fn query_to_parquet(run_dir: &Path, sql: &str, out: &Path) -> Result<u64, SqlError> {
    let batches = query(run_dir, sql)?;
    // An empty result has no batch to take the columns from: plan the query for them.
    let schema = match batches.first() {
        Some(b) => b.schema(),
        None => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .map_err(SqlError::Runtime)?;
            rt.block_on(async {
                let df = context(run_dir).await?.sql(sql).await?;
                Ok::<_, SqlError>(Arc::new(df.schema().as_arrow().clone()))
            })?
        }
    };
    let io = |e: std::io::Error| {
        SqlError::Store(crate::store::StoreError::Io {
            path: out.to_path_buf(),
            source: e,
        })
    };
    let pq = |e: parquet::errors::ParquetError| {
        SqlError::Store(crate::store::StoreError::Parquet {
            path: out.to_path_buf(),
            source: e,
        })
    };
    let mut writer = parquet::arrow::ArrowWriter::try_new(Vec::new(), schema, None).map_err(pq)?;
    let mut rows = 0u64;
    for b in &batches {
        writer.write(b).map_err(pq)?;
        rows += b.num_rows() as u64;
    }
    let bytes = writer.into_inner().map_err(pq)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    crate::store::write_atomic(out, &bytes)?;
    Ok(rows)
}

/// Output formats of `sspo-run sql` and `show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// Renders batches in `format`.
pub fn render(batches: &[RecordBatch], format: Format) -> Result<String, SqlError> {
    match format {
        Format::Table => Ok(arrow::util::pretty::pretty_format_batches(batches)?.to_string()),
        Format::Csv => {
            let mut buf = Vec::new();
            {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut buf);
                for b in batches {
                    w.write(b)?;
                }
            }
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        Format::Json => {
            let mut buf = Vec::new();
            {
                let mut w = arrow::json::ArrayWriter::new(&mut buf);
                let refs: Vec<&RecordBatch> = batches.iter().collect();
                w.write_batches(&refs)?;
                w.finish()?;
            }
            if buf.is_empty() {
                buf.extend_from_slice(b"[]");
            }
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
    }
}
