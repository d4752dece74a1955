//! `courier bench --svg`: p50 latency and throughput by payload size, one
//! colour per protocol; engine solid, raw transport dashed, plain sockets
//! dotted and lighter. One row of two charts per polling policy.
//!
//! plotters is built without its `ttf` feature: text sizes are estimated
//! and the SVG names the generic `sans-serif` family, which the viewer
//! renders, so nothing here needs fontconfig or a font file.

use std::error::Error as StdError;
use std::path::Path;

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use super::report::Record;
use super::{policy_label, size_label, Layer, Plan, THROUGHPUT_FROM};
use crate::{CliResult, Error};

/// Protocol colours (a colour-blind-friendly qualitative palette).
const COLORS: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(120, 120, 120),
    RGBColor(240, 228, 66),
];

const FONT: &str = "sans-serif";

type Drawn = Result<(), Box<dyn StdError>>;

/// One line of a chart: the protocol's index, the layer, the points.
type Series = (usize, Layer, Vec<(f64, f64)>);

pub(crate) fn write_svg(path: &Path, plan: &Plan, records: &[Record]) -> CliResult {
    let rows = u32::try_from(plan.policies.len().max(1)).unwrap_or(1);
    let height = 40 + legend_height(plan) + 520 * rows;
    let root = SVGBackend::new(path, (1400, height)).into_drawing_area();
    let drawn = draw(&root, plan, records).and_then(|()| root.present().map_err(Into::into));
    drawn.map_err(|e| Error::Chart {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, plan: &Plan, records: &[Record]) -> Drawn
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let body = root.titled(
        "courier bench — engine: solid; raw transport: dashed; plain socket: dotted",
        (FONT, 24),
    )?;
    let (legend, charts) = body.split_vertically(legend_height(plan));
    draw_legend(&legend, plan)?;
    let rows = plan.policies.len().max(1);
    let areas = charts.split_evenly((rows, 2));
    let lowest_n = plan.in_flight.first().copied().unwrap_or(1);
    let highest_n = plan.in_flight.last().copied().unwrap_or(1);
    let fewest_clients = plan.clients.first().copied().unwrap_or(1);
    let clients = super::clients_label(fewest_clients);
    for (row, &spin) in plan.policies.iter().enumerate() {
        let policy = policy_label(spin);
        // One client count per chart: the fewest measured.
        let of_policy: Vec<&Record> = records
            .iter()
            .filter(|r| r.progress_spin_us == spin && r.clients == fewest_clients)
            .collect();
        if let Some(area) = areas.get(2 * row) {
            let title = format!("p50 latency, {lowest_n} in flight{clients}, {policy}");
            let pts = |r: &&Record| {
                (r.in_flight == lowest_n && r.p50_us > 0.0)
                    .then(|| (x_of(r.payload_bytes), r.p50_us))
            };
            panel(area, plan, &of_policy, &title, "p50 µs", pts)?;
        }
        if let Some(area) = areas.get(2 * row + 1) {
            let title = format!("throughput, {highest_n} in flight{clients}, {policy}");
            let pts = |r: &&Record| {
                let mib = r.mib_per_s.filter(|m| *m > 0.0)?;
                (r.in_flight == highest_n && r.payload_bytes >= THROUGHPUT_FROM)
                    .then(|| (x_of(r.payload_bytes), mib))
            };
            panel(area, plan, &of_policy, &title, "MiB/s", pts)?;
        }
    }
    Ok(())
}

/// Protocols per line of the legend.
const LEGEND_PER_LINE: usize = 4;
const LEGEND_LINE: u32 = 26;

fn legend_height(plan: &Plan) -> u32 {
    let lines = plan.protocols.len().div_ceil(LEGEND_PER_LINE).max(1);
    u32::try_from(lines).unwrap_or(1) * LEGEND_LINE + 12
}

/// The line style of a layer in the charts and in the legend.
fn draw_sample<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    layer: Layer,
    color: RGBColor,
    (x, y): (i32, i32),
) -> Drawn
where
    DB::ErrorType: 'static,
{
    let points = vec![(x, y), (x + 28, y)];
    match layer {
        Layer::Engine | Layer::Counted | Layer::Timed => {
            area.draw(&PathElement::new(points, color.stroke_width(3)))?;
        }
        Layer::Raw => area.draw(&DashedPathElement::new(points, 8, 5, color.stroke_width(2)))?,
        Layer::Socket => area.draw(&DashedPathElement::new(
            points,
            2,
            4,
            color.mix(0.55).stroke_width(2),
        ))?,
    }
    Ok(())
}

/// One legend for every chart: per protocol, its colour and the line of
/// each layer measured.
fn draw_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, plan: &Plan) -> Drawn
where
    DB::ErrorType: 'static,
{
    let (width, _) = area.dim_in_pixel();
    let column = i32::try_from(width / LEGEND_PER_LINE as u32).unwrap_or(350);
    for (i, proto) in plan.protocols.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let line = i32::try_from(i / LEGEND_PER_LINE).unwrap_or(0);
        let col = i32::try_from(i % LEGEND_PER_LINE).unwrap_or(0);
        let y = 6 + line * LEGEND_LINE as i32 + LEGEND_LINE as i32 / 2;
        let mut x = 20 + col * column;
        area.draw(&Text::new(
            proto.name.clone(),
            (x, y - 9),
            (FONT, 17).into_font().color(&color),
        ))?;
        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
        let name_width = (proto.name.len() as i32) * 10 + 12;
        x += name_width.max(48);
        for layer in plan.layers_for(proto) {
            draw_sample(area, layer, color, (x, y))?;
            area.draw(&Text::new(layer.name(), (x + 34, y - 8), (FONT, 15)))?;
            x += 34 + 8 * i32::try_from(layer.name().len()).unwrap_or(6) + 14;
        }
    }
    Ok(())
}

/// The x coordinate of a payload size: log2 of the size (0 B at 0).
fn x_of(size: usize) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    (size.max(1) as f64).log2()
}

/// A tick label: the size at even powers of two ("0 B" at 0 when a 0 B
/// payload was measured), nothing elsewhere.
fn x_label(v: f64, zero_measured: bool) -> String {
    let k = v.round();
    if (v - k).abs() > 1e-6 || !(0.0..=60.0).contains(&k) {
        return String::new();
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let k = k as u32;
    match k {
        0 if zero_measured => "0 B".to_owned(),
        _ if k % 2 == 1 => String::new(),
        _ => size_label(1usize << k),
    }
}

/// The y ticks of a log axis: 1, 2 and 5 times the powers of ten in range.
fn key_points(lo: f64, hi: f64) -> Vec<f64> {
    let mut points = Vec::new();
    if !(lo > 0.0 && hi > lo && hi.is_finite()) {
        return points;
    }
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let p = m * decade;
            if (lo..=hi).contains(&p) {
                points.push(p);
            }
        }
        decade *= 10.0;
    }
    points
}

fn y_label(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        let s = format!("{v:.1}");
        s.trim_end_matches(".0").to_owned()
    } else {
        format!("{v:.2}")
    }
}

/// One chart: a line per (protocol, layer) of the points `pick` returns.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    plan: &Plan,
    records: &[&Record],
    title: &str,
    y_desc: &str,
    pick: impl Fn(&&Record) -> Option<(f64, f64)>,
) -> Drawn
where
    DB::ErrorType: 'static,
{
    // Series: (protocol index, layer) -> points sorted by size.
    let mut series: Vec<Series> = Vec::new();
    for (pi, proto) in plan.protocols.iter().enumerate() {
        for layer in [Layer::Socket, Layer::Raw, Layer::Engine] {
            let mut pts: Vec<(f64, f64)> = records
                .iter()
                .filter(|r| r.protocol == proto.name && r.layer == layer)
                .filter_map(&pick)
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            if !pts.is_empty() {
                series.push((pi, layer, pts));
            }
        }
    }
    let all = series.iter().flat_map(|(_, _, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if series.is_empty() {
        area.draw(&Text::new(
            format!("{title}: nothing to draw (no payload of 64 KiB or more?)"),
            (20, 40),
            (FONT, 18),
        ))?;
        return Ok(());
    }
    let zero_measured = plan.sizes.contains(&0);
    let x_range = (x0 - 0.5)..(x1 + 0.5);
    let (lo, hi) = (y0 / 1.6, y1 * 1.6);
    let y_axis = (lo..hi).log_scale().with_key_points(key_points(lo, hi));
    let labels = (x1 - x0).ceil() as usize + 2;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, y_axis)?;
    chart
        .configure_mesh()
        .x_labels(labels)
        .x_label_formatter(&|v| x_label(*v, zero_measured))
        .y_label_formatter(&|v| y_label(*v))
        .x_desc("payload size")
        .y_desc(y_desc)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .light_line_style(RGBColor(244, 244, 244))
        .bold_line_style(RGBColor(210, 210, 210))
        .draw()?;
    for (pi, layer, pts) in series {
        let color = COLORS[pi % COLORS.len()];
        match layer {
            Layer::Engine | Layer::Counted | Layer::Timed => {
                chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(3)))?;
                chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
            }
            Layer::Raw => {
                chart.draw_series(DashedLineSeries::new(
                    pts.clone(),
                    8,
                    5,
                    color.stroke_width(2),
                ))?;
                chart.draw_series(
                    pts.iter()
                        .map(|p| Circle::new(*p, 3, color.stroke_width(2))),
                )?;
            }
            Layer::Socket => {
                chart.draw_series(DashedLineSeries::new(
                    pts.clone(),
                    2,
                    4,
                    color.mix(0.55).stroke_width(2),
                ))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_name_even_powers_of_two() {
        assert_eq!(x_label(0.0, true), "0 B");
        assert_eq!(x_label(0.0, false), "1 B");
        assert_eq!(x_label(6.0, true), "64 B");
        assert_eq!(x_label(7.0, true), "");
        assert_eq!(x_label(12.0, true), "4 KiB");
        assert_eq!(x_label(20.0, true), "1 MiB");
        assert_eq!(x_label(6.5, true), "");
        assert_eq!(y_label(1234.4), "1234");
        assert_eq!(y_label(50.0), "50");
        assert_eq!(y_label(2.5), "2.5");
        assert_eq!(y_label(0.5), "0.50");
        assert_eq!(
            key_points(30.0, 1100.0),
            [50.0, 100.0, 200.0, 500.0, 1000.0]
        );
        assert!(key_points(0.0, 1.0).is_empty());
    }
}
