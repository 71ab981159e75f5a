//! SVG plots (plotters' SVG backend only: text is written as SVG `<text>` and laid out with plotters' built-in
//! size estimate, so no font files or system libraries are needed).

use std::path::Path;

use anyhow::anyhow;
use plotters::{coord::types::RangedCoordf64, prelude::*};

/// One named line of (x, y) points.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points.
    pub points: Vec<(f64, f64)>,
}

/// Twelve distinguishable colours (a plan's targets and more), in turn.
fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 12] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
        RGBColor(0, 0, 128),
        RGBColor(128, 0, 0),
    ];
    C[i % C.len()]
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

/// x coordinate of percentile `p` (0..100) on the 1/(1-p) log axis: log10(1 / (1 - p/100)).
pub fn percentile_x(p: f64) -> f64 {
    let tail = (1.0 - p / 100.0).max(1e-7);
    (1.0 / tail).log10()
}

fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    let digits = (x.round() as i64 - 2).max(0) as usize;
    format!("{p:.digits$}%")
}

fn y_range(series: &[Series]) -> (f64, f64) {
    let ys = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).filter(|y| *y > 0.0);
    let (lo, hi) = ys.fold((f64::MAX, 0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    if hi <= 0.0 {
        (1.0, 10.0)
    } else {
        (lo / 1.5, hi * 1.5)
    }
}

/// The charts here: a linear x axis and a log y axis.
type LogYChart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, LogCoord<f64>>>;

/// A captioned chart on `area` with a linear x axis over `0..xmax` and a log y axis over `y`.
fn log_y_chart<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    title: &str,
    xmax: f64,
    (ylo, yhi): (f64, f64),
    x_label_area: u32,
) -> anyhow::Result<LogYChart<'a, 'b>> {
    ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(x_label_area)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, (ylo..yhi).log_scale())
        .map_err(err)
}

/// Draws each of `series` as a line with dots of `radius` through its `curves` entry (its points mapped into the
/// chart's range), labelled with the series' name, then the legend at `legend`.
fn draw_curves<'a, 'b: 'a>(
    chart: &mut LogYChart<'a, 'b>,
    series: &[Series],
    curves: Vec<Vec<(f64, f64)>>,
    radius: i32,
    legend: SeriesLabelPosition,
) -> anyhow::Result<()> {
    for (i, (s, pts)) in series.iter().zip(curves).enumerate() {
        let c = color(i);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, radius, c.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(legend)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Latency (µs, log) against percentile on the 1/(1-p) axis. `series` points are (percentile, µs).
pub fn percentile_spectrum(path: &Path, title: &str, series: &[Series]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let xmax =
        series.iter().flat_map(|s| s.points.iter().map(|p| percentile_x(p.0))).fold(2.0f64, f64::max).ceil().min(7.0);
    let (ylo, yhi) = y_range(series);
    let mut chart = log_y_chart(&root, title, xmax, (ylo, yhi), 45)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (us)")
        .x_labels(xmax as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| format!("{y:.1}"))
        .draw()
        .map_err(err)?;
    let curves = series
        .iter()
        .map(|s| s.points.iter().map(|&(p, y)| (percentile_x(p).min(xmax), y.max(ylo))).collect())
        .collect();
    draw_curves(&mut chart, series, curves, 2, SeriesLabelPosition::UpperLeft)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Two panels against offered load (x in kpps): latency (µs, log) on top, loss (%) below.
pub fn load_sweep(path: &Path, title: &str, latency: &[Series], loss: &[Series]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (960, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(470);
    let xmax = latency.iter().chain(loss).flat_map(|s| s.points.iter().map(|p| p.0)).fold(1.0f64, f64::max) * 1.05;
    let (ylo, yhi) = y_range(latency);
    let mut chart = log_y_chart(&top, title, xmax, (ylo, yhi), 40)?;
    chart
        .configure_mesh()
        .x_desc("offered load (kpps)")
        .y_desc("latency (us)")
        .y_label_formatter(&|y| format!("{y:.1}"))
        .draw()
        .map_err(err)?;
    let curves = latency.iter().map(|s| s.points.iter().map(|&(x, y)| (x, y.max(ylo))).collect()).collect();
    draw_curves(&mut chart, latency, curves, 3, SeriesLabelPosition::UpperLeft)?;
    let lmax = loss.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.1f64, f64::max) * 1.2;
    let mut chart = ChartBuilder::on(&bottom)
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, 0f64..lmax)
        .map_err(err)?;
    chart.configure_mesh().x_desc("offered load (kpps)").y_desc("loss (%)").draw().map_err(err)?;
    for (i, s) in loss.iter().enumerate() {
        let c = color(i);
        chart.draw_series(LineSeries::new(s.points.clone(), c.stroke_width(2))).map_err(err)?;
        chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, c.filled()))).map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// CPU per reply (ns, log) against offered load (kpps): one curve per target (`series` points are (kpps, ns)).
/// A server that spins falls as 1/load; one that sleeps when idle stays flat until it saturates.
pub fn cost_over_load(path: &Path, title: &str, series: &[Series]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let xmax = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(1.0f64, f64::max) * 1.1;
    let (ylo, yhi) = y_range(series);
    let mut chart = log_y_chart(&root, title, xmax, (ylo, yhi), 45)?;
    chart
        .configure_mesh()
        .x_desc("offered load (kpps)")
        .y_desc("server CPU per reply (ns, log)")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(err)?;
    let curves = series.iter().map(|s| s.points.iter().filter(|p| p.1 > 0.0).copied().collect()).collect();
    draw_curves(&mut chart, series, curves, 4, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(err)?;
    Ok(())
}

/// One target on the cost/latency plane: its name, CPU per reply (ns) and ping-pong p50 and p99 (µs).
#[derive(Debug, Clone)]
pub struct CostPoint {
    /// Label.
    pub name: String,
    /// CPU per reply, ns.
    pub cpu_ns: f64,
    /// Latency p50, µs.
    pub p50_us: f64,
    /// Latency p99, µs.
    pub p99_us: f64,
}

/// Latency against CPU cost, both on log axes: one labelled point per target at (CPU ns per reply, p50), with
/// a bar up to its p99. Down and left is better on both counts.
pub fn cost_latency(path: &Path, title: &str, x_desc: &str, points: &[CostPoint]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let pos = |v: f64| v.is_finite() && v > 0.0;
    let pts: Vec<&CostPoint> = points.iter().filter(|p| pos(p.cpu_ns) && pos(p.p50_us)).collect();
    let (xlo, xhi) = pts.iter().fold((f64::MAX, 0f64), |(lo, hi), p| (lo.min(p.cpu_ns), hi.max(p.cpu_ns)));
    let (ylo, yhi) =
        pts.iter().fold((f64::MAX, 0f64), |(lo, hi), p| (lo.min(p.p50_us), hi.max(p.p99_us.max(p.p50_us))));
    let (xlo, xhi) = if pts.is_empty() { (1.0, 10.0) } else { (xlo / 1.5, xhi * 2.0) };
    let (ylo, yhi) = if pts.is_empty() { (1.0, 10.0) } else { (ylo / 1.5, yhi * 1.5) };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((xlo..xhi).log_scale(), (ylo..yhi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("ping-pong RTT p50, bar to p99 (us)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.1}"))
        .draw()
        .map_err(err)?;
    // Labels that would overlap an earlier one (close on both log axes) move down until they do not.
    let mut placed: Vec<(f64, f64)> = Vec::new();
    for (i, p) in pts.iter().enumerate() {
        let c = color(i);
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(p.cpu_ns, p.p50_us), (p.cpu_ns, p.p99_us.max(p.p50_us))],
                c.stroke_width(2),
            )))
            .map_err(err)?;
        chart.draw_series(std::iter::once(Circle::new((p.cpu_ns, p.p50_us), 5, c.filled()))).map_err(err)?;
        let x = p.cpu_ns * 1.08;
        let mut y = p.p50_us;
        let near = |y: f64, placed: &[(f64, f64)]| {
            placed.iter().any(|&(px, py)| (x / px).log10().abs() < 0.12 && (y / py).log10().abs() < 0.025)
        };
        for _ in 0..20 {
            if !near(y, &placed) {
                break;
            }
            y /= 1.06;
        }
        placed.push((x, y));
        chart
            .draw_series(std::iter::once(Text::new(p.name.clone(), (x, y), ("sans-serif", 13).into_font().color(&c))))
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis() {
        assert!((percentile_x(90.0) - 1.0).abs() < 1e-9);
        assert!((percentile_x(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(4.0), "99.99%");
    }

    #[test]
    fn svg_renders_text_without_system_fonts() {
        let dir = std::env::temp_dir().join(format!("shunt-bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = vec![Series {
            name: "target-a".into(),
            points: vec![(50.0, 5.0), (99.0, 9.0), (99.9, 30.0), (100.0, 80.0)],
        }];
        let p = dir.join("spectrum.svg");
        percentile_spectrum(&p, "spectrum title", &s).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(
            svg.contains("<text")
                && svg.contains("spectrum title")
                && svg.contains("target-a")
                && svg.contains("99.9%")
        );
        let l = vec![Series { name: "t".into(), points: vec![(10.0, 5.0), (100.0, 50.0)] }];
        let q = dir.join("sweep.svg");
        load_sweep(&q, "sweep title", &l, &[Series { name: "t".into(), points: vec![(10.0, 0.0), (100.0, 2.0)] }])
            .unwrap();
        assert!(std::fs::read_to_string(&q).unwrap().contains("offered load (kpps)"));
        let c = dir.join("cost.svg");
        let pts = [
            CostPoint { name: "spinner".into(), cpu_ns: 50_000.0, p50_us: 6.0, p99_us: 10.0 },
            CostPoint { name: "sleeper".into(), cpu_ns: 9_000.0, p50_us: 20.0, p99_us: 60.0 },
            CostPoint { name: "nothing measured".into(), cpu_ns: 0.0, p50_us: 5.0, p99_us: 6.0 },
        ];
        cost_latency(&c, "cost title", "CPU ns per reply", &pts).unwrap();
        let svg = std::fs::read_to_string(&c).unwrap();
        assert!(svg.contains("spinner") && svg.contains("sleeper") && !svg.contains("nothing measured"));
        let k = dir.join("cost-load.svg");
        let curves = vec![
            Series { name: "spinner".into(), points: vec![(20.0, 50_000.0), (100.0, 10_000.0), (180.0, 5_500.0)] },
            Series { name: "sleeper".into(), points: vec![(20.0, 3_000.0), (100.0, 2_500.0)] },
        ];
        cost_over_load(&k, "load title", &curves).unwrap();
        let svg = std::fs::read_to_string(&k).unwrap();
        assert!(svg.contains("load title") && svg.contains("spinner") && svg.contains("offered load (kpps)"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
