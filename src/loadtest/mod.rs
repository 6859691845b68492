//! The load harness (issue 5): drives the real gateway binary on 127.0.0.1 and measures it.
//!
//! Belongs here: the options (`gbrelay bench`), the run's timeline (start the gateway, open
//! receivers, stagger sources and viewers, warm up, measure a steady window, then the first-frame
//! scenarios), aggregation and the report. The parts live in submodules: `schedule` (PS → shared RTP
//! payloads and pacing), `source` (RTP senders), `viewer` (FLV/WS/HLS clients), `flv` and `http`
//! (client-side parsing), `gateway` (child process, config, REST), `procfs` and `stats`
//! (measurements). Does not belong: anything the gateway itself runs; the harness talks to it only
//! through its documented interfaces (config file, `/healthz`, `/api/v1/rtp`, play URLs, `/metrics`).
//!
//! The gateway's figures come from its own `/proc/<pid>` entries, so the harness's processes are
//! never counted in them; the harness's own CPU and the machine's busy share are reported beside.

pub mod devices;
pub mod flv;
pub mod gateway;
pub mod http;
pub mod procfs;
pub mod schedule;
pub mod source;
pub mod stats;
pub mod ts;
pub mod viewer;

mod report;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

pub use report::*;

use gateway::{Gateway, GatewayConfig, GatewayError};
use schedule::{Schedule, ScheduleError};
use source::{SourceStats, Target};
use viewer::{SourceClock, ViewerProto, ViewerResult, ViewerSpec};

/// Viewer protocol choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Flv,
    Ws,
    Hls,
    /// Alternate HTTP-FLV and HLS viewers (the mixed scenario).
    Mixed,
}

/// How sources reach the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// UDP to the shared port (`rtp_port`), streams told apart by SSRC.
    Udp,
    /// UDP, one pool port per stream (`port: 0`).
    UdpPool,
    /// TCP, the source connects to the gateway's shared port (RFC 4571 framing).
    TcpPassive,
    /// TCP, the gateway connects to the source's listening port.
    TcpActive,
}

impl Transport {
    fn api_name(self) -> &'static str {
        match self {
            Transport::Udp | Transport::UdpPool => "udp",
            Transport::TcpPassive => "tcp-passive",
            Transport::TcpActive => "tcp-active",
        }
    }
}

/// What the sources are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Media-only receivers opened with `POST /api/v1/rtp`.
    Rtp,
    /// Simulated GB/T 28181 devices that register and answer INVITEs (`crate::sim`).
    Sip,
}

/// Parse "30s", "500ms", "2m", "1h" or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let v: f64 = num.parse().map_err(|_| format!("{s:?}: expected a number with ms, s, m or h"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Options of a run (`gbrelay bench …`).
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct BenchOptions {
    /// The gateway binary to start (when missing and the harness runs as `gbrelay bench`: itself).
    #[arg(long, default_value = "target/release/gbrelay")]
    pub gateway_bin: PathBuf,
    /// Number of streams (sources).
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Viewers on every stream.
    #[arg(long, default_value_t = 1)]
    pub viewers_per_stream: usize,
    /// Extra viewers all on the first stream (fan-out).
    #[arg(long, default_value_t = 0)]
    pub viewers_on_one: usize,
    /// Viewer protocol.
    #[arg(long, value_enum, default_value = "flv")]
    pub protocol: Protocol,
    /// RTP transport of the sources.
    #[arg(long, value_enum, default_value = "udp")]
    pub transport: Transport,
    /// Media-only receivers (rtp) or simulated devices (sip).
    #[arg(long, value_enum, default_value = "rtp")]
    pub mode: Mode,
    /// Length of the measured steady window.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_secs")]
    pub duration: Duration,
    /// Time after the last source started before measuring.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_secs")]
    pub warmup: Duration,
    /// Sources start spread over this time (and viewers on one stream too).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    #[serde(serialize_with = "ser_secs")]
    pub stagger: Duration,
    /// The MPEG-PS sample every source sends (looped).
    #[arg(long, default_value = "testdata/h264_aac.ps")]
    pub media: PathBuf,
    /// First-frame scenario (a): this many sequential HTTP-FLV joins of a running stream.
    #[arg(long, default_value_t = 0)]
    pub join_running: usize,
    /// First-frame scenario (b): a viewer waits on a new stream before its source starts.
    #[arg(long)]
    pub join_before: bool,
    /// `--mode sip`: channels per simulated device (1: one IPC per stream; more: NVRs).
    #[arg(long, default_value_t = 1)]
    pub channels_per_device: usize,
    /// The gateway's log level (its `[log] level`).
    #[arg(long, default_value = "warn")]
    pub gateway_log: String,
    /// Also write the report as JSON to this file ("-": stdout, after the table).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep the run directory (config, gateway log, store) instead of deleting it.
    #[arg(long)]
    pub keep: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            gateway_bin: "target/release/gbrelay".into(),
            streams: 1,
            viewers_per_stream: 1,
            viewers_on_one: 0,
            protocol: Protocol::Flv,
            transport: Transport::Udp,
            mode: Mode::Rtp,
            duration: Duration::from_secs(30),
            warmup: Duration::from_secs(5),
            stagger: Duration::from_secs(2),
            media: "testdata/h264_aac.ps".into(),
            join_running: 0,
            join_before: false,
            channels_per_device: 1,
            gateway_log: "warn".into(),
            json: None,
            keep: false,
        }
    }
}

fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Why a run could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    #[error("bad options: {0}")]
    Options(String),
    #[error("reading the media sample {path}: {source}")]
    Media { path: PathBuf, source: std::io::Error },
    #[error("the media sample {path} cannot be sent: {source}")]
    Schedule { path: PathBuf, source: ScheduleError },
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error("the gateway process died during the run; log tail:\n{0}")]
    GatewayDied(String),
}

struct StreamRun {
    /// `rtp`: the receiver's name (for DELETE); `sip`: the channel ID.
    name: String,
    /// Play path without suffix: `/live/rtp/<name>` or `/live/<device>/<channel>`.
    base_path: String,
    stats: Arc<SourceStats>,
    /// `sip`: when the device received the INVITE.
    invited: Option<Arc<std::sync::OnceLock<Instant>>>,
}

/// Where the streams come from.
enum Sources {
    /// Media-only receivers, one target per stream (sent by `source::run`).
    Rtp(Vec<Target>),
    /// Simulated devices pulled on demand.
    Sip(devices::Fleet),
}

fn viewer_proto(p: Protocol, i: usize) -> ViewerProto {
    match p {
        Protocol::Flv => ViewerProto::Flv,
        Protocol::Ws => ViewerProto::Ws,
        Protocol::Hls => ViewerProto::Hls,
        Protocol::Mixed if i % 2 == 1 => ViewerProto::Hls,
        Protocol::Mixed => ViewerProto::Flv,
    }
}

/// Open one media-only receiver and make its source's target.
async fn open_source(
    gw: &Gateway,
    opts: &BenchOptions,
    name: &str,
    ssrc: u32,
) -> Result<Target, GatewayError> {
    let tr = opts.transport;
    let io = |what: &str| {
        let what = what.to_string();
        move |source| GatewayError::Io { what, source }
    };
    match tr {
        Transport::Udp | Transport::TcpPassive => {
            let port = gw.open_rtp(name, tr.api_name(), gw.cfg.rtp_port, Some(ssrc), None).await?;
            let addr = ([127, 0, 0, 1], port).into();
            Ok(if tr == Transport::Udp { Target::Udp(addr) } else { Target::TcpConnect(addr) })
        }
        Transport::UdpPool => {
            let port = gw.open_rtp(name, "udp", 0, Some(ssrc), None).await?;
            Ok(Target::Udp(([127, 0, 0, 1], port).into()))
        }
        Transport::TcpActive => {
            // The gateway connects to us: we listen first and give it our address as `peer`.
            let l =
                tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(io("listen for TCP active"))?;
            let peer = l.local_addr().map_err(io("listener address"))?;
            gw.open_rtp(name, "tcp-active", gw.cfg.rtp_port, Some(ssrc), Some(peer)).await?;
            Ok(Target::TcpListen(l))
        }
    }
}

struct Sampler {
    tck: u64,
    pid: u32,
    at: Instant,
    gw_ticks: u64,
    self_ticks: u64,
    machine: (u64, u64),
}

impl Sampler {
    fn take(pid: u32, tck: u64) -> Option<Sampler> {
        Some(Sampler {
            tck,
            pid,
            at: Instant::now(),
            gw_ticks: procfs::cpu_ticks(Some(pid)).ok()?,
            self_ticks: procfs::cpu_ticks(None).ok()?,
            machine: procfs::machine().ok()?.0,
        })
    }
}

/// What `gbrelay bench` runs: [`run`], then the table on stdout and the JSON where `--json` says.
pub async fn run_and_print(opts: BenchOptions) -> Result<BenchReport, BenchError> {
    let json = opts.json.clone();
    let report = run(opts).await?;
    println!("{report}");
    match json.as_deref() {
        Some(p) if p == std::path::Path::new("-") => println!("{}", report.to_json()),
        Some(p) => std::fs::write(p, report.to_json() + "\n")
            .map_err(|source| BenchError::Options(format!("writing {}: {source}", p.display())))?,
        None => {}
    }
    Ok(report)
}

/// Run one benchmark and return its report (the caller prints it: `Display` is a table,
/// [`BenchReport::to_json`] the JSON).
pub async fn run(opts: BenchOptions) -> Result<BenchReport, BenchError> {
    if opts.streams == 0 && (opts.join_running > 0 || opts.viewers_on_one > 0) {
        return Err(BenchError::Options(
            "--join-running and --viewers-on-one need at least one stream".into(),
        ));
    }
    let data = std::fs::read(&opts.media)
        .map_err(|source| BenchError::Media { path: opts.media.clone(), source })?;
    let probe = Schedule::build(&data, 1)
        .map_err(|source| BenchError::Schedule { path: opts.media.clone(), source })?;
    let ff_phase = Duration::from_millis(400) * opts.join_running as u32
        + Duration::from_secs(if opts.join_before { 15 } else { 0 });
    let total = opts.stagger + opts.warmup + opts.duration + ff_phase + Duration::from_secs(5);
    let loops = Schedule::loops_for(probe.loop_duration, total);
    let sched = Arc::new(
        Schedule::build(&data, loops)
            .map_err(|source| BenchError::Schedule { path: opts.media.clone(), source })?,
    );
    drop(probe);

    let uses_pool = opts.transport == Transport::UdpPool;
    let dir =
        std::env::temp_dir().join(format!("gbrelay-bench-{}-{}", std::process::id(), rand::random::<u32>()));
    let cfg = GatewayConfig {
        sip: ([127, 0, 0, 1], gateway::free_port_pair()?).into(),
        http: ([127, 0, 0, 1], gateway::free_port_pair()?).into(),
        rtp_port: gateway::free_port_pair()?,
        pool: if uses_pool { Some(gateway::free_range(opts.streams as u16 + 16)?) } else { None },
        transport: opts.transport.api_name(),
        dir: dir.clone(),
        log_level: opts.gateway_log.clone(),
    };
    tracing::info!(?cfg, "starting the gateway");
    let mut gw = Gateway::start(&gateway_bin(&opts.gateway_bin), cfg, Duration::from_secs(15)).await?;
    let result = drive(&opts, &mut gw, sched).await;
    let log_tail = gw.log_tail();
    let alive = gw.alive();
    let exit = gw.stop(Duration::from_secs(5)).await;
    if !opts.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let mut report = result?;
    if !alive {
        return Err(BenchError::GatewayDied(log_tail));
    }
    report.gateway.clean_exit = exit.map(|s| s.success());
    report.run_dir = opts.keep.then(|| dir.display().to_string());
    Ok(report)
}

/// The gateway binary: the given path; when it does not exist and this process is itself `gbrelay`
/// (`gbrelay bench`), this executable.
fn gateway_bin(given: &std::path::Path) -> PathBuf {
    if !given.exists() {
        if let Ok(me) = std::env::current_exe() {
            if me.file_name().is_some_and(|n| n == "gbrelay") {
                return me;
            }
        }
    }
    given.to_path_buf()
}

async fn drive(
    opts: &BenchOptions,
    gw: &mut Gateway,
    sched: Arc<Schedule>,
) -> Result<BenchReport, BenchError> {
    let tck = procfs::clk_tck();
    let (_, cpus) = procfs::machine().unwrap_or(((0, 0), 1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle = procfs::rss_kib(gw.pid).ok();
    let mut errors: BTreeMap<String, u32> = BTreeMap::new();
    let mut note = |e: String| *errors.entry(e).or_default() += 1;

    // Open every receiver, or register every device, first (not part of the measured window).
    let k = opts.streams;
    let mut streams = Vec::with_capacity(k);
    let mut sources = match opts.mode {
        Mode::Rtp => {
            let mut targets = Vec::with_capacity(k);
            for i in 0..k {
                let name = format!("bench{i}");
                let target = open_source(gw, opts, &name, 1_000_000 + i as u32).await?;
                targets.push(target);
                let base_path = format!("/live/rtp/{name}");
                streams.push(StreamRun {
                    name,
                    base_path,
                    stats: Arc::new(SourceStats::default()),
                    invited: None,
                });
            }
            Sources::Rtp(targets)
        }
        Mode::Sip => {
            // One more channel, kept idle, for the join-before scenario.
            let n = k + usize::from(opts.join_before);
            let mut fleet = devices::start(gw, gw.cfg.sip, &opts.media, n, opts.channels_per_device).await?;
            for d in fleet.streams.drain(..) {
                streams.push(StreamRun {
                    base_path: format!("/live/{}/{}", d.device, d.channel),
                    name: d.channel,
                    stats: d.stats,
                    invited: Some(d.invited),
                });
            }
            Sources::Sip(fleet)
        }
    };
    let reserved = if opts.mode == Mode::Sip && opts.join_before { streams.pop() } else { None };

    let (stop_tx, stop_rx) = watch::channel(false);
    let t0 = Instant::now() + Duration::from_millis(200);
    let window_start = t0 + opts.stagger + opts.warmup;
    let window_end = window_start + opts.duration;
    let source_end = window_end + Duration::from_secs(3600);
    let mut source_tasks = Vec::with_capacity(k);
    let starts: Vec<Instant> =
        (0..k).map(|i| t0 + opts.stagger.mul_f64(i as f64 / k.max(1) as f64)).collect();
    match &mut sources {
        Sources::Rtp(targets) => {
            for (i, target) in targets.drain(..).enumerate() {
                source_tasks.push(tokio::spawn(source::run(
                    sched.clone(),
                    target,
                    1_000_000 + i as u32,
                    starts[i],
                    source_end,
                    streams[i].stats.clone(),
                    stop_rx.clone(),
                )));
            }
        }
        Sources::Sip(_) => {
            // Devices stream when pulled. A stream no viewer pulls is started through the API.
            for (i, s) in streams.iter().enumerate() {
                let pulled = opts.viewers_per_stream > 0 || (i == 0 && opts.viewers_on_one > 0);
                if !pulled {
                    let (addr, at) = (gw.cfg.http, starts[i]);
                    let path = format!("/api/v1/streams{}", &s.base_path["/live".len()..]);
                    source_tasks.push(tokio::spawn(async move {
                        tokio::time::sleep_until(at).await;
                        let _ = http::request(addr, "POST", &path, None, Duration::from_secs(15)).await;
                    }));
                }
            }
        }
    }
    let sent_now = |streams: &[StreamRun], sources: &Sources| match sources {
        Sources::Rtp(_) => sent_totals(streams),
        Sources::Sip(f) => f.sent(),
    };

    // Viewers: per stream, then the fan-out ones on stream 0.
    let mut viewer_tasks = Vec::new();
    let mut vi = 0usize;
    let mut spawn_viewer = |stream: usize, start: Instant, proto: ViewerProto| {
        let spec = ViewerSpec {
            proto,
            addr: gw.cfg.http,
            base_path: streams[stream].base_path.clone(),
            start,
            end: Some(window_end),
            window_start,
            source: SourceClock { schedule: sched.clone(), started: streams[stream].stats.clone() },
        };
        viewer_tasks.push((proto, stream, tokio::spawn(viewer::run(spec))));
    };
    for (s, start) in starts.iter().enumerate() {
        for j in 0..opts.viewers_per_stream {
            let at = *start + Duration::from_millis(300 + 20 * j as u64);
            spawn_viewer(s, at, viewer_proto(opts.protocol, vi));
            vi += 1;
        }
    }
    for j in 0..opts.viewers_on_one {
        let at = starts[0]
            + Duration::from_millis(300)
            + opts.stagger.mul_f64(j as f64 / opts.viewers_on_one as f64);
        spawn_viewer(0, at, viewer_proto(opts.protocol, vi));
        vi += 1;
    }
    let viewers_total = viewer_tasks.len();

    // Steady window.
    tokio::time::sleep_until(window_start).await;
    if !gw.alive() {
        return Err(BenchError::GatewayDied(gw.log_tail()));
    }
    let m0 = gw.scrape().await.map_err(|e| note(format!("/metrics at window start: {e}"))).ok();
    let s0 = Sampler::take(gw.pid, tck);
    let sent0: (u64, u64) = sent_now(&streams, &sources);
    let mut rss = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while Instant::now() + Duration::from_millis(10) < window_end {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::time::sleep_until(window_end) => break,
        }
        if let Ok(r) = procfs::rss_kib(gw.pid) {
            rss.push(r);
        }
    }
    let s1 = Sampler::take(gw.pid, tck);
    let sent1 = sent_now(&streams, &sources);
    let m1 = gw.scrape().await.map_err(|e| note(format!("/metrics at window end: {e}"))).ok();

    let mut results: Vec<(ViewerProto, ViewerResult)> = Vec::with_capacity(viewers_total);
    // sip: INVITE received by the device → first keyframe at the stream's first viewer.
    let mut first_seen: Vec<Option<Instant>> = vec![None; streams.len()];
    for (p, stream, t) in viewer_tasks {
        match t.await {
            Ok(r) => {
                if let Some(at) = r.first_key_at {
                    let f = &mut first_seen[stream];
                    *f = Some(f.map_or(at, |x| x.min(at)));
                }
                results.push((p, r));
            }
            Err(e) => note(format!("viewer task: {e}")),
        }
    }
    let invite_to_key: Vec<Duration> = streams
        .iter()
        .zip(&first_seen)
        .filter_map(|(s, seen)| Some(seen.as_ref()?.saturating_duration_since(*s.invited.as_ref()?.get()?)))
        .collect();

    // First-frame scenario (a): joins of running stream 0.
    let join_running = if opts.join_running > 0 {
        let mut joins = Vec::with_capacity(opts.join_running);
        for _ in 0..opts.join_running {
            let spec = ViewerSpec {
                proto: ViewerProto::Flv,
                addr: gw.cfg.http,
                base_path: streams[0].base_path.clone(),
                start: Instant::now(),
                end: None,
                window_start: Instant::now() + Duration::from_secs(3600),
                source: SourceClock { schedule: sched.clone(), started: streams[0].stats.clone() },
            };
            joins.push(viewer::run(spec).await);
            // Land the next join at another point of the GOP.
            tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 200 + 37)).await;
        }
        Some(JoinRunning::from_results(&joins))
    } else {
        None
    };

    // First-frame scenario (b): the viewer is waiting before the source sends anything.
    let join_before = match (opts.join_before, reserved) {
        (false, _) => None,
        (true, Some(dev)) => Some(join_before_sip(gw, &sched, dev).await),
        (true, None) => Some(join_before(opts, gw, &sched, stop_rx.clone()).await),
    };

    let _ = stop_tx.send(true);
    for t in source_tasks {
        let _ = t.await;
    }
    for s in &streams {
        if let Some(e) = s.stats.error.get() {
            note(format!("source: {e}"));
        }
    }
    match sources {
        Sources::Rtp(_) => {
            for s in &streams {
                if let Err(e) = gw.close_rtp(&s.name).await {
                    note(format!("DELETE /api/v1/rtp: {e}"));
                    break;
                }
            }
        }
        Sources::Sip(fleet) => fleet.stop().await,
    }
    for (_, r) in &results {
        if let Some(e) = &r.error {
            note(format!("viewer: {e}"));
        }
    }

    let window = match (&s0, &s1) {
        (Some(a), Some(b)) => b.at - a.at,
        _ => opts.duration,
    };
    let (gw_cpu, harness_cpu, busy) = match (&s0, &s1) {
        (Some(a), Some(b)) => (
            Some(procfs::cpu_percent(a.gw_ticks, b.gw_ticks, a.tck, window)),
            Some(procfs::cpu_percent(a.self_ticks, b.self_ticks, a.tck, window)),
            Some(procfs::busy_percent(a.machine, b.machine)),
        ),
        _ => (None, None, None),
    };
    let _ = s0.as_ref().map(|s| s.pid);
    let rss_avg = (!rss.is_empty()).then(|| rss.iter().sum::<u64>() / rss.len() as u64);
    let rss_max = rss.iter().copied().max();
    let grow = |n: usize| match (rss_avg, rss_idle) {
        (Some(a), Some(i)) if n > 0 => Some((a.saturating_sub(i)) as f64 / n as f64),
        _ => None,
    };
    let secs = window.as_secs_f64().max(1e-9);
    let mbit = |bytes: f64| bytes * 8.0 / secs / 1e6;
    let metric_delta = |name: &str| match (&m0, &m1) {
        (Some(a), Some(b)) if b.has(name) => Some(b.sum(name) - a.sum(name)),
        _ => None,
    };
    let viewers = ViewerSummary::from_results(&results, window_end);
    let report = BenchReport {
        options: opts.clone(),
        window_s: window.as_secs_f64(),
        machine: MachineFigures {
            cpus,
            clk_tck: tck,
            busy_pct_all_cores: busy,
            harness_cpu_pct_of_core: harness_cpu,
        },
        gateway: GatewayFigures {
            cpu_pct_of_core: gw_cpu,
            cpu_pct_per_stream: gw_cpu.filter(|_| k > 0).map(|c| c / k as f64),
            rss_idle_kib: rss_idle,
            rss_avg_kib: rss_avg,
            rss_max_kib: rss_max,
            rss_per_stream_kib: grow(k),
            rss_per_viewer_kib: grow(viewers_total),
            clean_exit: None,
        },
        traffic: Traffic {
            sent_mbit_s: mbit((sent1.1 - sent0.1) as f64),
            sent_packets: sent1.0 - sent0.0,
            ingress_mbit_s: metric_delta("gbrelay_ingress_bytes_total").map(mbit),
            ingress_packets: metric_delta("gbrelay_ingress_packets_total"),
            egress_mbit_s: metric_delta("gbrelay_egress_bytes_total").map(mbit),
            received_mbit_s: mbit(viewers.bytes_in_window as f64),
            packets_lost: metric_delta("gbrelay_rtp_lost_packets_total"),
            packets_late: metric_delta("gbrelay_rtp_late_packets_total"),
            viewer_drops: metric_delta("gbrelay_viewer_drops_total"),
            metrics_read: m0.is_some() && m1.is_some(),
        },
        viewers,
        invite_to_keyframe: (opts.mode == Mode::Sip).then(|| Latency::from_samples(&invite_to_key)),
        join_running,
        join_before,
        errors: errors.into_iter().map(|(e, n)| ErrorCount { error: e, count: n }).collect(),
        run_dir: None,
    };
    Ok(report)
}

fn sent_totals(streams: &[StreamRun]) -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    streams
        .iter()
        .fold((0, 0), |(p, b), s| (p + s.stats.packets.load(Relaxed), b + s.stats.bytes.load(Relaxed)))
}

/// Scenario (b): open a new receiver, connect a viewer, wait, then start the source; the viewer must
/// receive the source's very first keyframe, and we time it from the moment it left the source.
async fn join_before(
    opts: &BenchOptions,
    gw: &Gateway,
    sched: &Arc<Schedule>,
    stop: watch::Receiver<bool>,
) -> JoinBefore {
    let name = "bench-first".to_string();
    let mut out = JoinBefore::default();
    let target = match open_source(gw, opts, &name, 2_000_000).await {
        Ok(t) => t,
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    let stats = Arc::new(SourceStats::default());
    let spec = ViewerSpec {
        proto: ViewerProto::Flv,
        addr: gw.cfg.http,
        base_path: format!("/live/rtp/{name}"),
        start: Instant::now(),
        end: None,
        window_start: Instant::now() + Duration::from_secs(3600),
        source: SourceClock { schedule: sched.clone(), started: stats.clone() },
    };
    let v = tokio::spawn(viewer::run(spec));
    let wait = Duration::from_millis(500);
    tokio::time::sleep(wait).await;
    let start = Instant::now();
    let src = tokio::spawn(source::run(
        sched.clone(),
        target,
        2_000_000,
        start,
        start + Duration::from_secs(20),
        stats.clone(),
        stop,
    ));
    let r = v.await.unwrap_or_default();
    src.abort();
    out.viewer_waited_ms = wait.as_secs_f64() * 1e3;
    out.first_keyframe_index = r.first_key_index;
    out.got_first_keyframe = r.first_key_index.map(|i| sched.keyframes[i].index_in_loop == 0 && i == 0);
    out.keyframe_first = r.keyframe_first;
    if let (Some(recv), Some(sent)) = (r.first_key_at, stats.first_key_sent.get()) {
        out.delay_ms = Some(recv.saturating_duration_since(*sent).as_secs_f64() * 1e3);
    }
    out.error = r.error;
    let _ = gw.close_rtp(&name).await;
    out
}

/// Scenario (b) through a device: the viewer's request makes the gateway INVITE an idle channel; the
/// viewer must get the very first keyframe the device sends (the device starts from a keyframe).
async fn join_before_sip(gw: &Gateway, sched: &Arc<Schedule>, dev: StreamRun) -> JoinBefore {
    let mut out = JoinBefore::default();
    let sent = Instant::now();
    let spec = ViewerSpec {
        proto: ViewerProto::Flv,
        addr: gw.cfg.http,
        base_path: dev.base_path.clone(),
        start: sent,
        end: None,
        window_start: sent + Duration::from_secs(3600),
        source: SourceClock { schedule: sched.clone(), started: dev.stats.clone() },
    };
    let r = viewer::run(spec).await;
    if let Some(started) = dev.stats.started.get() {
        out.viewer_waited_ms = started.saturating_duration_since(sent).as_secs_f64() * 1e3;
    }
    out.first_keyframe_index = r.first_key_index;
    out.got_first_keyframe = r.first_key_index.map(|i| i == 0);
    out.keyframe_first = r.keyframe_first;
    if let (Some(recv), Some(sent)) = (r.first_key_at, dev.stats.first_key_sent.get()) {
        out.delay_ms = Some(recv.saturating_duration_since(*sent).as_secs_f64() * 1e3);
    }
    if let (Some(recv), Some(inv)) = (r.first_key_at, dev.invited.as_ref().and_then(|i| i.get())) {
        out.invite_to_key_ms = Some(recv.saturating_duration_since(*inv).as_secs_f64() * 1e3);
    }
    out.error = r.error;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchOptions,
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("3 days").is_err());
    }

    #[test]
    fn options_embed_in_a_clap_command() {
        let c = Cli::parse_from([
            "bench",
            "--streams",
            "200",
            "--viewers-on-one",
            "1000",
            "--protocol",
            "mixed",
            "--transport",
            "tcp-active",
            "--duration",
            "60s",
            "--join-running",
            "50",
            "--join-before",
        ]);
        let o = c.bench;
        assert_eq!(o.streams, 200);
        assert_eq!(o.viewers_on_one, 1000);
        assert_eq!(o.protocol, Protocol::Mixed);
        assert_eq!(o.transport, Transport::TcpActive);
        assert_eq!(o.duration, Duration::from_secs(60));
        assert_eq!(o.join_running, 50);
        assert!(o.join_before);
        assert_eq!(o.gateway_bin, PathBuf::from("target/release/gbrelay"));
        let d = Cli::parse_from(["bench"]).bench;
        assert_eq!(d.streams, BenchOptions::default().streams);
        assert_eq!(d.warmup, BenchOptions::default().warmup);
    }

    #[test]
    fn mixed_alternates_flv_and_hls() {
        let v: Vec<ViewerProto> = (0..4).map(|i| viewer_proto(Protocol::Mixed, i)).collect();
        assert_eq!(v, [ViewerProto::Flv, ViewerProto::Hls, ViewerProto::Flv, ViewerProto::Hls]);
    }

    #[tokio::test]
    async fn a_missing_gateway_binary_is_a_clear_error() {
        let opts = BenchOptions {
            gateway_bin: "/nonexistent/gbrelay".into(),
            media: concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/h264_aac.ps").into(),
            duration: Duration::from_secs(1),
            ..Default::default()
        };
        let e = run(opts).await.unwrap_err();
        assert!(matches!(e, BenchError::Gateway(GatewayError::NoBinary(_))), "{e}");
    }
}
