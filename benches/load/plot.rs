//! The latency scenario's delivery delay as a PNG next to the JSON (same stem): the CDF of every
//! target on a log time axis, and the same curves on a tail axis (90%, 99%, 99.9%, …) where
//! the percentiles that differ live. Drawn from the results JSON alone (so `--plot FILE.json`
//! redraws one), with plotters' bitmap backend and DejaVu Sans from the `dejavu` crate: no
//! system font library is needed.

use plotters::coord::combinators::IntoLogRange;
use plotters::prelude::*;
use plotters::style::FontStyle;
use serde_json::Value;
use std::path::Path;
use std::sync::OnceLock;

/// One target's curve: (quantile, delay in µs) pairs, and its percentiles for the legend.
struct Curve {
    name: String,
    cdf: Vec<(f64, f64)>,
    samples: f64,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    p999_us: Option<f64>,
}

/// What the title says about the run.
struct Caption {
    date: String,
    machine: String,
    setup: String,
}

const FONT: &str = "sans-serif";
const WIDTH: u32 = 1600;
const HEIGHT: u32 = 900;
/// Legend entries per row, above the charts (inside them they would hide curves).
const LEGEND_COLUMNS: usize = 2;

fn register_fonts() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .and_then(|()| {
                plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold())
            })
            .map_err(|_| "the embedded DejaVu Sans font did not load".to_string())
    })
    .clone()
}

fn color(name: &str, i: usize) -> RGBColor {
    match name {
        "direct" => RGBColor(60, 60, 60),
        "sluice" => RGBColor(31, 119, 180),
        "sluice-noinspect" => RGBColor(23, 190, 207),
        "nginx" => RGBColor(44, 160, 44),
        "haproxy" => RGBColor(214, 39, 40),
        _ => [
            RGBColor(148, 103, 189),
            RGBColor(255, 127, 14),
            RGBColor(140, 86, 75),
        ][i % 3],
    }
}

/// Sluice's curves a little heavier than the others'.
fn stroke(name: &str) -> u32 {
    if name.starts_with("sluice") {
        3
    } else {
        2
    }
}

/// A delay in µs as an axis label: "20 µs", "1 ms", "1.5 ms".
fn time_label(us: f64) -> String {
    if us >= 1000.0 {
        let ms = us / 1000.0;
        if (ms - ms.round()).abs() < 1e-6 {
            format!("{ms:.0} ms")
        } else {
            format!("{ms} ms")
        }
    } else if us >= 1.0 {
        format!("{us:.0} µs")
    } else {
        format!("{us:.2} µs")
    }
}

/// A delay in µs for the legend: 3 significant figures.
fn short(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else if us >= 1000.0 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

/// `t` on the tail axis is −log10(1 − q): 1 is the 90th percentile, 2 the 99th, 3 the 99.9th.
fn tail_label(t: f64) -> String {
    if t.abs() < 1e-9 {
        return "0%".into();
    }
    let percent = 100.0 * (1.0 - 10f64.powf(-t));
    let decimals = (t.ceil() as usize).saturating_sub(2);
    format!("{percent:.decimals$}%")
}

/// Legend order: the reference first, Sluice next, the others after.
fn rank(name: &str) -> usize {
    ["direct", "sluice", "sluice-noinspect", "nginx", "haproxy"]
        .iter()
        .position(|n| *n == name)
        .unwrap_or(usize::MAX)
}

fn curves(results: &Value) -> Vec<Curve> {
    let Some(targets) = results["targets"].as_object() else {
        return Vec::new();
    };
    let mut curves: Vec<Curve> = targets
        .iter()
        .filter_map(|(name, t)| {
            let latency = &t["latency"];
            let numbers = |v: &Value| -> Vec<f64> {
                v.as_array()
                    .map(|a| a.iter().filter_map(Value::as_f64).collect())
                    .unwrap_or_default()
            };
            let percent = numbers(&latency["cdf"]["percentile"]);
            let delay = numbers(&latency["cdf"]["delay_us"]);
            let cdf: Vec<(f64, f64)> = percent
                .iter()
                .zip(&delay)
                // The log axis needs positive delays: below 10 ns is "no delay" here.
                .map(|(p, us)| (p / 100.0, us.max(0.01)))
                .collect();
            (!cdf.is_empty()).then(|| Curve {
                name: name.clone(),
                cdf,
                samples: latency["samples"].as_f64().unwrap_or(1.0).max(1.0),
                p50_us: latency["p50_us"].as_f64(),
                p99_us: latency["p99_us"].as_f64(),
                p999_us: latency["p999_us"].as_f64(),
            })
        })
        .collect();
    curves.sort_by_key(|c| (rank(&c.name), c.name.clone()));
    curves
}

fn caption(results: &Value) -> Caption {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    // The 1-minute load average.
    let first = |v: &Value| {
        v.as_str()
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or("?")
            .to_string()
    };
    // "2026-11-23T14:46:23+00:00" → "2026-11-23 14:46 UTC".
    let iso = text(&results["date"]);
    let date = match (iso.get(..10), iso.get(11..16), iso.get(19..)) {
        (Some(day), Some(time), Some("+00:00" | "Z")) => format!("{day} {time} UTC"),
        (Some(day), Some(time), Some(zone)) => format!("{day} {time} {zone}"),
        _ => iso.clone(),
    };
    let m = &results["machine"];
    let cpu = text(&m["cpu"]);
    let machine = format!(
        "{} cores{}, {:.0} GiB, Linux {}{}; load average {} at start, {} at the end (the run alone makes about 2)",
        m["nproc"].as_u64().unwrap_or(0),
        if cpu.is_empty() {
            String::new()
        } else {
            format!(" ({cpu})")
        },
        m["mem_total_mib"].as_f64().unwrap_or(0.0) / 1024.0,
        text(&m["kernel"]),
        // Short: the line has the image's width.
        match text(&m["cpu_idle"]) {
            idle if idle.is_empty() => String::new(),
            idle => match idle.strip_prefix("haltpoll, guest_halt_poll_ns ") {
                Some(ns) => format!(", halt poll {ns} ns"),
                None => format!(", idle {idle}"),
            },
        },
        first(&m["loadavg_start"]),
        first(&m["loadavg_end"]),
    );
    let o = &results["options"];
    let number = |v: &Value| v.as_f64().map(|n| n.to_string()).unwrap_or_default();
    let rounds = o["rounds"].as_u64().unwrap_or(0);
    let commit = text(&results["sluice_binary"]["git_commit"]);
    let setup = format!(
        "{}{} streams × {} events/s{}, {} round{} × {} s window per target{}. \
         direct = the harness upstream with no proxy: the harness's own share of every delay.",
        if results["smoke"].as_bool() == Some(true) {
            "SMOKE RUN (tiny, not a measurement). "
        } else {
            ""
        },
        number(&o["latency_streams"]),
        number(&o["rate_events_per_s"]),
        match (
            o["client_tls"].as_bool() == Some(true),
            o["client_h2"].as_bool() == Some(true),
        ) {
            (true, true) => ", HTTP/2 over TLS (direct HTTP/1.1)",
            (true, false) => ", over TLS (direct plain)",
            (false, true) => ", HTTP/2 h2c (direct HTTP/1.1)",
            (false, false) => "",
        },
        rounds,
        if rounds == 1 { "" } else { "s" },
        number(&o["seconds"]),
        match commit.get(..10) {
            Some(c) => format!("; Sluice at {c}"),
            None => String::new(),
        },
    );
    Caption {
        date,
        machine,
        setup,
    }
}

/// Draws the PNG from a results JSON; `Ok(false)` when it has no latency samples.
pub fn write_png(path: &Path, results: &Value) -> Result<bool, String> {
    let curves = curves(results);
    if curves.is_empty() {
        return Ok(false);
    }
    register_fonts()?;
    draw(path, &caption(results), &curves).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(true)
}

/// `--plot FILE.json`: redraws FILE.png from a results file.
pub fn replot(json: &Path) -> Result<std::path::PathBuf, String> {
    let text = std::fs::read_to_string(json).map_err(|e| format!("{}: {e}", json.display()))?;
    let results: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", json.display()))?;
    let png = json.with_extension("png");
    if write_png(&png, &results)? {
        Ok(png)
    } else {
        Err(format!(
            "{}: no latency CDF in it (written before the harness kept one?)",
            json.display()
        ))
    }
}

fn draw(
    path: &Path,
    caption: &Caption,
    curves: &[Curve],
) -> Result<(), Box<dyn std::error::Error>> {
    let lowest = curves
        .iter()
        .filter_map(|c| c.cdf.first().map(|p| p.1))
        .fold(f64::INFINITY, f64::min);
    let highest = curves
        .iter()
        .filter_map(|c| c.cdf.last().map(|p| p.1))
        .fold(0.0, f64::max);
    // Whole decades, so that the axis starts and ends on a labelled tick.
    let x_range = 10f64.powf(lowest.log10().floor())..10f64.powf(highest.log10().ceil());
    let most = curves.iter().map(|c| c.samples).fold(10.0, f64::max);
    let tail_top = most.log10();

    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(96);
    head.draw_text(
        "Sluice load harness — delivery delay per target (latency scenario)",
        &(FONT, 30).into_font().style(FontStyle::Bold).color(&BLACK),
        (24, 14),
    )?;
    head.draw_text(
        &format!("{} · {}", caption.date, caption.machine),
        &(FONT, 21).into_font().color(&BLACK),
        (24, 52),
    )?;
    head.draw_text(
        &caption.setup,
        &(FONT, 17).into_font().color(&RGBColor(90, 90, 90)),
        (24, 76),
    )?;
    let rows = curves.len().div_ceil(LEGEND_COLUMNS);
    let (legend, body) = body.split_vertically(12 + 30 * rows as u32);
    let column = (WIDTH as i32 - 48) / LEGEND_COLUMNS as i32;
    for (i, curve) in curves.iter().enumerate() {
        let c = color(&curve.name, i);
        let x = 24 + column * (i % LEGEND_COLUMNS) as i32;
        let y = 6 + 30 * (i / LEGEND_COLUMNS) as i32;
        legend.draw(&PathElement::new(
            vec![(x, y + 9), (x + 30, y + 9)],
            c.stroke_width(stroke(&curve.name) + 2),
        ))?;
        let p = |v: Option<f64>| v.map(short).unwrap_or_else(|| "—".into());
        let text = format!(
            "{}: p50 {} · p99 {} · p99.9 {}",
            curve.name,
            p(curve.p50_us),
            p(curve.p99_us),
            p(curve.p999_us)
        );
        legend.draw_text(&text, &(FONT, 19).into_font().color(&BLACK), (x + 40, y))?;
    }
    let (left, right) = body.split_horizontally(WIDTH / 2);
    let axis_font = (FONT, 18).into_font();
    let desc_font = (FONT, 20).into_font();
    let x_desc = "delivery delay: client receive − upstream send (log scale)";

    // Left: the whole distribution, percentile 0–100.
    let mut chart = ChartBuilder::on(&left)
        .caption("CDF", (FONT, 24).into_font())
        .margin_left(16)
        .margin_right(24)
        .margin_bottom(12)
        .x_label_area_size(58)
        .y_label_area_size(80)
        .build_cartesian_2d(x_range.clone().log_scale(), 0f64..100f64)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("percentile")
        .x_label_formatter(&|v| time_label(*v))
        .y_label_formatter(&|v| format!("{v:.0}%"))
        .x_labels(12)
        .y_labels(11)
        .label_style(axis_font.clone())
        .axis_desc_style(desc_font.clone())
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(200, 200, 200))
        .draw()?;
    for (i, curve) in curves.iter().enumerate() {
        let c = color(&curve.name, i);
        let width = stroke(&curve.name);
        chart.draw_series(LineSeries::new(
            curve.cdf.iter().map(|&(q, us)| (us, q * 100.0)),
            c.stroke_width(width),
        ))?;
    }

    // Right: the tail, 90% → 99.99…%, each decade of rarity the same height.
    let mut chart = ChartBuilder::on(&right)
        .caption("Tail", (FONT, 24).into_font())
        .margin_left(16)
        .margin_right(28)
        .margin_bottom(12)
        .x_label_area_size(58)
        .y_label_area_size(100)
        .build_cartesian_2d(x_range.log_scale(), 0f64..tail_top)?;
    let tail_ticks = tail_top.floor() as usize + 1;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("percentile (tail scale)")
        .x_label_formatter(&|v| time_label(*v))
        .y_label_formatter(&|v| tail_label(*v))
        .x_labels(12)
        .y_labels(tail_ticks)
        .label_style(axis_font)
        .axis_desc_style(desc_font)
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(200, 200, 200))
        .draw()?;
    for (i, curve) in curves.iter().enumerate() {
        let c = color(&curve.name, i);
        let width = stroke(&curve.name);
        let n = curve.samples;
        // The maximum sits at 1 − 1/n, the finest quantile n samples resolve.
        let points = curve.cdf.iter().map(move |&(q, us)| {
            let rare = (1.0 - q).max(1.0 / n);
            (us, -rare.log10())
        });
        chart.draw_series(LineSeries::new(points, c.stroke_width(width)))?;
    }
    root.present()?;
    Ok(())
}
