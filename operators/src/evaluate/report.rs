//! `report.md` of an `evaluate` node: the summary table in Markdown and three SVG plots
//! (written with plotters' SVG backend into `plots/`):
//!
//! * `lengths.svg`: the distribution of response tokens per model (share of the model's
//!   responses in each of up to 20 equal-width bins), base and others side by side;
//! * `accuracy_by_length.svg`: accuracy per response-length bucket (up to 8 equal-width
//!   buckets), one line per model;
//! * `accuracy_vs_tokens.svg`: each model's accuracy against its mean response tokens.
//!
//! Every file is written atomically; the report is rewritten whenever the summary is.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use sspo_engine::store::write_atomic;
use sspo_engine::OpError;

use super::summary::{fmt_opt, fmt_pct, fmt_signed, ModelSummary, PerModel};

/// What the report shows.
pub struct ReportInput<'a> {
    pub node: &'a str,
    pub summary: &'a [ModelSummary],
    pub per_model: &'a PerModel,
    /// Index of the base model.
    pub base: usize,
    pub max_new_tokens: usize,
    pub samples: usize,
}

/// File names of the plots, relative to the node directory.
pub const PLOTS: [&str; 3] = [
    "plots/lengths.svg",
    "plots/accuracy_by_length.svg",
    "plots/accuracy_vs_tokens.svg",
];

const WIDTH: u32 = 800;
const HEIGHT: u32 = 480;

/// Writes `report.md` and the plots into `dir`.
pub fn write_report(dir: &Path, r: &ReportInput) -> Result<(), OpError> {
    let plots = dir.join("plots");
    std::fs::create_dir_all(&plots)
        .map_err(|e| OpError::context(plots.display().to_string(), e))?;
    let svgs = [
        lengths_svg(r)?,
        accuracy_by_length_svg(r)?,
        accuracy_vs_tokens_svg(r)?,
    ];
    for (name, svg) in PLOTS.iter().zip(svgs) {
        write_atomic(&dir.join(name), svg.as_bytes())?;
    }
    write_atomic(&dir.join("report.md"), markdown(r).as_bytes())?;
    Ok(())
}

fn plot_err(e: impl std::fmt::Display) -> OpError {
    OpError::msg(format!("drawing the report's plots: {e}"))
}

/// A model's colour: grey for the base, then a fixed palette.
fn colour(i: usize, base: usize) -> RGBColor {
    const PALETTE: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    if i == base {
        return RGBColor(110, 110, 110);
    }
    let k = if i > base { i - 1 } else { i };
    PALETTE[k % PALETTE.len()]
}

/// Equal-width bins over `0..=max` tokens: `(width, count)`, at most `max_bins`.
fn bins(max: i32, max_bins: usize) -> (i32, usize) {
    let max = max.max(1) as usize;
    let width = max.div_ceil(max_bins).max(1);
    let count = max / width + 1;
    (width as i32, count)
}

fn max_tokens(r: &ReportInput) -> i32 {
    r.per_model
        .0
        .iter()
        .flat_map(|m| m.n_tokens.iter().copied())
        .max()
        .unwrap_or(1)
}

fn lengths_svg(r: &ReportInput) -> Result<String, OpError> {
    let (width, n_bins) = bins(max_tokens(r), 20);
    // Share of each model's responses per bin.
    let shares: Vec<Vec<f64>> = r
        .per_model
        .0
        .iter()
        .map(|m| {
            let mut c = vec![0usize; n_bins];
            for t in &m.n_tokens {
                let b = (t.max(&0) / width) as usize;
                c[b.min(n_bins - 1)] += 1;
            }
            let n = m.n_tokens.len().max(1) as f64;
            c.into_iter().map(|k| k as f64 / n).collect()
        })
        .collect();
    let y_max = shares
        .iter()
        .flatten()
        .copied()
        .fold(0.0f64, f64::max)
        .max(0.05)
        * 1.1;
    let x_max = (n_bins as i32 * width) as f64;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Response tokens per model", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("response tokens")
            .y_desc("share of responses")
            .disable_x_mesh()
            .draw()
            .map_err(plot_err)?;
        let k = shares.len().max(1) as f64;
        for (mi, s) in shares.iter().enumerate() {
            let c = colour(mi, r.base);
            let bars = s
                .iter()
                .enumerate()
                .filter(|(_, v)| **v > 0.0)
                .map(|(b, v)| {
                    let x0 = (b as i32 * width) as f64;
                    let w = width as f64 / k;
                    let left = x0 + w * mi as f64;
                    Rectangle::new([(left, 0.0), (left + w * 0.9, *v)], c.mix(0.85).filled())
                });
            chart
                .draw_series(bars)
                .map_err(plot_err)?
                .label(legend_name(r, mi))
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// Accuracy and count per length bucket, per model.
fn buckets(r: &ReportInput) -> (i32, Vec<Vec<(usize, usize)>>) {
    let (width, n) = bins(max_tokens(r), 8);
    let per: Vec<Vec<(usize, usize)>> = r
        .per_model
        .0
        .iter()
        .map(|m| {
            let mut v = vec![(0usize, 0usize); n];
            for (t, ok) in m.n_tokens.iter().zip(&m.correct) {
                let b = ((t.max(&0) / width) as usize).min(n - 1);
                v[b].1 += 1;
                if *ok {
                    v[b].0 += 1;
                }
            }
            v
        })
        .collect();
    (width, per)
}

fn accuracy_by_length_svg(r: &ReportInput) -> Result<String, OpError> {
    let (width, per) = buckets(r);
    let n_bins = per.first().map_or(1, Vec::len);
    let x_max = (n_bins as i32 * width) as f64;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Accuracy by response length", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x_max, 0.0..1.05)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("response tokens (bucket midpoint)")
            .y_desc("accuracy")
            .draw()
            .map_err(plot_err)?;
        for (mi, v) in per.iter().enumerate() {
            let c = colour(mi, r.base);
            let pts: Vec<(f64, f64)> = v
                .iter()
                .enumerate()
                .filter(|(_, (_, n))| *n > 0)
                .map(|(b, (ok, n))| {
                    let mid = (b as f64 + 0.5) * width as f64;
                    (mid, *ok as f64 / *n as f64)
                })
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                .map_err(plot_err)?
                .label(legend_name(r, mi))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                });
            chart
                .draw_series(PointSeries::of_element(pts, 4, c.filled(), &|p, s, st| {
                    Circle::new(p, s, st)
                }))
                .map_err(plot_err)?;
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

fn accuracy_vs_tokens_svg(r: &ReportInput) -> Result<String, OpError> {
    let pts: Vec<(usize, f64, f64)> = r
        .summary
        .iter()
        .enumerate()
        .filter_map(|(i, s)| Some((i, s.mean_tokens?, s.accuracy?)))
        .collect();
    let x_max = pts.iter().map(|p| p.1).fold(1.0f64, f64::max) * 1.15;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Accuracy against mean response tokens", ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x_max, 0.0..1.05)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("mean response tokens")
            .y_desc("accuracy")
            .draw()
            .map_err(plot_err)?;
        for (i, x, y) in pts {
            let c = colour(i, r.base);
            let name = legend_name(r, i);
            chart
                .draw_series(std::iter::once(
                    EmptyElement::at((x, y))
                        + Circle::new((0, 0), 6, c.filled())
                        + Text::new(name, (8, -14), ("sans-serif", 14)),
                ))
                .map_err(plot_err)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

fn legend_name(r: &ReportInput, i: usize) -> String {
    let name = r.per_model.0.get(i).map_or("?", |m| m.model.as_str());
    if i == r.base {
        format!("{name} (base)")
    } else {
        name.to_string()
    }
}

/// A Markdown table cell: pipes escaped, no line breaks.
fn md(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn markdown(r: &ReportInput) -> String {
    let mut out = String::new();
    let base = r.summary.get(r.base).map_or("?", |s| s.model.as_str());
    let _ = writeln!(out, "# Evaluation `{}`\n", md(r.node));
    let _ = writeln!(
        out,
        "{} model(s), {} sample(s) per prompt, at most {} new tokens; base model: `{}`. \
         The same numbers are in the SQL table `{}_summary`, the rows in `{}`; see \
         docs/operators/evaluate.md for the exact definitions.\n",
        r.summary.len(),
        r.samples,
        r.max_new_tokens,
        md(base),
        r.node,
        r.node
    );
    let _ = writeln!(
        out,
        "| model | n | accuracy | mean tokens | median tokens | p90 tokens | mean steps | clipped | length reduction | accuracy delta | oracle tokens | redundancy removed |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (i, s) in r.summary.iter().enumerate() {
        let name = if i == r.base {
            format!("{} (base)", md(&s.model))
        } else {
            md(&s.model)
        };
        let int = |v: Option<i32>| v.map_or_else(|| "-".to_string(), |x| x.to_string());
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.n,
            fmt_opt(s.accuracy, 3),
            fmt_opt(s.mean_tokens, 1),
            int(s.median_tokens),
            int(s.p90_tokens),
            fmt_opt(s.mean_steps, 2),
            fmt_pct(s.clipped_ratio),
            fmt_pct(s.length_reduction),
            fmt_signed(s.accuracy_delta, 3),
            fmt_opt(s.oracle_tokens, 1),
            fmt_pct(s.redundancy_removed),
        );
    }
    let _ = writeln!(
        out,
        "\naccuracy = share of responses whose final answer is correct (pass@1 averaged over \
         samples); median / p90 tokens are nearest-rank; clipped = share that hit the token \
         limit; length reduction = 1 − mean tokens / base mean tokens; accuracy delta = \
         accuracy − base accuracy; redundancy removed = (base mean − mean) / (base mean − \
         base oracle mean).\n"
    );
    let _ = writeln!(out, "## Response length\n");
    let _ = writeln!(out, "![Response tokens per model]({})\n", PLOTS[0]);
    let _ = writeln!(out, "## Accuracy by response length\n");
    let _ = writeln!(out, "![Accuracy by response length]({})\n", PLOTS[1]);
    let (width, per) = buckets(r);
    let _ = write!(out, "| tokens |");
    for i in 0..per.len() {
        let _ = write!(out, " {} |", md(&legend_name(r, i)));
    }
    let _ = write!(out, "\n|---|");
    for _ in 0..per.len() {
        let _ = write!(out, "---:|");
    }
    out.push('\n');
    let n_bins = per.first().map_or(0, Vec::len);
    for b in 0..n_bins {
        if per.iter().all(|v| v[b].1 == 0) {
            continue;
        }
        let lo = b as i32 * width;
        let hi = (lo + width - 1).min(max_tokens(r).max(lo));
        let _ = write!(out, "| {lo}–{hi} |");
        for v in &per {
            let (ok, n) = v[b];
            if n == 0 {
                let _ = write!(out, " - |");
            } else {
                let _ = write!(out, " {:.3} ({n}) |", ok as f64 / n as f64);
            }
        }
        out.push('\n');
    }
    let _ = writeln!(out, "\n## Accuracy against length\n");
    let _ = writeln!(
        out,
        "![Accuracy against mean response tokens]({})",
        PLOTS[2]
    );
    out
}

#[cfg(test)]
mod tests {
    use super::super::{summarize, ModelRows};
    use super::*;

    #[test]
    fn report_files_are_written() {
        let pm = PerModel(vec![
            ModelRows {
                model: "base".into(),
                n_tokens: vec![10, 50, 90, 120],
                n_steps: vec![1, 2, 3, 4],
                clipped: vec![false, false, false, true],
                correct: vec![true, false, true, false],
                oracle_tokens: vec![8, 8, 8, 8],
            },
            ModelRows {
                model: "a|b".into(),
                n_tokens: vec![5, 9],
                n_steps: vec![1, 1],
                clipped: vec![false, false],
                correct: vec![true, true],
                oracle_tokens: vec![],
            },
            ModelRows {
                model: "none".into(),
                ..Default::default()
            },
        ]);
        let summary = summarize(&pm, 0);
        let dir = tempfile::tempdir().unwrap();
        write_report(
            dir.path(),
            &ReportInput {
                node: "eval",
                summary: &summary,
                per_model: &pm,
                base: 0,
                max_new_tokens: 120,
                samples: 1,
            },
        )
        .unwrap();
        for p in PLOTS {
            let svg = std::fs::read_to_string(dir.path().join(p)).unwrap();
            assert!(svg.trim_start().starts_with("<svg"), "{p}: {}", &svg[..50]);
            assert!(svg.trim_end().ends_with("</svg>"), "{p}");
        }
        let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        assert!(
            md.contains("| base (base) | 4 | 0.500 | 67.5 | 50 | 120 |"),
            "{md}"
        );
        assert!(md.contains("a\\|b"), "{md}");
        assert!(md.contains("plots/lengths.svg"), "{md}");
    }

    #[test]
    fn bins_cover_the_range() {
        assert_eq!(bins(1, 20), (1, 2));
        assert_eq!(bins(100, 20), (5, 21));
        assert_eq!(bins(7, 8), (1, 8));
        let (w, n) = bins(256, 8);
        assert!(256 / w < n as i32);
    }
}
