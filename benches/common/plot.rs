//! SVG plots for the benchmark programs (plotters, SVG backend only: no font
//! or system dependencies; text is emitted as SVG `<text>`). Included with
//! `#[path = "common/plot.rs"] mod plot;` by each bench that draws its latencies
//! next to its table; BENCHMARKS.md embeds the files.

#![allow(dead_code)]

use std::path::Path;

use plotters::prelude::*;

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn sorted(xs: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Upper x limit: the largest p99.9 of the series (so one outlier does not
/// squash the plot), with a margin.
fn x_max(series: &[(&str, &[f64])]) -> f64 {
    series
        .iter()
        .map(|(_, xs)| {
            let v = sorted(xs);
            v.get(((v.len() as f64 * 0.999) as usize).min(v.len().saturating_sub(1)))
                .copied()
                .unwrap_or(1.0)
        })
        .fold(0.0, f64::max)
        * 1.1
}

/// Latency CDF of each series (x: `x_label`, y: fraction ≤ x).
pub fn cdf(
    path: &Path,
    title: &str,
    x_label: &str,
    series: &[(&str, &[f64])],
) -> Result<(), String> {
    let xmax = x_max(series).max(1e-9);
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..xmax, 0.0..1.0)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("fraction of requests ≤ x")
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, xs)) in series.iter().enumerate() {
        let v = sorted(xs);
        let n = v.len().max(1) as f64;
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                v.iter()
                    .enumerate()
                    .map(|(k, x)| (x.min(xmax), (k + 1) as f64 / n)),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Latency histogram of each series as step outlines over `bins` equal bins
/// (y: fraction of the series' requests per bin).
pub fn histogram(
    path: &Path,
    title: &str,
    x_label: &str,
    series: &[(&str, &[f64])],
    bins: usize,
) -> Result<(), String> {
    let xmax = x_max(series).max(1e-9);
    let w = xmax / bins as f64;
    let counts: Vec<Vec<f64>> = series
        .iter()
        .map(|(_, xs)| {
            let mut c = vec![0.0; bins];
            for &x in xs.iter().filter(|x| x.is_finite()) {
                c[((x / w) as usize).min(bins - 1)] += 1.0;
            }
            let n = xs.len().max(1) as f64;
            c.iter().map(|k| k / n).collect()
        })
        .collect();
    let ymax = counts.iter().flatten().copied().fold(0.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax, 0.0..ymax.max(1e-9))
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("fraction of requests")
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, ((name, _), c)) in series.iter().zip(&counts).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let steps = c
            .iter()
            .enumerate()
            .flat_map(|(b, y)| [(b as f64 * w, *y), ((b + 1) as f64 * w, *y)]);
        chart
            .draw_series(LineSeries::new(steps, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}

/// Lines through `(x, y)` points of each series (y from 0 to the largest
/// value, with a margin).
pub fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, &[(f64, f64)])],
) -> Result<(), String> {
    let pts = || series.iter().flat_map(|(_, p)| p.iter());
    let xmax = pts().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
    let ymax = pts().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.1;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax, 0.0..ymax)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, p)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(p.iter().copied(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
