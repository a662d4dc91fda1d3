//! `--svg DIR`: the run's pictures, drawn with `plotters` (SVG backend).
//!
//! - `DIR/ratios.svg`: one horizontal bar per row that has a raw engine to
//!   compare with, livedict ÷ raw (green: meets its ratio target, red:
//!   misses it, blue: no ratio target), the target marked by a black tick,
//!   parity (1.0x) by a grey line.
//! - `DIR/expire_lateness.svg`: for each expire row (backend and scenario),
//!   the cumulative distribution of how late its `Expire` events reached
//!   the callback (one colour per backend, one line style per scenario).

use std::error::Error;
use std::path::{Path, PathBuf};

use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::{Bar, Lateness, Report};

/// Points drawn per CDF curve (quantiles of the samples).
const CDF_POINTS: usize = 400;

/// Writes the charts the run has data for into `dir` (created if missing);
/// returns the files written.
pub fn write(rep: &Report, dir: &Path) -> Result<Vec<PathBuf>, Box<dyn Error>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    if rep.bars.is_empty() {
        eprintln!("compare: no row with a raw ratio in this run; ratios.svg not written");
    } else {
        let path = dir.join("ratios.svg");
        ratios(&rep.bars, &path)?;
        written.push(path);
    }
    if rep.lateness.iter().all(|l| l.sorted_ms.is_empty()) {
        eprintln!("compare: no expire rows in this run; expire_lateness.svg not written");
    } else {
        let path = dir.join("expire_lateness.svg");
        lateness(&rep.lateness, &path)?;
        written.push(path);
    }
    Ok(written)
}

fn ratios(bars: &[Bar], path: &Path) -> Result<(), Box<dyn Error>> {
    let n = bars.len() as i32;
    let height = 130 + 26 * bars.len() as u32;
    let root = SVGBackend::new(path, (1200, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let widest = bars.iter().map(|b| b.ratio.max(b.target.map_or(0.0, |t| t.value()))).fold(1.0, f64::max);
    // Row 0 at the top: bar `i` sits in segment `n - 1 - i`.
    let slot = |i: usize| n - 1 - i as i32;
    let mut chart = ChartBuilder::on(&root)
        .caption("livedict ÷ raw engine, same run and workload", ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(56)
        .y_label_area_size(430)
        .build_cartesian_2d(0f64..widest * 1.15, (0..n).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len())
        .y_label_style(("sans-serif", 13))
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(s) if (0..n).contains(s) => bars[(n - 1 - s) as usize].label.clone(),
            _ => String::new(),
        })
        .x_desc("livedict / raw (throughput; bytes for size rows, where lower is better)")
        .draw()?;

    let (green, red, blue) = (RGBColor(46, 139, 87), RGBColor(205, 55, 55), RGBColor(70, 110, 180));
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        // Coloured by the ratio target only (a row's other targets, e.g. µs per
        // op, are in the table).
        let color = match (b.target, b.meets) {
            (Some(_), Some(true)) => green,
            (Some(_), Some(false)) => red,
            _ => blue,
        };
        let mut bar = Rectangle::new(
            [(0.0, SegmentValue::Exact(slot(i))), (b.ratio, SegmentValue::Exact(slot(i) + 1))],
            color.filled(),
        );
        bar.set_margin(4, 4, 0, 0);
        bar
    }))?;
    // Parity: livedict as fast (or as big) as the raw engine.
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Exact(n))],
        BLACK.mix(0.35).stroke_width(1),
    )))?;
    // Targets.
    chart.draw_series(bars.iter().enumerate().filter_map(|(i, b)| {
        let t = b.target?.value();
        Some(PathElement::new(
            vec![(t, SegmentValue::Exact(slot(i))), (t, SegmentValue::Exact(slot(i) + 1))],
            BLACK.stroke_width(3),
        ))
    }))?;
    // Values, right of each bar.
    let value_style = TextStyle::from(("sans-serif", 12)).pos(Pos::new(HPos::Left, VPos::Center));
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        let target = match b.target {
            Some(crate::report::Bound::AtLeast(x)) => format!("  (target >= {x}x)"),
            Some(crate::report::Bound::AtMost(x)) => format!("  (target <= {x}x)"),
            None => String::new(),
        };
        EmptyElement::at((b.ratio, SegmentValue::CenterOf(slot(i))))
            + Text::new(format!("{:.2}x{target}", b.ratio), (6, 0), value_style.clone())
    }))?;
    root.draw(&Text::new(
        "green: meets its ratio target; red: misses it; blue: no ratio target; black tick: target; grey line: parity (1.0x)",
        (14, height as i32 - 20),
        ("sans-serif", 13),
    ))?;
    root.present()?;
    Ok(())
}

fn lateness(rows: &[Lateness], path: &Path) -> Result<(), Box<dyn Error>> {
    let rows: Vec<&Lateness> = rows.iter().filter(|l| !l.sorted_ms.is_empty()).collect();
    let quantile = |s: &[f64], q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
    // The x axis reaches the largest p99.9, so the bulk of every curve is
    // readable; the few events past it are in each row's `max` in the table.
    let lo = rows.iter().map(|l| l.sorted_ms[0]).fold(0.0, f64::min);
    let hi = rows.iter().map(|l| quantile(&l.sorted_ms, 0.999)).fold(1.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (1100, 650)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "Expire lateness: time from deadline to callback (x up to the largest p99.9, {hi:.1} ms)"
            ),
            ("sans-serif", 20),
        )
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(lo..hi, 0f64..1.0)?;
    chart
        .configure_mesh()
        .x_desc("ms after the deadline")
        .y_desc("share of events delivered")
        .y_label_formatter(&|y| format!("{:.0}%", y * 100.0))
        .draw()?;
    for (k, l) in rows.iter().enumerate() {
        let s = &l.sorted_ms;
        let n = s.len();
        // One colour per backend, one line style per scenario.
        let color = match l.backend.as_str() {
            "memory" => RGBColor(200, 50, 50),
            "sqlite" => RGBColor(40, 140, 70),
            "redis" => RGBColor(40, 90, 200),
            "cluster" => RGBColor(140, 60, 170),
            _ => {
                let (r, g, b) = Palette99::pick(k).to_rgba().rgb();
                RGBColor(r, g, b)
            }
        };
        // The sorted samples are the CDF: sample j has j + 1 events at or before it.
        let step = n.div_ceil(CDF_POINTS).max(1);
        let mut points: Vec<(f64, f64)> = (0..n)
            .step_by(step)
            .chain(std::iter::once(n - 1))
            .map(|j| (s[j], (j + 1) as f64 / n as f64))
            .take_while(|&(x, _)| x <= hi)
            .collect();
        // Past the axis: continue flat to the edge at the share reached there.
        let reached = s.partition_point(|&x| x <= hi) as f64 / n as f64;
        points.push((hi, reached));
        let label = format!("{}: {} (p99 {:.1} ms, n {n})", l.backend, l.op, quantile(s, 0.99));
        let style = color.stroke_width(2);
        let dashes = if l.op.contains("burst") {
            Some((8, 5))
        } else if l.op.contains("other instance") {
            Some((2, 4))
        } else {
            None
        };
        match dashes {
            None => chart
                .draw_series(LineSeries::new(points, style))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style)),
            Some((dash, gap)) => chart
                .draw_series(DashedLineSeries::new(points, dash, gap, style))?
                .label(label)
                .legend(move |(x, y)| DashedPathElement::new(vec![(x, y), (x + 24, y)], dash, gap, style)),
        };
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    root.present()?;
    Ok(())
}
