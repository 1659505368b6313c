//! The report's charts, as SVG files beside it: latency percentiles, CPU per 1,000
//! requests and resident memory, one colour per variant in all three.
//!
//! Pure on purpose: it takes the figures as plain data ([`Figures`]) and knows nothing of
//! the harness, so `tests/mesh_charts.rs` can build it on its own and check the drawings
//! for figures it chose (the harness itself is a bench, which `cargo test` does not run).

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// What the charts show, taken from the measurements the report is written from.
pub(crate) struct Figures {
    /// The fixed-rate load points in run order: protocol ("HTTP/1.1") and requests/s.
    pub(crate) loads: Vec<(String, u64)>,
    /// The variants in report order.
    pub(crate) variants: Vec<VariantFigures>,
}

/// One variant's figures.
pub(crate) struct VariantFigures {
    /// "direct", "airlock", "envoy", "nginx".
    pub(crate) name: String,
    /// p50, p90, p99 in ms at each load point (in the order of [`Figures::loads`]).
    pub(crate) latency: Vec<[f64; 3]>,
    /// CPU seconds per 1,000 requests (client side, server side) at each load point; none
    /// for a variant without proxies.
    pub(crate) cpu: Option<Vec<(f64, f64)>>,
    /// Resident memory; none for a variant without proxies.
    pub(crate) memory: Option<Memory>,
}

/// Resident memory of a pair in KiB: (client side, server side).
pub(crate) struct Memory {
    /// Before any load.
    pub(crate) idle: (u64, u64),
    /// The high-water mark after all the load.
    pub(crate) peak: (u64, u64),
}

/// One chart file.
pub(crate) struct Chart {
    /// File name inside the charts directory.
    pub(crate) file: &'static str,
    /// What it shows, for the image's alternative text.
    pub(crate) title: &'static str,
    draw: fn(&Figures) -> String,
}

impl Chart {
    /// The chart as an SVG document.
    pub(crate) fn render(&self, figures: &Figures) -> String {
        (self.draw)(figures)
    }
}

/// Every chart, in the order the report shows them.
pub(crate) const CHARTS: [Chart; 3] = [
    Chart {
        file: "latency.svg",
        title: "Latency percentiles per variant, protocol and rate",
        draw: latency,
    },
    Chart {
        file: "cpu.svg",
        title: "CPU seconds per 1,000 requests per variant",
        draw: cpu,
    },
    Chart {
        file: "memory.svg",
        title: "Idle and peak resident memory per variant",
        draw: memory,
    },
];

/// Where the charts of the report at `report` go: `results/` beside it, so the report's
/// relative links hold wherever `--out` put it.
pub(crate) fn dir_for(report: &Path) -> PathBuf {
    report.parent().unwrap_or_else(|| Path::new(".")).join(DIR)
}

/// The charts' directory, relative to the report's, for the report's links.
pub(crate) const DIR: &str = "results";

/// Writes every chart into `dir` (created if missing); the paths written.
pub(crate) fn write(dir: &Path, figures: &Figures) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    CHARTS
        .iter()
        .map(|chart| {
            let path = dir.join(chart.file);
            std::fs::write(&path, chart.render(figures))?;
            Ok(path)
        })
        .collect()
}

/// The colour of a variant, the same in every chart; variants the palette does not name
/// get the remaining colours by position.
pub(crate) fn colour(name: &str, index: usize) -> RGBColor {
    match name {
        "direct" => RGBColor(0x8c, 0x8c, 0x8c),
        "airlock" => RGBColor(0x1f, 0x77, 0xb4),
        "envoy" => RGBColor(0xd6, 0x27, 0x28),
        "nginx" => RGBColor(0x2c, 0xa0, 0x2c),
        _ => [
            RGBColor(0x94, 0x67, 0xbd),
            RGBColor(0xff, 0x7f, 0x0e),
            RGBColor(0x8c, 0x56, 0x4b),
        ][index % 3],
    }
}

/// How pale the server side's part of a stacked bar is drawn.
pub(crate) const SERVER_SIDE_OPACITY: f64 = 0.45;

/// One bar: its colour and its stacked parts, bottom first (the first solid, the rest
/// pale), with an optional figure above it.
struct Bar {
    colour: RGBColor,
    parts: Vec<f64>,
    label: Option<String>,
}

/// One plot: groups along x (e.g. p50, p90, p99), one slot per variant in each group.
struct Panel {
    title: String,
    groups: Vec<String>,
    /// Per group, per slot; `None` leaves the slot empty.
    bars: Vec<Vec<Option<Bar>>>,
}

/// Everything one SVG needs.
struct Drawing<'a> {
    title: &'a str,
    y_desc: &'a str,
    legend: Vec<(String, RGBColor)>,
    /// A line under the legend (what pale parts mean).
    note: Option<&'a str>,
    panels: Vec<Panel>,
    columns: usize,
    size: (u32, u32),
}

fn latency(figures: &Figures) -> String {
    let variants = &figures.variants;
    let panels = figures
        .loads
        .iter()
        .enumerate()
        .map(|(at, (protocol, rate))| Panel {
            title: format!("{protocol} at {rate} requests/s"),
            groups: ["p50", "p90", "p99"].map(String::from).to_vec(),
            bars: (0..3)
                .map(|p| {
                    variants
                        .iter()
                        .enumerate()
                        .map(|(i, v)| {
                            let ms = v.latency.get(at)?[p];
                            ms.is_finite().then(|| Bar {
                                colour: colour(&v.name, i),
                                parts: vec![ms],
                                label: None,
                            })
                        })
                        .collect()
                })
                .collect(),
        })
        .collect();
    // One row per protocol: as many columns as there are rates for the first protocol.
    let first = figures.loads.first().map(|(p, _)| p.as_str());
    let columns = figures
        .loads
        .iter()
        .filter(|(p, _)| Some(p.as_str()) == first)
        .count()
        .max(1);
    let rows = figures.loads.len().div_ceil(columns).max(1) as u32;
    render(&Drawing {
        title: "Latency percentiles (oha, open loop, latency-corrected)",
        y_desc: "latency (ms)",
        legend: legend_of(variants.iter().enumerate()),
        note: None,
        panels,
        columns,
        size: (400 * columns as u32, 90 + 300 * rows),
    })
}

fn cpu(figures: &Figures) -> String {
    let proxied: Vec<(usize, &VariantFigures)> = figures
        .variants
        .iter()
        .enumerate()
        .filter(|(_, v)| v.cpu.is_some())
        .collect();
    let bars = (0..figures.loads.len())
        .map(|at| {
            proxied
                .iter()
                .map(|(i, v)| {
                    let (client, server) = *v.cpu.as_ref()?.get(at)?;
                    (client + server).is_finite().then(|| Bar {
                        colour: colour(&v.name, *i),
                        parts: vec![client, server],
                        label: Some(format!("{:.3}", client + server)),
                    })
                })
                .collect()
        })
        .collect();
    let groups = figures
        .loads
        .iter()
        .map(|(protocol, rate)| format!("{protocol}, {rate}/s"))
        .collect();
    render(&Drawing {
        title: "CPU per 1,000 requests, both proxies of a pair",
        y_desc: "CPU seconds per 1,000 requests",
        legend: legend_of(proxied.iter().copied()),
        note: Some("solid: client side; pale: server side; figure: the sum"),
        panels: vec![Panel {
            title: String::new(),
            groups,
            bars,
        }],
        columns: 1,
        size: (1100, 480),
    })
}

fn memory(figures: &Figures) -> String {
    let proxied: Vec<(usize, &VariantFigures)> = figures
        .variants
        .iter()
        .enumerate()
        .filter(|(_, v)| v.memory.is_some())
        .collect();
    let pick: [(&str, Pick); 4] = [
        ("idle, client side", |m| m.idle.0),
        ("idle, server side", |m| m.idle.1),
        ("peak, client side", |m| m.peak.0),
        ("peak, server side", |m| m.peak.1),
    ];
    let bars = pick
        .iter()
        .map(|(_, value)| {
            proxied
                .iter()
                .map(|(i, v)| {
                    let mb = value(v.memory.as_ref()?) as f64 / 1024.0;
                    Some(Bar {
                        colour: colour(&v.name, *i),
                        parts: vec![mb],
                        label: Some(format!("{mb:.1}")),
                    })
                })
                .collect()
        })
        .collect();
    render(&Drawing {
        title: "Resident memory (RSS) per proxy",
        y_desc: "MB",
        legend: legend_of(proxied.iter().copied()),
        note: Some("peak: the high-water mark (VmHWM) after every run"),
        panels: vec![Panel {
            title: String::new(),
            groups: pick.iter().map(|(name, _)| (*name).to_owned()).collect(),
            bars,
        }],
        columns: 1,
        size: (900, 480),
    })
}

/// One of a pair's memory figures.
type Pick = fn(&Memory) -> u64;

fn legend_of<'a>(
    variants: impl Iterator<Item = (usize, &'a VariantFigures)>,
) -> Vec<(String, RGBColor)> {
    variants
        .map(|(i, v)| (v.name.clone(), colour(&v.name, i)))
        .collect()
}

/// The drawing as SVG text. Drawing into a string cannot fail for want of space or
/// fonts (the SVG backend only writes elements), so errors are bugs and panic.
fn render(drawing: &Drawing) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, drawing.size).into_drawing_area();
        root.fill(&WHITE).unwrap();
        let body = root
            .titled(drawing.title, ("sans-serif", 20).into_font())
            .unwrap();
        let (top, body) = body.split_vertically(if drawing.note.is_some() { 44 } else { 26 });
        draw_legend(&top, &drawing.legend, drawing.note);
        // One scale for every panel, so panels compare at a glance; room above for figures.
        let highest = drawing
            .panels
            .iter()
            .flat_map(|p| p.bars.iter().flatten().flatten())
            .map(|b| b.parts.iter().sum::<f64>())
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let y_max = if highest > 0.0 { highest * 1.15 } else { 1.0 };
        let rows = drawing.panels.len().div_ceil(drawing.columns).max(1);
        for (panel, area) in drawing
            .panels
            .iter()
            .zip(body.split_evenly((rows, drawing.columns)))
        {
            draw_panel(&area, panel, drawing.y_desc, y_max);
        }
        root.present().unwrap();
    }
    svg
}

fn draw_legend(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    legend: &[(String, RGBColor)],
    note: Option<&str>,
) {
    let font = ("sans-serif", 15).into_font();
    let mut x = 60;
    for (name, colour) in legend {
        area.draw(&Rectangle::new([(x, 4), (x + 14, 18)], colour.filled()))
            .unwrap();
        area.draw(&Text::new(name.as_str(), (x + 20, 4), font.clone()))
            .unwrap();
        x += 40 + 9 * name.len() as i32;
    }
    if let Some(note) = note {
        area.draw(&Text::new(note, (60, 24), ("sans-serif", 13).into_font()))
            .unwrap();
    }
}

fn draw_panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    panel: &Panel,
    y_desc: &str,
    y_max: f64,
) {
    let groups = panel.groups.len().max(1);
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(56);
    if !panel.title.is_empty() {
        builder.caption(&panel.title, ("sans-serif", 15).into_font());
    }
    let mut chart = builder
        .build_cartesian_2d(0.0..groups as f64, 0.0..y_max)
        .unwrap();
    chart
        .configure_mesh()
        .disable_x_mesh()
        // The groups are named below their centres instead of numbered ticks.
        .x_labels(0)
        .y_desc(y_desc)
        // One faint line between labelled ones: more would hide the bars' tops.
        .max_light_lines(1)
        .label_style(("sans-serif", 13).into_font())
        .draw()
        .unwrap();
    let below = ("sans-serif", 13)
        .into_font()
        .into_text_style(area)
        .pos(Pos::new(HPos::Center, VPos::Top));
    for (g, name) in panel.groups.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(g as f64 + 0.5, 0.0));
        // The root's pixels: `area` starts where its panel does, the backend at 0.
        let (left, top) = area.get_base_pixel();
        area.draw(&Text::new(
            name.as_str(),
            (x - left, y - top + 6),
            below.clone(),
        ))
        .unwrap();
    }
    for (g, slots) in panel.bars.iter().enumerate() {
        // Slots share 80 % of the group's width, so neighbouring groups stay apart.
        let width = 0.8 / slots.len().max(1) as f64;
        for (s, bar) in slots.iter().enumerate() {
            let Some(bar) = bar else { continue };
            let left = g as f64 + 0.1 + s as f64 * width;
            let (left, right) = (left + width * 0.06, left + width * 0.94);
            let mut base = 0.0;
            for (p, part) in bar.parts.iter().enumerate() {
                let style = if p == 0 {
                    bar.colour.filled()
                } else {
                    bar.colour.mix(SERVER_SIDE_OPACITY).filled()
                };
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(left, base), (right, base + part)],
                        style,
                    )))
                    .unwrap();
                base += part;
            }
            if let Some(label) = &bar.label {
                let font = ("sans-serif", 12)
                    .into_font()
                    .into_text_style(area)
                    .pos(Pos::new(HPos::Center, VPos::Bottom));
                chart
                    .draw_series(std::iter::once(Text::new(
                        label.clone(),
                        ((left + right) / 2.0, base),
                        font,
                    )))
                    .unwrap();
            }
        }
    }
}
