//! SVG plots (plotters' SVG backend only: text is written as SVG `<text>` and laid out with plotters' built-in
//! size estimate, so no font files or system libraries are needed).

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

/// One named line of (x, y) points.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points.
    pub points: Vec<(f64, f64)>,
}

fn color(i: usize) -> RGBColor {
    const C: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
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

/// Latency (µs, log) against percentile on the 1/(1-p) axis. `series` points are (percentile, µs).
pub fn percentile_spectrum(path: &Path, title: &str, series: &[Series]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let xmax =
        series.iter().flat_map(|s| s.points.iter().map(|p| percentile_x(p.0))).fold(2.0f64, f64::max).ceil().min(7.0);
    let (ylo, yhi) = y_range(series);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, (ylo..yhi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (us)")
        .x_labels(xmax as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| format!("{y:.1}"))
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let c = color(i);
        let pts: Vec<(f64, f64)> = s.points.iter().map(|&(p, y)| (percentile_x(p).min(xmax), y.max(ylo))).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 2, c.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
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
    let mut chart = ChartBuilder::on(&top)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, (ylo..yhi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("offered load (kpps)")
        .y_desc("latency (us)")
        .y_label_formatter(&|y| format!("{y:.1}"))
        .draw()
        .map_err(err)?;
    for (i, s) in latency.iter().enumerate() {
        let c = color(i);
        let pts: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (x, y.max(ylo))).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(err)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
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
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
