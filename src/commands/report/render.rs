//! The report's three spellings: a text table for people, JSON for
//! scripts (the shape of [`Summary`]), and one self-contained HTML page
//! with inline SVG plots (no script, no external resource).

use std::fmt::Write;

use hdrhistogram::Histogram;

use super::summary::{ExperimentSummary, Summary};
use super::tally::{Experiment, Tally};

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned text, for a terminal.
    Table,
    /// The [`Summary`] as JSON (docs/report.md).
    Json,
    /// One self-contained HTML page with inline SVG plots.
    Html,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "html" => Ok(Format::Html),
            _ => Err(format!("{s:?}: expected table, json or html")),
        }
    }
}

pub(crate) fn render(format: Format, s: &Summary, tally: &Tally, alpha: f64) -> String {
    match format {
        Format::Table => table(s, alpha),
        Format::Json => {
            let mut out = serde_json::to_string_pretty(s).expect("the summary serializes");
            out.push('\n');
            out
        }
        Format::Html => html(s, tally, alpha),
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.3}"))
}

fn p_value(p: Option<f64>) -> String {
    p.map_or_else(|| "n/a".into(), |p| format!("{p:.3e}"))
}

fn audit_lines(x: &ExperimentSummary) -> Vec<(&'static str, u64)> {
    let a = &x.audit;
    vec![
        ("units in several variants", a.units_in_several_variants),
        ("units with a changed epoch", a.units_with_changed_epoch),
        (
            "units with several first exposures",
            a.units_with_several_first_exposures,
        ),
        ("experiment lines without stamps", a.lines_without_stamps),
    ]
}

fn table(s: &Summary, alpha: f64) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} lines ({} malformed), {} experiment(s): {}",
        s.lines,
        s.malformed_lines,
        s.experiments.len(),
        if s.clean { "clean" } else { "FAILED" }
    );
    for x in &s.experiments {
        let _ = writeln!(o, "\nexperiment {}", x.name);
        for e in &x.epochs {
            let verdict = if e.srm_failed(alpha) {
                format!("  FAILED (p < {alpha})")
            } else {
                String::new()
            };
            let _ = writeln!(
                o,
                "  epoch {}  SRM p = {}{verdict}",
                e.epoch,
                p_value(e.srm_p_value)
            );
            let _ = writeln!(
                o,
                "    {:<16} {:>9} {:>9} {:>10} {:>7} {:>9} {:>9} {:>9}",
                "variant", "units", "first_exp", "requests", "err%", "p50_ms", "p95_ms", "p99_ms"
            );
            for v in &e.variants {
                let _ = writeln!(
                    o,
                    "    {:<16} {:>9} {:>9} {:>10} {:>7.2} {:>9} {:>9} {:>9}",
                    v.name,
                    v.units,
                    v.first_exposures,
                    v.requests,
                    v.error_rate * 100.0,
                    ms(v.p50_ms),
                    ms(v.p95_ms),
                    ms(v.p99_ms)
                );
            }
        }
        let _ = writeln!(o, "  audit:");
        for (what, n) in audit_lines(x) {
            let flag = if n > 0 { "  FAILED" } else { "" };
            let _ = writeln!(o, "    {what:<36} {n}{flag}");
        }
        for ex in &x.audit.examples {
            let _ = writeln!(o, "    e.g. {ex}");
        }
    }
    o
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn html(s: &Summary, tally: &Tally, alpha: f64) -> String {
    let mut o = String::new();
    o.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>cohort report</title>\n<style>body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th:first-child,td:first-child{text-align:left}.bad{color:#b00;font-weight:bold}.ok{color:#070}svg{border:1px solid #ddd;margin:.5em 1em .5em 0}</style></head><body>\n");
    let _ = writeln!(
        o,
        "<h1>cohort report</h1><p>{} lines ({} malformed): <span class=\"{}\">{}</span></p>",
        s.lines,
        s.malformed_lines,
        if s.clean { "ok" } else { "bad" },
        if s.clean { "clean" } else { "FAILED" }
    );
    for (x, raw) in s.experiments.iter().zip(&tally.experiments) {
        let _ = writeln!(o, "<section class=\"experiment\"><h2>{}</h2>", esc(&x.name));
        for e in &x.epochs {
            let bad = e.srm_failed(alpha);
            let _ = writeln!(
                o,
                "<h3>epoch {}: SRM p = <span class=\"{}\">{}</span></h3>",
                e.epoch,
                if bad { "bad" } else { "ok" },
                p_value(e.srm_p_value)
            );
            o.push_str("<table><tr><th>variant</th><th>units</th><th>first exposures</th><th>requests</th><th>error rate</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th></tr>\n");
            for v in &e.variants {
                let _ = writeln!(
                    o,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2} %</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(&v.name),
                    v.units,
                    v.first_exposures,
                    v.requests,
                    v.error_rate * 100.0,
                    ms(v.p50_ms),
                    ms(v.p95_ms),
                    ms(v.p99_ms)
                );
            }
            o.push_str("</table>\n");
        }
        o.push_str("<h3>audit</h3><table>");
        for (what, n) in audit_lines(x) {
            let _ = write!(
                o,
                "<tr><td>{what}</td><td class=\"{}\">{n}</td></tr>",
                if n > 0 { "bad" } else { "ok" }
            );
        }
        o.push_str("</table>\n");
        if !x.audit.examples.is_empty() {
            o.push_str("<ul class=\"examples\">");
            for ex in &x.audit.examples {
                let _ = write!(o, "<li><code>{}</code></li>", esc(ex));
            }
            o.push_str("</ul>\n");
        }
        o.push_str("<div class=\"plots\">");
        latency_plot(&mut o, raw);
        exposure_plot(&mut o, raw);
        o.push_str("</div></section>\n");
    }
    o.push_str("</body></html>\n");
    o
}

const W: f64 = 560.0;
const H: f64 = 300.0;
const PAD: f64 = 45.0;

fn legend(o: &mut String, names: &[String]) {
    for (i, n) in names.iter().enumerate() {
        let y = 20.0 + 16.0 * i as f64;
        let _ = write!(
            o,
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\" font-size=\"12\">{}</text>",
            W - 140.0,
            y - 9.0,
            COLORS[i % COLORS.len()],
            W - 125.0,
            y,
            esc(n)
        );
    }
}

/// The latency CDF of each variant (all epochs merged: the sketches are
/// mergeable), on a log-scaled axis.
fn latency_plot(o: &mut String, x: &Experiment) {
    let mut merged: Vec<Option<Histogram<u64>>> = vec![None; x.variants.len()];
    for (&(_, v), cell) in &x.cells {
        let slot = &mut merged[usize::from(v)];
        match slot {
            Some(h) => {
                let _ = h.add(&cell.latency);
            }
            None => *slot = Some(cell.latency.clone()),
        }
    }
    let (lo, hi) = merged
        .iter()
        .flatten()
        .filter(|h| !h.is_empty())
        .fold((u64::MAX, 1u64), |(lo, hi), h| {
            (lo.min(h.min()), hi.max(h.max()))
        });
    let _ = write!(
        o,
        "<svg class=\"latency\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\"><title>latency distribution per variant</title><text x=\"{PAD}\" y=\"14\" font-size=\"13\">latency CDF (total_ms, log scale)</text>"
    );
    if lo <= hi && lo != u64::MAX {
        let (llo, lhi) = ((lo.max(1) as f64).log10(), (hi.max(2) as f64).log10());
        let span = (lhi - llo).max(1e-9);
        let px = |us: u64| PAD + (W - 2.0 * PAD) * (((us.max(1)) as f64).log10() - llo) / span;
        let py = |q: f64| H - PAD - (H - 2.0 * PAD) * q;
        for (i, h) in merged.iter().enumerate() {
            let Some(h) = h.as_ref().filter(|h| !h.is_empty()) else {
                continue;
            };
            let mut pts = String::new();
            for k in 0..=200 {
                let q = f64::from(k) / 200.0;
                let _ = write!(pts, "{:.1},{:.1} ", px(h.value_at_quantile(q)), py(q));
            }
            let _ = write!(
                o,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
                COLORS[i % COLORS.len()],
                pts.trim_end()
            );
        }
        let _ = write!(
            o,
            "<text x=\"{PAD}\" y=\"{}\" font-size=\"11\">{:.3} ms</text><text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{:.3} ms</text>",
            H - PAD + 15.0,
            lo as f64 / 1000.0,
            W - PAD,
            H - PAD + 15.0,
            hi as f64 / 1000.0
        );
    }
    axes(o);
    legend(o, &x.variants);
    o.push_str("</svg>");
}

fn axes(o: &mut String) {
    let _ = write!(
        o,
        "<line x1=\"{PAD}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#444\"/><line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{}\" stroke=\"#444\"/>",
        H - PAD,
        W - PAD,
        H - PAD,
        H - PAD
    );
}

/// First exposures per time bin and variant, with each epoch's start.
fn exposure_plot(o: &mut String, x: &Experiment) {
    let t = &x.timeline;
    let _ = write!(
        o,
        "<svg class=\"exposures\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\"><title>first exposures over time per variant</title><text x=\"{PAD}\" y=\"14\" font-size=\"13\">first exposures per {} s</text>",
        (t.width.max(1000) / 1000)
    );
    let bins = t.bins.first().map_or(0, Vec::len);
    if bins > 0 {
        let max = t.bins.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
        let span = (bins as f64).max(1.0);
        let px = |i: f64| PAD + (W - 2.0 * PAD) * i / span;
        let py = |c: f64| H - PAD - (H - 2.0 * PAD) * c / max;
        for (v, counts) in t.bins.iter().enumerate() {
            let mut pts = String::new();
            for (i, c) in counts.iter().enumerate() {
                let _ = write!(pts, "{:.1},{:.1} ", px(i as f64 + 0.5), py(*c as f64));
            }
            let _ = write!(
                o,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
                COLORS[v % COLORS.len()],
                pts.trim_end()
            );
        }
        for (epoch, start) in &x.epoch_start {
            let at = px((start - t.origin) as f64 / t.width as f64);
            let _ = write!(
                o,
                "<line class=\"epoch\" x1=\"{at:.1}\" y1=\"{PAD}\" x2=\"{at:.1}\" y2=\"{}\" stroke=\"#888\" stroke-dasharray=\"4 3\"/><text x=\"{:.1}\" y=\"{}\" font-size=\"11\">epoch {epoch}</text>",
                H - PAD,
                at + 3.0,
                PAD + 10.0
            );
        }
        let _ = write!(
            o,
            "<text x=\"{}\" y=\"{}\" font-size=\"11\">max {max}</text>",
            PAD + 3.0,
            PAD - 3.0
        );
    }
    axes(o);
    legend(o, &x.variants);
    o.push_str("</svg>");
}
