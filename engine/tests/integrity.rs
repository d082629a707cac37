//! What is on disk, trusted only as far as it checks out: committed parts that were
//! truncated, altered or deleted, a write that fails in the middle of a commit, a
//! manifest of a newer format. Each case ends with nothing committed lost, a message that
//! names the node, chunk and file, and a resumed run whose tables equal a clean run's.

mod toy;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use sspo_engine::executor::{status, NodeStatus};
use sspo_engine::failpoint::{self, Action};
use sspo_engine::integrity::verify;
use sspo_engine::store::{Manifest, NodeDir, PartProblem, StoreError};
use sspo_engine::{NodeOutcome, Plan, RunError};
use toy::{options, plan, registry, Knobs};

/// `src` counts 10 rows in chunks of 3; `dbl` doubles them; `dbl2` doubles `dbl`;
/// `side` triples `src`; `sum` keeps `dbl`'s rows and commits a summary table after
/// its chunks.
const CHAIN: &str = "\
nodes:
  src: {op: count, params: {rows: 10, chunk_rows: 3}}
  dbl: {op: double, inputs: {rows: src}}
  dbl2: {op: double, inputs: {rows: dbl}, params: {chunk_rows: 2}}
  side: {op: double, inputs: {rows: src}, params: {factor: 3}}
  sum: {op: tally, inputs: {rows: dbl}}
";

/// Every table of CHAIN, with the query that reads it in a fixed order.
const TABLES: &[(&str, &str)] = &[
    ("src", "SELECT n FROM src ORDER BY n"),
    ("dbl", "SELECT n, input FROM dbl ORDER BY n"),
    ("dbl2", "SELECT n, input FROM dbl2 ORDER BY n"),
    ("side", "SELECT n, input FROM side ORDER BY n"),
    ("sum", "SELECT n FROM sum ORDER BY n"),
    ("sum_summary", "SELECT count_n, sum_n FROM sum_summary"),
];

struct Fixture {
    _tmp: tempfile::TempDir,
    knobs: Arc<Knobs>,
    plan: Plan,
    /// A clean, uninterrupted run of the plan.
    clean: PathBuf,
    /// The run the test damages.
    run: PathBuf,
}

fn fixture(yaml: &str) -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let knobs = Arc::new(Knobs::default());
    let plan = plan(yaml, &registry(&knobs)).expect("plan");
    let (clean, run) = (tmp.path().join("clean"), tmp.path().join("run"));
    sspo_engine::run(&plan, &options(&clean)).expect("clean run");
    knobs.take_computed();
    Fixture {
        _tmp: tmp,
        knobs,
        plan,
        clean,
        run,
    }
}

impl Fixture {
    /// Runs the plan on the damaged run dir.
    fn rerun(&self) -> Result<Vec<NodeOutcome>, RunError> {
        sspo_engine::run(&self.plan, &options(&self.run))
    }

    fn status(&self) -> Vec<(String, NodeStatus, Vec<String>)> {
        status(&self.plan, &self.run)
            .expect("status")
            .into_iter()
            .map(|r| (r.node, r.status, r.reasons))
            .collect()
    }

    fn status_of(&self, node: &str) -> (NodeStatus, Vec<String>) {
        let (_, st, reasons) = self
            .status()
            .into_iter()
            .find(|(n, ..)| n == node)
            .expect("node in status");
        (st, reasons)
    }

    /// Every table of the damaged run equals the clean run's.
    fn assert_tables_equal_clean(&self, tables: &[(&str, &str)]) {
        for (table, q) in tables {
            assert_eq!(
                query(&self.run, q),
                query(&self.clean, q),
                "table {table} differs from a clean run's"
            );
        }
        let verdicts = verify(&self.run, None).expect("verify");
        assert!(verdicts.iter().all(|v| v.is_ok()), "{verdicts:?}");
    }

    fn manifest(&self, node: &str) -> Manifest {
        NodeDir::new(&self.run, node)
            .read_manifest()
            .expect("manifest")
            .expect("committed")
    }

    /// The path of `node`'s part of chunk `chunk` (of `table`, "" = primary).
    fn part(&self, node: &str, table: &str, chunk: u64) -> PathBuf {
        let m = self.manifest(node);
        let (_, f) = m
            .parts()
            .find(|(c, f)| *c == chunk && f.table == table)
            .expect("part listed");
        self.run.join(node).join(&f.file)
    }

    /// A clean run in `run` too, ready to be damaged.
    fn run_clean(&self) {
        sspo_engine::run(&self.plan, &options(&self.run)).expect("run");
        self.knobs.take_computed();
    }
}

fn query(run_dir: &Path, sql: &str) -> Vec<RecordBatch> {
    sspo_engine::sql::query(run_dir, sql).expect("query")
}

fn action<'a>(outcomes: &'a [NodeOutcome], node: &str) -> &'a str {
    outcomes
        .iter()
        .find(|o| o.node == node)
        .map(|o| o.action)
        .unwrap_or("absent")
}

fn computed_nodes(knobs: &Knobs) -> BTreeSet<String> {
    knobs.take_computed().into_iter().map(|(n, _)| n).collect()
}

#[test]
fn a_truncated_part_is_damaged_and_only_its_chunk_and_the_nodes_below_are_recomputed() {
    let f = fixture(CHAIN);
    f.run_clean();
    let part = f.part("src", "", 1);
    std::fs::write(&part, b"garbage").expect("truncate");

    let (st, reasons) = f.status_of("src");
    assert_eq!(st, NodeStatus::Damaged);
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    let part_text = part.display().to_string();
    assert!(
        reasons[0].contains("node `src`, chunk 1")
            && reasons[0].contains(&part_text)
            && reasons[0].contains("has 7 bytes"),
        "{reasons:?}"
    );
    for node in ["dbl", "dbl2", "side", "sum"] {
        let (st, reasons) = f.status_of(node);
        assert_eq!(st, NodeStatus::Stale, "{node}");
        assert!(
            reasons[0].contains("`src`, which is damaged"),
            "{reasons:?}"
        );
    }

    // SQL names the file instead of failing inside the Parquet reader.
    let err = sspo_engine::sql::query(&f.run, "SELECT count(*) FROM src").expect_err("damaged");
    let text = err.to_string();
    assert!(
        text.contains("node `src`, chunk 1") && text.contains(&part_text),
        "{text}"
    );

    let out = f.rerun().expect("repairing run");
    assert_eq!(action(&out, "src"), "repaired");
    for node in ["dbl", "dbl2", "side", "sum"] {
        assert_eq!(action(&out, node), "ran", "{node}");
    }
    let src: Vec<usize> = f
        .knobs
        .take_computed()
        .into_iter()
        .filter(|(n, _)| n == "src")
        .map(|(_, row)| row)
        .collect();
    assert_eq!(src, [3], "only the damaged chunk (rows 3..6) is recomputed");
    f.assert_tables_equal_clean(TABLES);
    assert!(f
        .status()
        .iter()
        .all(|(_, st, _)| *st == NodeStatus::Cached));
}

#[test]
fn a_missing_part_is_damage_too() {
    let f = fixture(CHAIN);
    f.run_clean();
    let part = f.part("dbl", "", 2);
    std::fs::remove_file(&part).expect("delete");
    let (st, reasons) = f.status_of("dbl");
    assert_eq!(st, NodeStatus::Damaged);
    assert!(
        reasons[0].contains("chunk 2") && reasons[0].contains("missing"),
        "{reasons:?}"
    );
    assert_eq!(f.status_of("src").0, NodeStatus::Cached);
    assert_eq!(f.status_of("side").0, NodeStatus::Cached);

    let out = f.rerun().expect("repairing run");
    assert_eq!(action(&out, "src"), "cached");
    assert_eq!(action(&out, "side"), "cached");
    assert_eq!(action(&out, "dbl"), "repaired");
    assert_eq!(action(&out, "dbl2"), "ran");
    assert_eq!(action(&out, "sum"), "ran");
    let dbl: Vec<usize> = f
        .knobs
        .take_computed()
        .into_iter()
        .filter(|(n, _)| n == "dbl")
        .map(|(_, row)| row)
        .collect();
    assert_eq!(dbl, [8]);
    f.assert_tables_equal_clean(TABLES);
}

#[test]
fn flipped_bytes_are_caught_by_verify_and_by_a_run_that_reads_the_part() {
    let f = fixture(CHAIN);
    f.run_clean();
    let part = f.part("src", "", 2);
    let mut bytes = std::fs::read(&part).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    bytes[mid + 1] ^= 0x55;
    std::fs::write(&part, &bytes).expect("flip");

    // Same size: a stat cannot tell, so status still says cached.
    assert_eq!(f.status_of("src").0, NodeStatus::Cached);
    let verdicts = verify(&f.run, None).expect("verify");
    let damage: Vec<_> = verdicts
        .iter()
        .flat_map(|v| v.result.as_ref().expect("manifest").damage.iter())
        .collect();
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert_eq!(
        (damage[0].node.as_str(), damage[0].chunk, &damage[0].problem),
        ("src", 2, &PartProblem::Hash)
    );
    assert_eq!(damage[0].path, part);
    let only = verify(&f.run, Some("dbl")).expect("verify dbl");
    assert!(only.len() == 1 && only[0].is_ok(), "{only:?}");

    // Reading the part through the engine refuses it.
    let m = f.manifest("src");
    let err = NodeDir::new(&f.run, "src")
        .read_table(&m, "")
        .expect_err("hash mismatch");
    assert!(matches!(err, StoreError::Damaged(_)), "{err}");
    assert!(err.to_string().contains("node `src`, chunk 2"), "{err}");

    // A run that reads `src` (here: `dbl`, forced) hashes it first and repairs it.
    let mut opts = options(&f.run);
    opts.force = vec!["dbl".into()];
    let out = sspo_engine::run(&f.plan, &opts).expect("run");
    assert_eq!(action(&out, "src"), "repaired");
    assert_eq!(action(&out, "side"), "ran");
    f.assert_tables_equal_clean(TABLES);
}

#[test]
fn a_damaged_final_table_is_recomputed_from_the_committed_rows() {
    let f = fixture(CHAIN);
    f.run_clean();
    let m = f.manifest("sum");
    let last = m.chunks.last().expect("final record").index;
    std::fs::write(f.part("sum", "summary", last), b"x").expect("truncate");
    assert_eq!(f.status_of("sum").0, NodeStatus::Damaged);

    let out = f.rerun().expect("repairing run");
    assert_eq!(action(&out, "sum"), "repaired");
    assert_eq!(
        computed_nodes(&f.knobs),
        BTreeSet::new(),
        "no chunk of rows is recomputed for a final table"
    );
    f.assert_tables_equal_clean(TABLES);
}

#[test]
fn a_damaged_checkpointed_node_is_recomputed_whole() {
    let yaml = "\
nodes:
  walk: {op: steps, params: {steps: 7, every: 3}}
  dbl: {op: double, inputs: {rows: walk}}
";
    let tables: &[(&str, &str)] = &[
        ("walk", "SELECT n FROM walk ORDER BY n"),
        ("dbl", "SELECT n, input FROM dbl ORDER BY input"),
    ];
    let f = fixture(yaml);
    f.run_clean();
    std::fs::write(f.part("walk", "", 1), b"").expect("truncate");
    assert_eq!(f.status_of("walk").0, NodeStatus::Damaged);

    let out = f.rerun().expect("repairing run");
    assert_eq!(action(&out, "walk"), "repaired");
    let walk: Vec<usize> = f
        .knobs
        .take_computed()
        .into_iter()
        .filter(|(n, _)| n == "walk")
        .map(|(_, step)| step)
        .collect();
    assert_eq!(walk, (0..7).collect::<Vec<_>>(), "every step is redone");
    f.assert_tables_equal_clean(tables);
}

#[test]
fn a_write_that_fails_mid_commit_loses_nothing_committed_and_the_rerun_finishes() {
    let f = fixture(CHAIN);
    let mut failed_at = 0;
    for nth in 1.. {
        let _ = std::fs::remove_dir_all(&f.run);
        failpoint::arm(nth, Action::Error);
        let result = f.rerun();
        failpoint::disarm();
        let Err(err) = result else {
            break; // the run does fewer writes than `nth`
        };
        failed_at = nth;
        assert!(err.to_string().contains("injected write failure"), "{err}");
        // What was committed before the failure checks out, and no status is damaged.
        let verdicts = verify(&f.run, None).expect("verify");
        assert!(verdicts.iter().all(|v| v.is_ok()), "{verdicts:?}");
        assert!(
            f.status()
                .iter()
                .all(|(_, st, _)| *st != NodeStatus::Damaged),
            "{:?}",
            f.status()
        );
        let out = f.rerun().expect("rerun after a failed write");
        assert!(out.iter().all(|o| o.action != "repaired"), "{out:?}");
        f.assert_tables_equal_clean(TABLES);
    }
    // Parts and manifests of five nodes: the loop above failed every one of them.
    assert!(failed_at > 20, "only {failed_at} writes were failed");
}

#[test]
fn a_manifest_of_a_newer_format_is_refused_and_left_alone() {
    let f = fixture(CHAIN);
    f.run_clean();
    let path = NodeDir::new(&f.run, "dbl").manifest_path();
    let text = std::fs::read_to_string(&path).expect("manifest");
    let newer = text.replacen("\"format\": 1", "\"format\": 99", 1);
    assert_ne!(newer, text);
    std::fs::write(&path, &newer).expect("write");
    let parts_before = files_under(&f.run);

    let expected = "written by a newer sspo-run (format 99, this binary reads ≤ 1)";
    let mut opts = options(&f.run);
    opts.force = vec!["src".into()];
    for result in [f.rerun(), sspo_engine::run(&f.plan, &opts)] {
        let err = result.expect_err("newer format");
        assert!(err.to_string().contains(expected), "{err}");
    }
    let err = status(&f.plan, &f.run).expect_err("newer format");
    assert!(err.to_string().contains(expected), "{err}");
    let err = sspo_engine::sql::query(&f.run, "SELECT 1").expect_err("newer format");
    assert!(err.to_string().contains(expected), "{err}");
    let verdicts = verify(&f.run, None).expect("verify");
    let dbl = verdicts.iter().find(|v| v.node == "dbl").expect("dbl");
    assert!(
        matches!(&dbl.result, Err(StoreError::NewerFormat { format: 99, .. })),
        "{dbl:?}"
    );

    assert_eq!(std::fs::read_to_string(&path).expect("manifest"), newer);
    assert_eq!(files_under(&f.run), parts_before, "nothing was deleted");
}

#[test]
fn manifests_without_integrity_records_still_read_and_are_checked_for_presence() {
    let f = fixture(CHAIN);
    f.run_clean();
    let dir = NodeDir::new(&f.run, "src");
    let mut m = f.manifest("src");
    for c in &mut m.chunks {
        for p in &mut c.files {
            p.bytes = None;
            p.blake3 = None;
        }
    }
    dir.write_manifest(&m).expect("write");
    let text = std::fs::read_to_string(dir.manifest_path()).expect("read");
    assert!(
        !text.contains("blake3"),
        "an older manifest has no hash field"
    );

    assert_eq!(f.status_of("src").0, NodeStatus::Cached);
    let verdicts = verify(&f.run, Some("src")).expect("verify");
    let checked = verdicts[0].result.as_ref().expect("manifest");
    assert_eq!((checked.unhashed, checked.damage.len()), (4, 0));

    // Without a record a truncated part passes the stat; reading it names it.
    let part = f.part("src", "", 1);
    let bytes = std::fs::read(&part).expect("read");
    std::fs::write(&part, &bytes[..bytes.len() / 2]).expect("truncate");
    assert_eq!(f.status_of("src").0, NodeStatus::Cached);
    let err = sspo_engine::sql::query(&f.run, "SELECT sum(n) FROM src").expect_err("truncated");
    let text = err.to_string();
    assert!(
        text.contains("node `src`, chunk 1") && text.contains(&part.display().to_string()),
        "{text}"
    );
    let err = NodeDir::new(&f.run, "src")
        .read_table(&f.manifest("src"), "")
        .expect_err("truncated");
    assert!(
        matches!(&err, StoreError::Part { node, chunk: 1, .. } if node == "src"),
        "{err}"
    );
    std::fs::write(&part, &bytes).expect("restore");

    std::fs::remove_file(f.part("src", "", 0)).expect("delete");
    assert_eq!(f.status_of("src").0, NodeStatus::Damaged);
    f.rerun().expect("repairing run");
    f.assert_tables_equal_clean(TABLES);
    let m = f.manifest("src");
    assert!(
        m.parts().any(|(_, p)| p.blake3.is_some()),
        "a recomputed chunk is recorded with its hash"
    );
}

/// Every file under `dir` with its content.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}
