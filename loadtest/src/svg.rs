//! Small inline-SVG charts for the HTML report (no scripts, no external assets).

use std::fmt::Write as _;

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    /// CSS colour.
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// How the x axis is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XAxis {
    Linear,
    /// x is a percentile (0–100) drawn as `-log10(1 - p/100)`: 0, 90, 99, 99.9 … equally spaced,
    /// the usual way to show a latency distribution.
    Percentile,
}

/// A line chart.
#[derive(Clone, Debug)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_axis: XAxis,
    pub series: Vec<Series>,
    /// Labelled vertical lines (x, label), e.g. where a phase starts.
    pub markers: Vec<(f64, String)>,
}

const W: f64 = 720.0;
const H: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 48.0;

/// Escapes text for HTML/SVG content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// About five round tick values covering `[lo, hi]`.
pub fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if hi <= lo || !lo.is_finite() || !hi.is_finite() {
        return vec![lo];
    }
    let raw = (hi - lo) / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (lo / step).ceil();
    (0..)
        .map(|i| (first + f64::from(i)) * step)
        .take_while(|t| *t <= hi + step * 1e-9)
        .take(100)
        .collect()
}

/// `12 300` → "12.3k", `0.25` → "0.25".
pub fn short_number(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{}G", trim(v / 1e9))
    } else if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e4 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

fn percentile_x(p: f64) -> f64 {
    -(1.0 - (p / 100.0).min(0.999_999)).log10()
}

impl LineChart {
    /// The chart as an `<svg>` element.
    pub fn render(&self) -> String {
        let tx = |x: f64| match self.x_axis {
            XAxis::Linear => x,
            XAxis::Percentile => percentile_x(x),
        };
        let points: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|&(x, y)| (tx(x), y)))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{t}"><text x="{LEFT}" y="20" class="title">{t}</text>"#,
            t = escape(&self.title)
        );
        if points.is_empty() {
            let _ = write!(
                svg,
                r#"<text x="{}" y="{}" class="empty">no data</text></svg>"#,
                W / 2.0 - 30.0,
                H / 2.0
            );
            return svg;
        }
        let (mut x0, mut x1) = points
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let y1 = points.iter().fold(0f64, |m, p| m.max(p.1));
        let y1 = if y1 > 0.0 { y1 * 1.08 } else { 1.0 };
        if x1 <= x0 {
            x0 -= 0.5;
            x1 += 0.5;
        }
        let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
        let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
        let sy = |y: f64| TOP + ph - y / y1 * ph;

        // Grid and y ticks.
        for t in nice_ticks(0.0, y1) {
            let y = sy(t);
            let _ = write!(
                svg,
                r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text>"#,
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                short_number(t)
            );
        }
        // x ticks.
        let x_ticks: Vec<(f64, String)> = match self.x_axis {
            XAxis::Linear => nice_ticks(x0, x1)
                .into_iter()
                .map(|t| (t, short_number(t)))
                .collect(),
            XAxis::Percentile => [0.0, 90.0, 99.0, 99.9, 99.99, 99.999]
                .iter()
                .map(|&p| (percentile_x(p), format!("{p}")))
                .filter(|(x, _)| *x <= x1 + 1e-9)
                .collect(),
        };
        for (t, label) in x_ticks {
            let x = sx(t);
            let _ = write!(
                svg,
                r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" class="grid"/><text x="{x:.1}" y="{:.1}" class="tick" text-anchor="middle">{}</text>"#,
                TOP + ph,
                TOP + ph + 16.0,
                escape(&label)
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" class="label" text-anchor="middle">{}</text><text x="14" y="{:.1}" class="label" text-anchor="middle" transform="rotate(-90 14 {:.1})">{}</text>"#,
            LEFT + pw / 2.0,
            H - 8.0,
            escape(&self.x_label),
            TOP + ph / 2.0,
            TOP + ph / 2.0,
            escape(&self.y_label)
        );
        for (x, label) in &self.markers {
            let x = tx(*x);
            if x < x0 || x > x1 {
                continue;
            }
            let _ = write!(
                svg,
                r#"<line x1="{sx:.1}" y1="{TOP}" x2="{sx:.1}" y2="{:.1}" class="marker"/><text x="{:.1}" y="{:.1}" class="tick">{}</text>"#,
                TOP + ph,
                sx(x) + 4.0,
                TOP + ph - 6.0,
                escape(label),
                sx = sx(x)
            );
        }
        // Lines and legend.
        for (i, s) in self.series.iter().enumerate() {
            let path: Vec<String> = s
                .points
                .iter()
                .map(|&(x, y)| (tx(x), y))
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                .collect();
            if path.len() == 1 {
                let (x, y) = path[0].split_once(',').expect("x,y");
                let _ = write!(
                    svg,
                    r#"<circle cx="{x}" cy="{y}" r="3" fill="{}"/>"#,
                    s.color
                );
            } else if !path.is_empty() {
                let _ = write!(
                    svg,
                    r#"<polyline fill="none" stroke="{}" stroke-width="1.8" points="{}"/>"#,
                    s.color,
                    path.join(" ")
                );
            }
            let lx = LEFT + 8.0 + 150.0 * i as f64;
            let _ = write!(
                svg,
                r#"<rect x="{lx:.1}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}" class="legend">{}</text>"#,
                TOP + 4.0,
                s.color,
                lx + 14.0,
                TOP + 13.0,
                escape(&s.name)
            );
        }
        svg.push_str("</svg>");
        svg
    }
}

/// Horizontal bars, one per (label, value, colour).
pub fn bar_chart(title: &str, unit: &str, bars: &[(String, f64, &'static str)]) -> String {
    let row = 34.0;
    let height = TOP + row * bars.len() as f64 + 12.0;
    let max = bars.iter().fold(0f64, |m, b| m.max(b.1));
    let max = if max > 0.0 { max } else { 1.0 };
    let (label_w, bar_w) = (220.0, W - 220.0 - 120.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" width="{W}" height="{height}" role="img" aria-label="{t}"><text x="8" y="20" class="title">{t}</text>"#,
        t = escape(title)
    );
    for (i, (label, value, color)) in bars.iter().enumerate() {
        let y = TOP + row * i as f64;
        let w = (value / max * bar_w).max(1.0);
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text><rect x="{label_w}" y="{y:.1}" width="{w:.1}" height="22" fill="{color}"/><text x="{:.1}" y="{:.1}" class="tick">{} {}</text>"#,
            label_w - 8.0,
            y + 15.0,
            escape(label),
            label_w + w + 6.0,
            y + 15.0,
            escape(&short_number(*value)),
            escape(unit)
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(nice_ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = nice_ticks(0.0, 1.0);
        assert_eq!(t.len(), 6);
        assert!((t[3] - 0.6).abs() < 1e-9 && (t[5] - 1.0).abs() < 1e-9);
        let t = nice_ticks(0.0, 123_456.0);
        assert_eq!(t[1], 25_000.0);
        assert!(*t.last().unwrap() <= 123_456.0);
        assert_eq!(nice_ticks(5.0, 5.0), vec![5.0]);
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(short_number(0.0), "0");
        assert_eq!(short_number(0.25), "0.25");
        assert_eq!(short_number(950.0), "950");
        assert_eq!(short_number(12_300.0), "12.3k");
        assert_eq!(short_number(2_500_000.0), "2.5M");
    }

    #[test]
    fn charts_escape_text_and_reference_nothing_external() {
        let chart = LineChart {
            title: "rows <acked> & \"sent\"".into(),
            x_label: "s".into(),
            y_label: "rows/s".into(),
            x_axis: XAxis::Linear,
            series: vec![
                Series {
                    name: "a<b".into(),
                    color: "#1f77b4",
                    points: vec![(0.0, 1.0), (1.0, 3.0), (2.0, 2.0)],
                },
                Series {
                    name: "one".into(),
                    color: "#ff7f0e",
                    points: vec![(1.0, 1.0)],
                },
            ],
            markers: vec![(1.5, "baseline".into()), (99.0, "off the chart".into())],
        };
        let svg = chart.render();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("rows &lt;acked&gt; &amp; &quot;sent&quot;"));
        assert!(svg.contains("a&lt;b"));
        assert!(svg.contains("<polyline") && svg.contains("<circle"));
        assert!(svg.contains(">baseline<") && !svg.contains("off the chart"));
        // The only URL is the SVG namespace.
        assert_eq!(svg.matches("http").count(), 1);
        let empty = LineChart {
            series: vec![],
            ..chart
        }
        .render();
        assert!(empty.contains("no data"));
    }

    #[test]
    fn percentile_axis_spreads_the_tail() {
        let chart = LineChart {
            title: "latency".into(),
            x_label: "percentile".into(),
            y_label: "ms".into(),
            x_axis: XAxis::Percentile,
            series: vec![Series {
                name: "p".into(),
                color: "#000",
                points: vec![(0.0, 1.0), (50.0, 2.0), (99.0, 5.0), (99.9, 9.0)],
            }],
            markers: vec![],
        };
        let svg = chart.render();
        assert!(svg.contains(">99.9<") && svg.contains(">99<"));
        assert!(!svg.contains(">99.99<"), "no tick beyond the data");
    }

    #[test]
    fn bars_scale_to_the_largest() {
        let svg = bar_chart(
            "ClickHouse CPU",
            "s",
            &[
                ("via sluice".into(), 1.0, "#2ca02c"),
                ("JSONEachRow".into(), 3.0, "#d62728"),
            ],
        );
        assert!(svg.contains("via sluice") && svg.contains("JSONEachRow"));
        assert!(svg.contains(r#"width="380.0""#), "{svg}");
    }
}
