//! The mesh benchmark's charts (benches/mesh/charts.rs), drawn for figures chosen here and
//! read back as XML: one bar per variant, percentile and load point, one legend entry per
//! variant, the figures printed where the chart prints them. The harness is a bench that
//! `cargo test` does not run, so this builds the chart module on its own.

#[path = "../benches/mesh/charts.rs"]
mod charts;

use charts::{CHARTS, Figures, Memory, VariantFigures};

const LOADS: [(&str, u64); 6] = [
    ("HTTP/1.1", 500),
    ("HTTP/1.1", 1000),
    ("HTTP/1.1", 2000),
    ("HTTP/2", 500),
    ("HTTP/2", 1000),
    ("HTTP/2", 2000),
];
const NAMES: [&str; 4] = ["direct", "airlock", "envoy", "nginx"];

/// Four variants at six load points; every figure differs, the proxied ones have CPU and
/// memory, direct has neither.
fn fixture() -> Figures {
    Figures {
        loads: LOADS.iter().map(|(p, r)| ((*p).to_owned(), *r)).collect(),
        variants: NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let scale = 1.0 + i as f64;
                VariantFigures {
                    name: (*name).to_owned(),
                    latency: (0..LOADS.len())
                        .map(|at| {
                            let base = 0.1 * scale + 0.01 * at as f64;
                            [base, base * 1.5, base * 3.0]
                        })
                        .collect(),
                    cpu: (i > 0).then(|| {
                        (0..LOADS.len())
                            .map(|at| (0.1 * scale, 0.05 * scale + 0.001 * at as f64))
                            .collect()
                    }),
                    memory: (i > 0).then(|| Memory {
                        idle: (13_210 * i as u64, 12_000 * i as u64),
                        peak: (17_300 * i as u64, 16_000 * i as u64),
                    }),
                }
            })
            .collect(),
    }
}

fn chart(file: &str, figures: &Figures) -> String {
    let chart = CHARTS.iter().find(|c| c.file == file).unwrap();
    chart.render(figures)
}

fn hex(name: &str) -> String {
    let i = NAMES.iter().position(|n| *n == name).unwrap();
    let c = charts::colour(name, i);
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

/// The filled rectangles of `name`'s colour, in document order: (opacity, height).
fn rects(doc: &roxmltree::Document, name: &str) -> Vec<(f64, f64)> {
    let fill = hex(name);
    doc.descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("fill") == Some(fill.as_str()))
        .map(|n| {
            let number = |a: &str| n.attribute(a).unwrap().parse::<f64>().unwrap();
            (number("opacity"), number("height"))
        })
        .collect()
}

/// The text of every `<text>` element.
fn texts(doc: &roxmltree::Document) -> Vec<String> {
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").trim().to_owned())
        .collect()
}

#[test]
fn latency_has_a_bar_per_variant_percentile_and_load_and_a_panel_per_load() {
    let svg = chart("latency.svg", &fixture());
    let doc = roxmltree::Document::parse(&svg).expect("latency.svg is XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts = texts(&doc);
    for name in NAMES {
        // One legend square, then 3 percentiles × 6 load points.
        assert_eq!(rects(&doc, name).len(), 1 + 3 * LOADS.len(), "{name}");
        assert_eq!(texts.iter().filter(|t| *t == name).count(), 1, "{name}");
    }
    for (protocol, rate) in LOADS {
        let title = format!("{protocol} at {rate} requests/s");
        assert!(texts.contains(&title), "no panel {title}: {texts:?}");
    }
    for percentile in ["p50", "p90", "p99"] {
        assert_eq!(
            texts.iter().filter(|t| *t == percentile).count(),
            LOADS.len(),
            "{percentile}"
        );
    }
    // Heights follow the figures: in the first panel, airlock's p99 is 3 × its p50, and
    // envoy's p50 is 1.5 × airlock's (0.3 ms against 0.2 ms).
    let airlock = rects(&doc, "airlock");
    let envoy = rects(&doc, "envoy");
    // Bars are drawn group by group: p50 of panel 1 is the first bar after the legend.
    let (p50, p99) = (airlock[1].1, airlock[3].1);
    assert!((p99 / p50 - 3.0).abs() < 0.05, "p99 {p99} vs p50 {p50}");
    assert!(
        (envoy[1].1 / p50 - 1.5).abs() < 0.05,
        "{} vs {p50}",
        envoy[1].1
    );
}

#[test]
fn a_missing_variant_draws_fewer_series() {
    let mut figures = fixture();
    figures.variants.retain(|v| v.name != "nginx");
    let svg = chart("latency.svg", &figures);
    let doc = roxmltree::Document::parse(&svg).unwrap();
    assert!(rects(&doc, "nginx").is_empty());
    assert!(!texts(&doc).iter().any(|t| t == "nginx"));
    for name in ["direct", "airlock", "envoy"] {
        assert_eq!(rects(&doc, name).len(), 1 + 3 * LOADS.len(), "{name}");
    }
    // The same holds for the other charts.
    for file in ["cpu.svg", "memory.svg"] {
        let svg = chart(file, &figures);
        let doc = roxmltree::Document::parse(&svg).unwrap();
        assert!(rects(&doc, "nginx").is_empty(), "{file}");
        assert!(!rects(&doc, "envoy").is_empty(), "{file}");
    }
}

#[test]
fn cpu_stacks_client_and_server_for_proxied_variants_only() {
    let svg = chart("cpu.svg", &fixture());
    let doc = roxmltree::Document::parse(&svg).expect("cpu.svg is XML");
    let texts = texts(&doc);
    // direct has no proxies, so no CPU of its own: no bar, no legend entry.
    assert!(rects(&doc, "direct").is_empty());
    assert!(!texts.iter().any(|t| t == "direct"));
    for name in ["airlock", "envoy", "nginx"] {
        let rects = rects(&doc, name);
        let solid = rects.iter().filter(|(o, _)| *o == 1.0).count();
        let pale = rects
            .iter()
            .filter(|(o, _)| (*o - charts::SERVER_SIDE_OPACITY).abs() < 1e-9)
            .count();
        // Legend square + client part per load point; server part per load point.
        assert_eq!((solid, pale), (1 + LOADS.len(), LOADS.len()), "{name}");
        assert_eq!(texts.iter().filter(|t| *t == name).count(), 1, "{name}");
    }
    // airlock (scale 2) at the first load: 0.2 + 0.1 = 0.300 printed above its bar.
    assert!(texts.iter().any(|t| t == "0.300"), "{texts:?}");
    assert!(texts.iter().any(|t| t == "HTTP/2, 2000/s"), "{texts:?}");
}

#[test]
fn memory_has_idle_and_peak_per_side_in_megabytes() {
    let svg = chart("memory.svg", &fixture());
    let doc = roxmltree::Document::parse(&svg).expect("memory.svg is XML");
    let texts = texts(&doc);
    assert!(rects(&doc, "direct").is_empty());
    for name in ["airlock", "envoy", "nginx"] {
        assert_eq!(rects(&doc, name).len(), 1 + 4, "{name}");
    }
    // airlock: idle client 13,210 KiB = 12.9 MB, peak client 17,300 KiB = 16.9 MB.
    assert!(texts.iter().any(|t| t == "12.9"), "{texts:?}");
    assert!(texts.iter().any(|t| t == "16.9"), "{texts:?}");
    let airlock = rects(&doc, "airlock");
    let (idle, peak) = (airlock[1].1, airlock[3].1);
    assert!(
        (peak / idle - 17_300.0 / 13_210.0).abs() < 0.05,
        "{peak} vs {idle}"
    );
    for group in ["idle, client side", "peak, server side"] {
        assert!(texts.iter().any(|t| t == group), "{group}: {texts:?}");
    }
}

#[test]
fn charts_are_written_beside_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("RESULTS.md");
    let charts_dir = charts::dir_for(&report);
    assert_eq!(charts_dir, dir.path().join("results"));
    let written = charts::write(&charts_dir, &fixture()).unwrap();
    assert_eq!(written.len(), 3);
    for (path, chart) in written.iter().zip(&CHARTS) {
        assert_eq!(path, &charts_dir.join(chart.file));
        let svg = std::fs::read_to_string(path).unwrap();
        roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{}: {e}", chart.file));
        assert!(!chart.title.is_empty());
    }
}
