//! `--plot FILE.svg`: two line charts drawn by hand, p99 (and p50)
//! latency per second above, delivered (and published) msg/s per second
//! below.

use std::fmt::Write as _;

use crate::report::TimelinePoint;

const W: f64 = 900.0;
const CHART_H: f64 = 260.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 50.0;
const GAP: f64 = 70.0;

/// Escapes text for XML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" axis maximum at or above `v` (1, 2, 2.5, 5 x 10^n).
pub(crate) fn nice_max(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= v {
            return m * mag;
        }
    }
    10.0 * mag
}

fn label(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

struct Series<'a> {
    name: &'a str,
    color: &'a str,
    dashed: bool,
    values: Vec<f64>,
}

#[allow(clippy::too_many_arguments)]
fn chart(
    out: &mut String,
    top: f64,
    title: &str,
    unit: &str,
    seconds: usize,
    series: &[Series<'_>],
) {
    let plot_w = W - LEFT - RIGHT;
    let ymax = nice_max(
        series
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .fold(0.0, f64::max),
    );
    let xmax = seconds.max(1) as f64;
    let x = |t: f64| LEFT + t / xmax * plot_w;
    let y = |v: f64| top + CHART_H - (v / ymax).min(1.0) * CHART_H;
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>"#,
        top - 10.0,
        esc(title)
    );
    // Grid and y labels.
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let yy = y(v);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/>"##,
            LEFT + plot_w
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            yy + 4.0,
            esc(&label(v))
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="14" y="{:.1}" font-size="11" transform="rotate(-90 14 {:.1})" text-anchor="middle">{}</text>"#,
        top + CHART_H / 2.0,
        top + CHART_H / 2.0,
        esc(unit)
    );
    // X axis ticks, about 10.
    let step = (nice_max(xmax / 10.0)).max(1.0);
    let mut t = 0.0;
    while t <= xmax + 1e-9 {
        let xx = x(t);
        let _ = writeln!(
            out,
            r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="#999"/>"##,
            top + CHART_H,
            top + CHART_H + 4.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{xx:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}s</text>"#,
            top + CHART_H + 16.0,
            trim(t)
        );
        t += step;
    }
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{CHART_H}" fill="none" stroke="#444"/>"##
    );
    // Lines: each second's value drawn at the middle of the second.
    for (i, s) in series.iter().enumerate() {
        let mut pts = String::new();
        for (t, v) in s.values.iter().enumerate() {
            let _ = write!(pts, "{:.1},{:.1} ", x(t as f64 + 0.5), y(*v));
        }
        let dash = if s.dashed {
            r#" stroke-dasharray="6,4""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
            s.color,
            pts.trim_end()
        );
        let lx = LEFT + 14.0;
        let ly = top + 16.0 + 16.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/><text x="{}" y="{}" font-size="11">{}</text>"#,
            lx + 24.0,
            s.color,
            lx + 30.0,
            ly + 4.0,
            esc(s.name)
        );
    }
}

/// The SVG document for `timeline`, titled `title`.
pub fn render(title: &str, timeline: &[TimelinePoint]) -> String {
    let h = TOP + CHART_H * 2.0 + GAP + 50.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="22" font-size="15">{}</text>"#,
        esc(title)
    );
    let secs = timeline.len();
    let lat = [
        Series {
            name: "p99",
            color: "#d62728",
            dashed: false,
            values: timeline.iter().map(|p| p.p99_us as f64).collect(),
        },
        Series {
            name: "p50",
            color: "#1f77b4",
            dashed: true,
            values: timeline.iter().map(|p| p.p50_us as f64).collect(),
        },
    ];
    chart(&mut out, TOP + 10.0, "Latency per second", "µs", secs, &lat);
    let rates = [
        Series {
            name: "delivered msg/s",
            color: "#2ca02c",
            dashed: false,
            values: timeline.iter().map(|p| p.delivered as f64).collect(),
        },
        Series {
            name: "published msg/s",
            color: "#7f7f7f",
            dashed: true,
            values: timeline.iter().map(|p| p.published as f64).collect(),
        },
    ];
    chart(
        &mut out,
        TOP + 10.0 + CHART_H + GAP,
        "Rate per second",
        "msg/s",
        secs,
        &rates,
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: u64, delivered: u64, p99: u64) -> TimelinePoint {
        TimelinePoint {
            t,
            published: delivered,
            delivered,
            p50_us: p99 / 2,
            p99_us: p99,
        }
    }

    #[test]
    fn svg_is_well_formed() {
        let tl: Vec<_> = (0..12).map(|t| point(t, 1000 * t, 100 + t * 7)).collect();
        let svg = render("amqp <burst> & \"friends\"", &tl);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains("&lt;burst&gt; &amp; &quot;friends&quot;"));
        // Every element is closed: count opening and closing tags.
        let opens = svg.matches("<text").count();
        assert_eq!(opens, svg.matches("</text>").count());
        assert_eq!(svg.matches("<svg").count(), 1);
        // Every polyline has one point per second.
        for line in svg.lines().filter(|l| l.starts_with("<polyline")) {
            let pts = line.split("points=\"").nth(1).unwrap();
            let pts = pts.split('"').next().unwrap();
            assert_eq!(pts.split(' ').count(), 12);
            for p in pts.split(' ') {
                let (x, y) = p.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!((LEFT..=W).contains(&x) && y >= 0.0, "{p}");
            }
        }
        // No stray raw '&' (only entities).
        for (i, _) in svg.match_indices('&') {
            let rest = &svg[i..];
            assert!(["&amp;", "&lt;", "&gt;", "&quot;"]
                .iter()
                .any(|e| rest.starts_with(e)));
        }
    }

    #[test]
    fn empty_timeline_still_renders() {
        let svg = render("nothing", &[]);
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    }

    #[test]
    fn nice_axis_maxima() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(1800.0), 2000.0);
        assert_eq!(nice_max(2100.0), 2500.0);
        assert_eq!(nice_max(100.0), 100.0);
        assert_eq!(label(25_000.0), "25k");
        assert_eq!(label(1_500_000.0), "1.5M");
    }
}
