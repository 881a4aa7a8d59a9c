//! Medians over the rounds, the markdown tables, the targets and the plots.

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::Result;
use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use super::{
    gateways::Variant,
    pps::PacketRate,
    traffic::Load,
    Measured, Options,
};
use crate::bench::{machine, median, percentile};

/// Small UDP packets, one variant over all its rounds.
struct Rate {
    /// Mpps.
    delivered: f64,
    offered: f64,
    /// CPU ns the gateway spent per delivered packet.
    gateway_ns: f64,
}

impl Rate {
    /// Mpps one core of gateway would forward: 1 / gateway_ns.
    fn per_core(&self) -> f64 {
        1e3 / self.gateway_ns
    }

    /// Delivered close to offered: the generator, not the gateway, set the
    /// rate.
    fn generator_bound(&self) -> bool {
        self.delivered >= 0.9 * self.offered
    }
}

/// One variant over all its rounds.
struct Summary {
    variant: Variant,
    pps: Rate,
    /// Over IPv6, for the variants measured over both families.
    pps6: Option<Rate>,
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
    let rate = |pps: &dyn Fn(&Measured) -> PacketRate| Rate {
        delivered: med(&|m| pps(m).delivered / 1e6),
        offered: med(&|m| pps(m).offered / 1e6),
        gateway_ns: med(&|m| pps(m).gateway_ns),
    };
    let pps6 = rounds
        .iter()
        .all(|m| m.pps6.is_some())
        .then(|| rate(&|m| m.pps6.expect("checked above")));
    Summary {
        variant,
        pps: rate(&|m| m.pps),
        pps6,
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
    if let Some(pps6) = m.pps6 {
        write!(
            line,
            ", IPv6 {:.3} Mpps delivered ({:.3} offered, gateway {:.0} ns/packet)",
            pps6.delivered / 1e6,
            pps6.offered / 1e6,
            pps6.gateway_ns
        )
        .unwrap();
    }
    for Load { connections, requests_per_second, errors, .. } in &m.loads {
        write!(line, ", wrk -c{connections} {requests_per_second:.0} req/s {errors} errors").unwrap();
    }
    line
}

/// Writes dataplane.md and the plots into `dir`; returns the markdown.
pub fn write(dir: &Path, opts: &Options, measured: &[(Variant, Vec<Measured>)]) -> Result<String> {
    let summaries: Vec<Summary> = measured.iter().map(|(v, rounds)| summarize(*v, rounds)).collect();
    let plots = [
        ("dataplane-pps.png", "Small UDP packets through the gateway (Mpps)", pps_series(&summaries)),
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
         joined by veth pairs, the same traffic through six gateways, interleaved \
         (A B C D E F) × {} round{}, each run on a fresh topology; medians over the rounds. \
         How each gateway is set up and how each figure is measured: below the tables.\n\n",
        machine(),
        if opts.quick { " --quick (a check that it runs, not a measurement)" } else { "" },
        opts.rounds,
        if opts.rounds == 1 { "" } else { "s" },
    );
    text += "| | gateway | small UDP delivered (Mpps) | × A | offered (Mpps) | gateway CPU per packet (ns) | one gateway core (Mpps) | × A | TCP (Gbit/s) | × A |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    let mark = |r: &Rate| if r.generator_bound() { " †" } else { "" };
    for x in s {
        writeln!(
            text,
            "| {} | {} | {:.3}{} | {} | {:.3} | {:.0} | {:.2} | {} | {:.2} | {} |",
            x.variant.letter(),
            x.variant.name(),
            x.pps.delivered,
            mark(&x.pps),
            ratio(x.pps.delivered, a.pps.delivered),
            x.pps.offered,
            x.pps.gateway_ns,
            x.pps.per_core(),
            ratio(x.pps.per_core(), a.pps.per_core()),
            x.tcp,
            ratio(x.tcp, a.tcp)
        )
        .unwrap();
    }
    if let Some(a6) = &a.pps6 {
        text += "\nIPv6, the same small UDP packets (62-byte frames, the smallest IPv6 UDP frame) to the \
                 IPv6 VIP (A, C) or the region's IPv6 address (D):\n\n\
                 | | gateway | small UDP delivered (Mpps) | × A | offered (Mpps) | gateway CPU per packet (ns) | over IPv4 (ns) | one gateway core (Mpps) | × A |\n\
                 |---|---|---:|---:|---:|---:|---:|---:|---:|\n";
        for (x, x6) in s.iter().filter_map(|x| Some((x, x.pps6.as_ref()?))) {
            writeln!(
                text,
                "| {} | {} | {:.3}{} | {} | {:.3} | {:.0} | {:+.0} | {:.2} | {} |",
                x.variant.letter(),
                x.variant.name(),
                x6.delivered,
                mark(x6),
                ratio(x6.delivered, a6.delivered),
                x6.offered,
                x6.gateway_ns,
                x6.gateway_ns - x.pps.gateway_ns,
                x6.per_core(),
                ratio(x6.per_core(), a6.per_core()),
            )
            .unwrap();
        }
    }
    if s.iter().flat_map(|x| std::iter::once(&x.pps).chain(&x.pps6)).any(Rate::generator_bound) {
        text += "\n† delivered ≥ 90 % of offered: the generator's core, not the gateway, set this rate.\n";
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
    text += &method(opts);
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
        "\n| target | delivered rate | | one gateway core | |\n|---|---:|---|---:|---|\n",
    );
    // (target, A's figure over the peer's that the target bounds below)
    let pps = [("A ≥ 10 × B, small-packet pps", b, 10.0), ("A ≥ 3 × C, small-packet pps", c, 3.0), ("A ≥ 80 % of E, small-packet pps", e, 0.8)];
    for (target, peer, at_least) in pps {
        let both = [(Some(&a.pps), Some(&peer.pps), ""), (a.pps6.as_ref(), peer.pps6.as_ref(), ", IPv6")];
        for (ours, theirs, family) in both {
            let (Some(ours), Some(theirs)) = (ours, theirs) else {
                continue;
            };
            let (delivered, per_core) = (ours.delivered / theirs.delivered, ours.per_core() / theirs.per_core());
            let figure = |r: f64| if at_least < 1.0 { format!("{:.0} %", 100.0 * r) } else { format!("{r:.2} ×") };
            writeln!(
                text,
                "| {target}{family} | {} | {} | {} | {} |",
                figure(delivered),
                verdict(delivered >= at_least),
                figure(per_core),
                verdict(per_core >= at_least)
            )
            .unwrap();
        }
    }
    let added = a.p50 - d.p50;
    writeln!(text, "| latency A over D < 50 µs (p50) | {added:+.1} µs | {} | | |", verdict(added < 50.0)).unwrap();
    if let Some(f) = get(Variant::RedirectorGeneric) {
        writeln!(
            text,
            "\nGeneric mode (F), small-packet pps: {:.0} % of A delivered ({:.0} % per gateway core), \
             {:.2} × C ({:.2} × per core), {:.2} × D ({:.2} × per core); latency {:+.1} µs over D (p50).",
            100.0 * f.pps.delivered / a.pps.delivered,
            100.0 * f.pps.per_core() / a.pps.per_core(),
            f.pps.delivered / c.pps.delivered,
            f.pps.per_core() / c.pps.per_core(),
            f.pps.delivered / d.pps.delivered,
            f.pps.per_core() / d.pps.per_core(),
            f.p50 - d.p50
        )
        .unwrap();
    }
    text
}

fn method(opts: &Options) -> String {
    let conntrack_max = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .map_or_else(|_| "?".into(), |v| v.trim().to_string());
    let loads: Vec<String> = opts.loads.iter().map(|(c, secs)| format!("`-c{c}` for {secs} s")).collect();
    format!(
        "\n## How\n\n\
         - **Topology**: client 10.0.0.2 — gateway — region 10.1.0.2, one veth pair each side; the \
         endpoints send full checksums (tx offload off) and run GRO. A, B and C serve at the VIP \
         {vip} (the client's default route leads to the gateway); D and E are sent the region's \
         own address. GRO is on on the gateway's veths in A, C, D and E (a NIC's default; it also \
         gives a veth the NAPI that XDP-sent frames need), off in B (below).\n\
         - **A**: the data plane in native XDP on both gateway veths, one service per port the \
         traffic uses (UDP 9, TCP 7, 5201, 80), all steered to the region; replies are rewritten \
         back to the VIP.\n\
         - **B**: Open vSwitch 3.1 with the userspace datapath (`datapath_type=netdev`, \
         `fail_mode=secure`), ovsdb-server and ovs-vswitchd run in the gateway's namespace with \
         private files; the two veths are its ports, with no address, and checksum offload and \
         GRO off (a userspace switch forwards partial checksums and GRO's 64 KB aggregates as they \
         are). The reference's flows, installed with `ovs-ofctl`: \
         `priority=100,ip,in_port=1,nw_dst={vip},actions=set_field:<region MAC>->eth_dst,set_field:10.1.0.2->ip_dst,output:2` \
         and `priority=100,ip,in_port=2,nw_src=10.1.0.2,actions=set_field:<VIP MAC>->eth_src,set_field:{vip}->ip_src,output:1`; \
         nothing else passes. As on the reference's single LAN, the hosts find each other by \
         static neighbour entries: the client's next hop has the VIP's MAC, the region's the \
         client's MAC.\n\
         - **C**: nftables in the gateway: `ip daddr {vip} dnat to 10.1.0.2` in a `nat` chain on \
         `prerouting` (priority `dstnat`); conntrack turns the replies' source back into the VIP. \
         No SNAT: the region routes back through the gateway and, as with A and B, sees the \
         client's own address. `nf_conntrack_max` = {conntrack_max} (the kernel's default, \
         unchanged; the largest wrk run holds {connections} connections).\n\
         - **D**: `ip_forward=1`, nothing else. **E**: `bare_forward` \
         (redirector-ebpf/src/bin/baseline.rs) in native XDP on both veths: Ethernet and IPv4 \
         parsed, `bpf_fib_lookup` on every packet, MACs set, `bpf_redirect`; no flow state, no \
         rewrite. **F**: A's program and services in generic XDP (`xdp_mode = \"generic\"`), as \
         on a driver without XDP: it runs after the kernel has built an skb for each packet, and \
         a redirect goes out through the stack's transmit path.\n\
         - **Small UDP packets**: 60-byte frames (64 on a wire) from the kernel's \
         BPF_PROG_TEST_RUN in live-frames mode on the client's veth (`udp_generator`): frames \
         leave from a recycled page pool with no socket, skb or copy, ~100 ns each, so it \
         outruns every gateway here (xdp-trafficgen does not run on this kernel; a sendmmsg \
         sender pays a whole UDP stack per packet). A veth delivers in the sender's softirq, so \
         the gateway's client-side veth and the region's run threaded NAPI: the gateway's thread \
         does all its work on a packet (receive, its program or the kernel's forwarding path, \
         handing it to the region's veth) and is pinned, with B's daemons, to CPU 1; the \
         generator and the region's thread (real-time priority, so its ring never overflows and \
         wastes the gateway's work; it drops the frames in XDP, `udp_discard`) share CPU 0. \
         {warm} s warm-up, then {window} s counted. Delivered: frames the region's veth \
         received. Gateway CPU per packet: CPU time of the gateway's NAPI thread (and B's \
         daemons) over the window, per delivered frame; one gateway core = 1 / that, what the \
         gateway would forward with a core to itself. The delivered rate depends on what else \
         runs on the two cores; the CPU cost much less.\n\
         - **IPv6** (A, C, D): the same test with 62-byte frames (`udp6_generator`) from \
         {client6} to the VIP {vip6} (A: its IPv6 services; C: `ip6 daddr {vip6} dnat to {region6}` \
         in an `ip6` table beside the `ip` one) or to the region's {region6} (D: \
         `net.ipv6.conf.all.forwarding=1`). B's reference flows and E match IPv4 only.\n\
         - **Latency**: a 64-byte echo over one TCP connection (`TCP_NODELAY`), {trips} round \
         trips after {warm_trips} unmeasured, client and server on one core (a wake-up across \
         cores costs this VM tens of µs at random).\n\
         - **TCP**: `iperf3`, one stream, {iperf} s. **HTTP**: `wrk -t2 --timeout 5s` {loads} \
         against the project's region-http (keep-alive); errors = wrk's connect, read, write and \
         timeout errors plus non-2xx answers, summed over the rounds. Somaxconn and the SYN \
         backlog are 65535 in the region, the client's port range 1024–65535.\n\
         - **Two cores for everything**: the clients, the servers and the gateway share them, so \
         TCP and HTTP figures are set by the endpoints as much as by the gateway.\n",
        vip = super::gateways::VIP,
        vip6 = super::gateways::VIP6,
        client6 = crate::topology::CLIENT_ADDR6,
        region6 = crate::topology::region_addr6(1),
        warm = opts.pps.warm_up.as_secs_f64(),
        window = opts.pps.length.as_secs_f64(),
        trips = opts.round_trips,
        warm_trips = opts.round_trips / 10,
        iperf = opts.iperf_seconds,
        loads = loads.join(" and "),
        connections = opts.loads.iter().map(|l| l.0).max().unwrap_or(0),
    )
}

/// Bars per variant: (label, colour, value per summary).
type Series = Vec<(String, RGBColor, Vec<f64>)>;

fn pps_series(s: &[Summary]) -> Series {
    vec![
        ("delivered".into(), BLUE, s.iter().map(|x| x.pps.delivered).collect()),
        ("one gateway core (1 / CPU per packet)".into(), RGBColor(90, 160, 90), s.iter().map(|x| x.pps.per_core()).collect()),
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
    // Headroom above the tallest bar for the legend.
    let top = series.iter().flat_map(|(_, _, v)| v.iter().copied()).fold(0.0f64, f64::max) * 1.35;
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
        .light_line_style(WHITE)
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
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperMiddle)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
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
