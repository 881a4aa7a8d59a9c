//! Medians over the rounds, the markdown tables, the targets and the plots.

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::Result;
use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use super::{
    gateways::Variant,
    traffic::{percentile, Load},
    Measured, Options,
};
use crate::bench::{machine, median};

/// One variant over all its rounds.
struct Summary {
    variant: Variant,
    /// Mpps.
    delivered: f64,
    offered: f64,
    /// CPU ns the gateway spent per delivered packet.
    gateway_ns: f64,
    /// Gbit/s.
    tcp: f64,
    /// µs.
    p50: f64,
    p99: f64,
    /// Per wrk run: median req/s and errors over all rounds.
    loads: Vec<(u32, f64, u64)>,
}

fn summarize(variant: Variant, rounds: &[Measured]) -> Summary {
    let med = |f: &dyn Fn(&Measured) -> f64| median(&mut rounds.iter().map(f).collect::<Vec<_>>());
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    let loads = (0..rounds[0].loads.len())
        .map(|i| {
            let load = |m: &Measured| m.loads[i];
            (
                load(&rounds[0]).connections,
                med(&|m| load(m).requests_per_second),
                rounds.iter().map(|m| load(m).errors).sum(),
            )
        })
        .collect();
    Summary {
        variant,
        delivered: med(&|m| m.pps.delivered / 1e6),
        offered: med(&|m| m.pps.offered / 1e6),
        gateway_ns: med(&|m| m.pps.gateway_ns),
        tcp: med(&|m| m.tcp.bits_per_second / 1e9),
        p50: med(&|m| micros(percentile(&m.rtt, 0.5))),
        p99: med(&|m| micros(percentile(&m.rtt, 0.99))),
        loads,
    }
}

/// One round of one variant, for the progress log.
pub fn one_line(m: &Measured) -> String {
    let mut line = format!(
        "{:.3} Mpps delivered ({:.3} offered, gateway {:.0} ns/packet), TCP {:.2} Gbit/s, RTT p50 {:.0} µs p99 {:.0} µs",
        m.pps.delivered / 1e6,
        m.pps.offered / 1e6,
        m.pps.gateway_ns,
        m.tcp.bits_per_second / 1e9,
        percentile(&m.rtt, 0.5).as_secs_f64() * 1e6,
        percentile(&m.rtt, 0.99).as_secs_f64() * 1e6,
    );
    for Load { connections, requests_per_second, errors, .. } in &m.loads {
        write!(line, ", wrk -c{connections} {requests_per_second:.0} req/s {errors} errors").unwrap();
    }
    line
}

/// Writes dataplane.md and the plots into `dir`; returns the markdown.
pub fn write(dir: &Path, opts: &Options, measured: &[(Variant, Vec<Measured>)]) -> Result<String> {
    let summaries: Vec<Summary> = measured.iter().map(|(v, rounds)| summarize(*v, rounds)).collect();
    let plots = [
        ("dataplane-pps.png", "Small UDP packets delivered to the region (Mpps)", pps_series(&summaries)),
        ("dataplane-tcp.png", "TCP throughput, one iperf3 stream (Gbit/s)", tcp_series(&summaries)),
        ("dataplane-latency.png", "Request/response round trip over one TCP connection (µs)", latency_series(&summaries)),
        ("dataplane-http.png", "wrk, keep-alive HTTP requests (thousand req/s)", http_series(&summaries)),
    ];
    for (file, title, series) in &plots {
        bar_chart(&dir.join(file), title, &summaries, series)?;
    }
    let markdown = markdown(opts, &summaries, &plots.map(|p| p.0));
    std::fs::write(dir.join("dataplane.md"), &markdown)?;
    Ok(markdown)
}

fn markdown(opts: &Options, s: &[Summary], plots: &[&str]) -> String {
    let a = &s[0];
    let ratio = |x: f64, of_a: f64| if of_a > 0.0 { format!("{:.2}", x / of_a) } else { "—".into() };
    let mut text = format!(
        "# Data plane against its peers\n\n\
         Machine: {}.\n\n\
         `cargo xtask bench dataplane`{}: client → gateway → region in network namespaces \
         joined by veth pairs, the same traffic through five gateways, interleaved \
         (A B C D E) × {} round{}, each run on a fresh topology; medians over the rounds.\n\n",
        machine(),
        if opts.quick { " --quick (a check that it runs, not a measurement)" } else { "" },
        opts.rounds,
        if opts.rounds == 1 { "" } else { "s" },
    );
    text += "| | gateway | small UDP delivered (Mpps) | × A | offered (Mpps) | gateway ns/packet | TCP (Gbit/s) | × A |\n\
             |---|---|---:|---:|---:|---:|---:|---:|\n";
    for x in s {
        writeln!(
            text,
            "| {} | {} | {:.3} | {} | {:.3} | {:.0} | {:.2} | {} |",
            x.variant.letter(),
            x.variant.name(),
            x.delivered,
            ratio(x.delivered, a.delivered),
            x.offered,
            x.gateway_ns,
            x.tcp,
            ratio(x.tcp, a.tcp)
        )
        .unwrap();
    }
    let d_p50 = s.iter().find(|x| x.variant == Variant::Routing).map_or(0.0, |d| d.p50);
    text += "\n| | RTT p50 (µs) | RTT p99 (µs) | p50 over D (µs) |";
    let mut rule = String::from("|---|---:|---:|---:|");
    for (connections, ..) in &a.loads {
        write!(text, " wrk -c{connections} (req/s) | × A | errors |").unwrap();
        rule += "---:|---:|---:|";
    }
    writeln!(text, "\n{rule}").unwrap();
    for x in s {
        write!(text, "| {} | {:.1} | {:.1} | {:+.1} |", x.variant.letter(), x.p50, x.p99, x.p50 - d_p50).unwrap();
        for ((_, rps, errors), (_, a_rps, _)) in x.loads.iter().zip(&a.loads) {
            write!(text, " {rps:.0} | {} | {errors} |", ratio(*rps, *a_rps)).unwrap();
        }
        text += "\n";
    }
    text += &targets(s);
    text += "\n";
    for plot in plots {
        writeln!(text, "![{plot}]({plot})").unwrap();
    }
    text
}

/// The targets, measured (not asserted).
fn targets(s: &[Summary]) -> String {
    let get = |v: Variant| s.iter().find(|x| x.variant == v);
    let (Some(a), Some(b), Some(c), Some(d), Some(e)) = (
        get(Variant::Redirector),
        get(Variant::Ovs),
        get(Variant::Nat),
        get(Variant::Routing),
        get(Variant::BareXdp),
    ) else {
        return String::new();
    };
    let verdict = |met: bool| if met { "met" } else { "not met" };
    let mut text = String::from(
        "\n| target | measured, delivered rate | measured, gateway's own cost | |\n|---|---:|---:|---|\n",
    );
    let times = |x: f64, y: f64| format!("{:.1} ×", x / y);
    let percent = |x: f64, y: f64| format!("{:.0} %", 100.0 * x / y);
    let rows = [
        (
            "A ≥ 10 × B, small-packet pps",
            times(a.delivered, b.delivered),
            times(b.gateway_ns, a.gateway_ns),
            a.delivered >= 10.0 * b.delivered,
        ),
        (
            "A ≥ 3 × C, small-packet pps",
            times(a.delivered, c.delivered),
            times(c.gateway_ns, a.gateway_ns),
            a.delivered >= 3.0 * c.delivered,
        ),
        (
            "A ≥ 80 % of E, small-packet pps",
            percent(a.delivered, e.delivered),
            percent(e.gateway_ns, a.gateway_ns),
            a.delivered >= 0.8 * e.delivered,
        ),
        ("latency A over D < 50 µs (p50)", format!("{:+.1} µs", a.p50 - d.p50), String::new(), a.p50 - d.p50 < 50.0),
    ];
    for (target, delivered, own_cost, met) in rows {
        writeln!(text, "| {target} | {delivered} | {own_cost} | {} |", verdict(met)).unwrap();
    }
    text
}

/// Bars per variant: (label, colour, value per summary).
type Series = Vec<(String, RGBColor, Vec<f64>)>;

fn pps_series(s: &[Summary]) -> Series {
    vec![
        ("delivered".into(), BLUE, s.iter().map(|x| x.delivered).collect()),
        ("offered".into(), RGBColor(160, 160, 160), s.iter().map(|x| x.offered).collect()),
    ]
}

fn tcp_series(s: &[Summary]) -> Series {
    vec![("iperf3".into(), BLUE, s.iter().map(|x| x.tcp).collect())]
}

fn latency_series(s: &[Summary]) -> Series {
    vec![
        ("p50".into(), BLUE, s.iter().map(|x| x.p50).collect()),
        ("p99".into(), RED, s.iter().map(|x| x.p99).collect()),
    ]
}

fn http_series(s: &[Summary]) -> Series {
    let colours = [BLUE, RED, GREEN];
    (0..s[0].loads.len())
        .map(|i| {
            let label = format!("{} connections", s[0].loads[i].0);
            (label, colours[i % colours.len()], s.iter().map(|x| x.loads[i].1 / 1e3).collect())
        })
        .collect()
}

/// Grouped bars, one group per variant, each bar labelled with its value:
/// the slowest variant's bars stay readable next to the fastest's.
fn bar_chart(path: &Path, title: &str, s: &[Summary], series: &Series) -> Result<()> {
    let root = BitMapBackend::new(path, (1000, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = series.iter().flat_map(|(_, _, v)| v.iter().copied()).fold(0.0f64, f64::max) * 1.15;
    let top = if top > 0.0 { top } else { 1.0 };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..(s.len() as f64 - 0.5), 0f64..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(s.len())
        .x_label_formatter(&|x| s.get(x.round() as usize).map_or(String::new(), |x| x.variant.short().into()))
        .draw()?;
    let width = 0.8 / series.len() as f64;
    let label_style = TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Left, VPos::Bottom));
    for (j, (label, colour, values)) in series.iter().enumerate() {
        let left = |i: usize| i as f64 - 0.4 + j as f64 * width;
        chart
            .draw_series(values.iter().enumerate().map(|(i, v)| {
                Rectangle::new([(left(i), 0.0), (left(i) + width * 0.9, *v)], colour.filled())
            }))?
            .label(label.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
        chart.draw_series(values.iter().enumerate().map(|(i, v)| {
            Text::new(figure(*v), (left(i), *v), label_style.clone())
        }))?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// Three significant figures or so.
fn figure(v: f64) -> String {
    match v {
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 10.0 => format!("{v:.1}"),
        v => format!("{v:.2}"),
    }
}
