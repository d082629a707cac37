//! The engine end to end on toy operators (no model, no torch): caching, invalidation,
//! resume after an interruption, `--force`, `--until`, the run-dir lock, SQL over a
//! partial node, and SQL table names that would clash.

mod toy;

use std::path::Path;
use std::sync::{mpsc, Arc};

use arrow::array::RecordBatch;
use sspo_engine::executor::{status, NodeStatus};
use sspo_engine::store::{NodeDir, StoreError};
use sspo_engine::{NodeOutcome, RunError};
use toy::{ints, options, plan, registry, Gate, Knobs};

/// `src` counts 10 rows in chunks of 3; `dbl` doubles them; `dbl2` doubles `dbl`;
/// `side` doubles `src` too.
const CHAIN: &str = "\
nodes:
  src: {op: count, params: {rows: 10, chunk_rows: 3}}
  dbl: {op: double, inputs: {rows: src}}
  dbl2: {op: double, inputs: {rows: dbl}, params: {chunk_rows: 2}}
  side: {op: double, inputs: {rows: src}, params: {factor: 3}}
";

fn action<'a>(outcomes: &'a [NodeOutcome], node: &str) -> Option<&'a str> {
    outcomes.iter().find(|o| o.node == node).map(|o| o.action)
}

fn actions(outcomes: &[NodeOutcome]) -> Vec<(&str, &str)> {
    outcomes
        .iter()
        .map(|o| (o.node.as_str(), o.action))
        .collect()
}

fn query(run_dir: &Path, sql: &str) -> RecordBatch {
    let batches = sspo_engine::sql::query(run_dir, sql).expect("query");
    arrow::compute::concat_batches(&batches[0].schema(), &batches).expect("concat")
}

fn statuses(plan: &sspo_engine::Plan, run_dir: &Path) -> Vec<(String, NodeStatus)> {
    status(plan, run_dir)
        .expect("status")
        .into_iter()
        .map(|r| (r.node, r.status))
        .collect()
}

#[test]
fn a_second_run_is_all_cached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let knobs = Arc::new(Knobs::default());
    let plan = plan(CHAIN, &registry(&knobs)).expect("plan");
    let first = sspo_engine::run(&plan, &options(dir.path())).expect("run");
    assert_eq!(
        actions(&first),
        [
            ("src", "ran"),
            ("dbl", "ran"),
            ("dbl2", "ran"),
            ("side", "ran")
        ]
    );
    assert_eq!(first[0].rows, 10);
    assert!(!knobs.take_computed().is_empty());

    let second = sspo_engine::run(&plan, &options(dir.path())).expect("run");
    assert!(second.iter().all(|o| o.action == "cached"), "{second:?}");
    assert_eq!(second.iter().map(|o| o.rows).collect::<Vec<_>>(), [10; 4]);
    assert_eq!(knobs.take_computed(), [], "a cached node computes nothing");
    assert!(statuses(&plan, dir.path())
        .iter()
        .all(|(_, st)| *st == NodeStatus::Cached));
    let t = query(dir.path(), "SELECT n FROM dbl2 ORDER BY n");
    assert_eq!(ints(&t, "n"), (0..10).map(|n| 4 * n).collect::<Vec<_>>());
}

#[test]
fn a_changed_param_recomputes_the_node_and_its_downstream_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let knobs = Arc::new(Knobs::default());
    let reg = registry(&knobs);
    sspo_engine::run(&plan(CHAIN, &reg).expect("plan"), &options(dir.path())).expect("run");

    let changed = CHAIN.replace(
        "dbl: {op: double, inputs: {rows: src}}",
        "dbl: {op: double, inputs: {rows: src}, params: {factor: 5}}",
    );
    let plan = plan(&changed, &reg).expect("plan");
    assert_eq!(
        statuses(&plan, dir.path()),
        [
            ("src".to_string(), NodeStatus::Cached),
            ("dbl".to_string(), NodeStatus::Stale),
            ("dbl2".to_string(), NodeStatus::Stale),
            ("side".to_string(), NodeStatus::Cached),
        ]
    );
    knobs.take_computed();
    let out = sspo_engine::run(&plan, &options(dir.path())).expect("run");
    assert_eq!(
        actions(&out),
        [
            ("src", "cached"),
            ("dbl", "ran"),
            ("dbl2", "ran"),
            ("side", "cached")
        ]
    );
    let nodes: Vec<String> = knobs.take_computed().into_iter().map(|(n, _)| n).collect();
    assert!(nodes.iter().all(|n| n == "dbl" || n == "dbl2"), "{nodes:?}");
    let t = query(dir.path(), "SELECT n FROM dbl2 ORDER BY n");
    assert_eq!(ints(&t, "n"), (0..10).map(|n| 10 * n).collect::<Vec<_>>());
}

#[test]
fn an_interrupted_run_resumes_from_the_chunk_it_stopped_at() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (interrupted, clean) = (dir.path().join("interrupted"), dir.path().join("clean"));
    let knobs = Arc::new(Knobs::default());
    let plan = plan(CHAIN, &registry(&knobs)).expect("plan");
    sspo_engine::run(&plan, &options(&clean)).expect("clean run");
    knobs.take_computed();

    // `dbl` (10 rows in chunks of 4) stops before its chunk 2: rows 0..8 are committed.
    *knobs.interrupt.lock().unwrap() = Some(("dbl".into(), 2));
    let err = sspo_engine::run(&plan, &options(&interrupted)).expect_err("interrupted");
    assert!(
        matches!(&err, RunError::Interrupted(node) if node == "dbl"),
        "{err}"
    );
    let st = statuses(&plan, &interrupted);
    assert_eq!(st[0], ("src".to_string(), NodeStatus::Cached));
    assert_eq!(st[1], ("dbl".to_string(), NodeStatus::Partial));
    assert_eq!(st[2], ("dbl2".to_string(), NodeStatus::Missing));
    let dbl: Vec<(String, usize)> = knobs
        .take_computed()
        .into_iter()
        .filter(|(n, _)| n == "dbl")
        .collect();
    assert_eq!(dbl, [("dbl".to_string(), 0), ("dbl".to_string(), 4)]);

    // What the interrupted node kept for its resume is there until it completes.
    let scratch = NodeDir::new(&interrupted, "dbl").path.join("scratch");
    assert!(scratch.join("chunk-4").is_file());

    let out = sspo_engine::run(&plan, &options(&interrupted)).expect("resumed run");
    assert!(!scratch.exists(), "a completed node's scratch/ is deleted");
    assert_eq!(
        actions(&out),
        [
            ("src", "cached"),
            ("dbl", "resumed"),
            ("dbl2", "ran"),
            ("side", "ran")
        ]
    );
    let dbl: Vec<(String, usize)> = knobs
        .take_computed()
        .into_iter()
        .filter(|(n, _)| n == "dbl")
        .collect();
    assert_eq!(
        dbl,
        [("dbl".to_string(), 8)],
        "only the missing chunk is computed"
    );

    for node in ["src", "dbl", "dbl2", "side"] {
        let q = format!("SELECT * FROM {node} ORDER BY n");
        assert_eq!(query(&interrupted, &q), query(&clean, &q), "table {node}");
        let manifest = |run_dir: &Path| {
            NodeDir::new(run_dir, node)
                .read_manifest()
                .expect("manifest")
                .expect("committed")
        };
        let (a, b) = (manifest(&interrupted), manifest(&clean));
        assert_eq!(a.fingerprint, b.fingerprint, "{node}");
        assert_eq!(a.chunks.len(), b.chunks.len(), "{node}");
    }
}

#[test]
fn force_recomputes_a_cached_node_and_its_downstream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let knobs = Arc::new(Knobs::default());
    let plan = plan(CHAIN, &registry(&knobs)).expect("plan");
    sspo_engine::run(&plan, &options(dir.path())).expect("run");

    let mut opts = options(dir.path());
    opts.force = vec!["dbl".into()];
    let out = sspo_engine::run(&plan, &opts).expect("forced run");
    assert_eq!(
        actions(&out),
        [
            ("src", "cached"),
            ("dbl", "ran"),
            ("dbl2", "ran"),
            ("side", "cached")
        ]
    );
    opts.force = vec!["src".into()];
    let out = sspo_engine::run(&plan, &opts).expect("forced run");
    assert!(out.iter().all(|o| o.action == "ran"), "{out:?}");

    opts.force = vec!["dbll".into()];
    let err = sspo_engine::run(&plan, &opts).expect_err("unknown node");
    assert_eq!(err.to_string(), "unknown node `dbll` (did you mean `dbl`?)");
}

#[test]
fn until_stops_after_the_named_node_and_what_it_needs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let knobs = Arc::new(Knobs::default());
    let plan = plan(CHAIN, &registry(&knobs)).expect("plan");
    let mut opts = options(dir.path());
    opts.until = Some("dbl".into());
    let out = sspo_engine::run(&plan, &opts).expect("run");
    assert_eq!(actions(&out), [("src", "ran"), ("dbl", "ran")]);
    for node in ["dbl2", "side"] {
        assert!(NodeDir::new(dir.path(), node)
            .read_manifest()
            .expect("manifest")
            .is_none());
    }
    let out = sspo_engine::run(&plan, &options(dir.path())).expect("run");
    assert_eq!(action(&out, "dbl"), Some("cached"));
    assert_eq!(action(&out, "dbl2"), Some("ran"));
}

#[test]
fn the_run_dir_lock_refuses_a_second_concurrent_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let knobs = Arc::new(Knobs::default());
    let plan = plan(CHAIN, &registry(&knobs)).expect("plan");
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    *knobs.gate.lock().unwrap() = Some(Gate {
        entered: entered_tx,
        release: release_rx,
    });
    std::thread::scope(|s| {
        let first = s.spawn(|| sspo_engine::run(&plan, &options(dir.path())));
        entered.recv().expect("the first run reaches its source");
        let second = sspo_engine::run(&plan, &options(dir.path()));
        release.send(()).expect("release");
        let err = second.expect_err("the second run is refused");
        assert!(
            matches!(err, RunError::Store(StoreError::Locked(..))),
            "{err}"
        );
        assert!(err
            .to_string()
            .contains("in use by another sspo-run process"));
        let first = first.join().expect("first run thread");
        assert!(first.is_ok(), "{:?}", first.err());
    });
    // The lock went with the first run.
    sspo_engine::run(&plan, &options(dir.path())).expect("a later run");
}

#[test]
fn sql_over_a_partial_node_sees_exactly_its_committed_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let knobs = Arc::new(Knobs::default());
    let plan = plan(CHAIN, &registry(&knobs)).expect("plan");
    *knobs.interrupt.lock().unwrap() = Some(("src".into(), 2));
    let err = sspo_engine::run(&plan, &options(dir.path())).expect_err("interrupted");
    assert!(
        matches!(&err, RunError::Interrupted(node) if node == "src"),
        "{err}"
    );
    assert_eq!(statuses(&plan, dir.path())[0].1, NodeStatus::Partial);
    // Chunks 0 and 1 of 3 rows each are committed.
    let t = query(dir.path(), "SELECT n FROM src ORDER BY n");
    assert_eq!(ints(&t, "n"), [0, 1, 2, 3, 4, 5]);
    let t = query(dir.path(), "SELECT count(*) AS k, sum(n) AS total FROM src");
    assert_eq!((ints(&t, "k"), ints(&t, "total")), (vec![6], vec![15]));
    let infos = sspo_engine::sql::tables(dir.path()).expect("tables");
    assert_eq!(infos.len(), 1);
    assert_eq!((infos[0].rows, infos[0].state.as_str()), (6, "partial"));
}

#[test]
fn a_node_named_like_another_nodes_extra_table_is_rejected() {
    let knobs = Arc::new(Knobs::default());
    let reg = registry(&knobs);
    let err = plan(
        "nodes:\n  src: {op: count}\n  t: {op: tally, inputs: {rows: src}}\n  t_summary: {op: double, inputs: {rows: src}}\n",
        &reg,
    )
    .err()
    .expect("rejected");
    assert_eq!(
        err,
        "p.yaml:4:3: error: the table of node `t_summary` and table `summary` of node `t` would both be the SQL table `t_summary`\n  help: rename node `t_summary`, e.g. to `t_summary_2`"
    );
    // Two extra tables: the later node is the one to rename.
    let err = plan(
        "nodes:\n  src: {op: count}\n  a_b: {op: tally, inputs: {rows: src}}\n  a: {op: tally_b, inputs: {rows: src}}\n",
        &reg,
    )
    .err()
    .expect("rejected");
    assert_eq!(
        err,
        "p.yaml:4:3: error: table `b_summary` of node `a` and table `summary` of node `a_b` would both be the SQL table `a_b_summary`\n  help: rename node `a`, e.g. to `a_2`"
    );
    plan(
        "nodes:\n  src: {op: count}\n  t: {op: tally, inputs: {rows: src}}\n  t_sum: {op: double, inputs: {rows: src}}\n",
        &reg,
    )
    .expect("no clash");
}

#[test]
fn sql_refuses_a_run_dir_whose_tables_clash() {
    // Each pipeline is fine alone; run into one directory, their tables clash.
    let dir = tempfile::tempdir().expect("tempdir");
    let knobs = Arc::new(Knobs::default());
    let reg = registry(&knobs);
    let a = plan(
        "nodes:\n  src: {op: count}\n  t: {op: tally, inputs: {rows: src}}\n",
        &reg,
    )
    .expect("plan");
    let out = sspo_engine::run(&a, &options(dir.path())).expect("run");
    assert_eq!(action(&out, "t"), Some("ran"));
    let t = query(dir.path(), "SELECT count_n, sum_n FROM t_summary");
    assert_eq!(
        (ints(&t, "count_n"), ints(&t, "sum_n")),
        (vec![10], vec![45])
    );

    let b = plan(
        "nodes:\n  src: {op: count}\n  t_summary: {op: double, inputs: {rows: src}}\n",
        &reg,
    )
    .expect("plan");
    sspo_engine::run(&b, &options(dir.path())).expect("run");
    let err = sspo_engine::sql::query(dir.path(), "SELECT * FROM t_summary")
        .expect_err("refused")
        .to_string();
    assert_eq!(
        err,
        "table `summary` of node `t` and the table of node `t_summary` are both the SQL table `t_summary`; rename one of the nodes"
    );
}

#[test]
fn keep_scratch_keeps_a_completed_nodes_scratch_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let knobs = Arc::new(Knobs::default());
    let plan = plan(CHAIN, &registry(&knobs)).expect("plan");
    let mut opts = options(dir.path());
    opts.keep_scratch = true;
    sspo_engine::run(&plan, &opts).expect("run");
    let scratch = NodeDir::new(dir.path(), "dbl").path.join("scratch");
    assert!(scratch.join("chunk-0").is_file() && scratch.join("chunk-8").is_file());
}
