//! A plain SVG of distributions: one row per series, every value as a dot, a box
//! from the 25th to the 75th percentile with the median marked, and whiskers to
//! the extremes. Written by hand: the picture is simple, and an SVG needs no font
//! or image library.

use std::fmt::Write;

use husk_tests::cri::scenario::percentile;

const WIDTH: f64 = 800.0;
const ROW: f64 = 60.0;
const LEFT: f64 = 120.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// The SVG text for `series` (name, values) on a shared linear axis from 0.
pub fn distributions(title: &str, unit: &str, series: &[(String, Vec<f64>)]) -> String {
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max);
    let max = if max > 0.0 { nice_ceiling(max) } else { 1.0 };
    let height = TOP + ROW * series.len() as f64 + BOTTOM;
    let x = |v: f64| LEFT + (WIDTH - LEFT - RIGHT) * v / max;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // The axis: five ticks.
    let axis_y = TOP + ROW * series.len() as f64;
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{axis_y}" x2="{}" y2="{axis_y}" stroke="#444"/>"##,
        WIDTH - RIGHT
    );
    for i in 0..=5 {
        let v = max * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{0}" y1="{TOP}" x2="{0}" y2="{axis_y}" stroke="#ddd"/><text x="{0}" y="{1}" text-anchor="middle">{2}</text>"##,
            x(v),
            axis_y + 16.0,
            trim(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        axis_y + 36.0,
        escape(unit)
    );
    for (row, (name, values)) in series.iter().enumerate() {
        let mid = TOP + ROW * (row as f64 + 0.5);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{} (n={})</text>"#,
            LEFT - 8.0,
            mid + 4.0,
            escape(name),
            values.len()
        );
        if values.is_empty() {
            continue;
        }
        let (lo, hi) = values
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(l, h), v| (l.min(*v), h.max(*v)));
        let (q1, q2, q3) = (
            percentile(values, 25.0),
            percentile(values, 50.0),
            percentile(values, 75.0),
        );
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{mid}" x2="{}" y2="{mid}" stroke="#888"/>"##,
            x(lo),
            x(hi)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{}" y="{}" width="{}" height="20" fill="#cde" stroke="#357"/>"##,
            x(q1),
            mid - 10.0,
            (x(q3) - x(q1)).max(1.0)
        );
        let _ = writeln!(
            s,
            r##"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="#c33" stroke-width="2"/>"##,
            x(q2),
            mid - 12.0,
            mid + 12.0
        );
        for (i, v) in values.iter().enumerate() {
            // A fixed spread, so that equal values stay visible and the picture is
            // the same for the same numbers.
            let jitter = ((i * 7) % 11) as f64 - 5.0;
            let _ = writeln!(
                s,
                r##"<circle cx="{}" cy="{}" r="2.5" fill="#222" fill-opacity="0.6"/>"##,
                x(*v),
                mid + jitter * 2.0
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * p)
}

fn trim(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_a_dot_and_every_series_a_row() {
        let svg = distributions(
            "start <latency>",
            "ms",
            &[
                ("runc".into(), vec![1000.0, 1500.0, 1200.0]),
                ("husk".into(), vec![4000.0, 4100.0]),
                ("none".into(), vec![]),
            ],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<circle").count(), 5);
        assert!(svg.contains("runc (n=3)") && svg.contains("none (n=0)"));
        assert!(svg.contains("start &lt;latency&gt;"));
        // The axis ends at a round number above the largest value.
        assert!(svg.contains(">5000</text>"), "{svg}");
    }

    #[test]
    fn ceilings_are_round() {
        assert_eq!(nice_ceiling(4100.0), 5000.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
        assert_eq!(nice_ceiling(0.3), 0.5);
    }
}
