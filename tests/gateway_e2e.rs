//! End to end: the real gateway (SIP, media receivers, hub, HTTP) on 127.0.0.1 against the device
//! simulator streaming the foreign-muxed samples of `testdata/`, judged by ffprobe/ffmpeg (and PyAV
//! for H.265 in FLV). Issue 4's "done when" list.

use gbrelay::config::{Config, Transport};
use gbrelay::gateway::{start, Running};
use gbrelay::sim::{AnswerPolicy, SimConfig, SimEvent, Simulator, SipTransport};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const DEVICE: &str = "34020000001180000001";

fn tools_present() -> bool {
    let ok = Command::new("ffprobe").arg("-version").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("GBRELAY_REQUIRE_TOOLS").is_none(),
            "ffprobe is required (GBRELAY_REQUIRE_TOOLS set)"
        );
        eprintln!("skipping: ffprobe not installed");
    }
    ok
}

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name)
}

struct Env {
    gw: Running,
    sim: Option<Simulator>,
    _dir: tempfile::TempDir,
}

impl Env {
    fn flv_url(&self, channel: &str) -> String {
        format!("http://{}/live/{DEVICE}/{channel}.flv", self.gw.http_addr)
    }
    fn hls_url(&self, channel: &str) -> String {
        format!("http://{}/live/{DEVICE}/{channel}/index.m3u8", self.gw.http_addr)
    }
    fn sim(&self) -> &Simulator {
        self.sim.as_ref().expect("simulator running")
    }
    fn channel(&self, i: usize) -> String {
        self.sim().channel_ids()[i].clone()
    }
}

fn config(dir: &std::path::Path, transport: Transport, edit: impl FnOnce(&mut Config)) -> Config {
    let mut cfg = Config::default();
    cfg.sip.listen = "127.0.0.1:0".parse().unwrap();
    cfg.http.listen = "127.0.0.1:0".parse().unwrap();
    cfg.store.path = dir.join("gbrelay.db");
    cfg.media.ip = "127.0.0.1".parse().unwrap();
    cfg.media.rtp_port = 0;
    cfg.media.transport = transport;
    cfg.media.quarantine = Duration::from_secs(2);
    cfg.stream.first_frame_timeout = Duration::from_secs(6);
    cfg.sip.invite_timeout = Duration::from_secs(4);
    cfg.hls.segment = Duration::from_secs(1);
    edit(&mut cfg);
    cfg
}

async fn setup(
    transport: Transport,
    media: &str,
    sim_edit: impl FnOnce(&mut SimConfig),
    edit: impl FnOnce(&mut Config),
) -> Env {
    // `RUST_LOG=gbrelay=debug cargo test --test gateway_e2e` shows the gateway's and the
    // simulator's logs of a failing test.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), transport, edit);
    let gw = start(cfg).await.expect("gateway starts");
    let mut sc = SimConfig {
        server: gw.sip_addr,
        local: "127.0.0.1:0".parse().unwrap(),
        media_file: testdata(media),
        channels: 2,
        ..SimConfig::default()
    };
    sim_edit(&mut sc);
    let sim = Simulator::start(sc).await.expect("simulator starts");
    let env = Env { gw, sim: Some(sim), _dir: dir };
    let t0 = Instant::now();
    while !(env.gw.signal.device_online(DEVICE)
        && env.gw.store.channel_count(DEVICE).unwrap_or(0) == env.sim().channel_ids().len())
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "device not registered with its catalog: online={} channels={:?} sim={:?}",
            env.gw.signal.device_online(DEVICE),
            env.gw.store.channel_count(DEVICE),
            env.sim().stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env
}

async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "condition not met within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run(cmd: &'static str, args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || Command::new(cmd).args(&args).output().expect("spawn tool"))
        .await
        .unwrap()
}

async fn ffprobe_streams(url: &str) -> serde_json::Value {
    let out = run(
        "ffprobe",
        vec![
            "-v".into(),
            "error".into(),
            "-rw_timeout".into(),
            "15000000".into(),
            "-show_streams".into(),
            "-of".into(),
            "json".into(),
            url.into(),
        ],
    )
    .await;
    assert!(out.status.success(), "ffprobe {url}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stream_of<'a>(v: &'a serde_json::Value, kind: &str) -> Option<&'a serde_json::Value> {
    v["streams"].as_array()?.iter().find(|s| s["codec_type"] == kind)
}

async fn ffmpeg_decodes_clean(url: &str) {
    let out = run(
        "ffmpeg",
        vec![
            "-v".into(),
            "error".into(),
            "-rw_timeout".into(),
            "15000000".into(),
            "-i".into(),
            url.into(),
            "-t".into(),
            "5".into(),
            "-f".into(),
            "null".into(),
            "-".into(),
        ],
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "ffmpeg decode of {url} reported: {err}");
}

async fn check_flv_and_hls(transport: Transport, media: &str, video: &str, audio: Option<&str>, hls: bool) {
    if !tools_present() {
        return;
    }
    // SIP over TCP for the TCP media transports, over UDP otherwise: both registrations are used.
    let sip = if transport == Transport::Udp { SipTransport::Udp } else { SipTransport::Tcp };
    let env = setup(transport, media, |s| s.sip_transport = sip, |_| {}).await;
    let ch = env.channel(0);
    let v = ffprobe_streams(&env.flv_url(&ch)).await;
    let vs = stream_of(&v, "video").expect("video stream");
    assert_eq!(vs["codec_name"], video, "{v}");
    assert_eq!(vs["width"], 1280);
    assert_eq!(vs["height"], 720);
    match audio {
        Some(a) => assert_eq!(stream_of(&v, "audio").expect("audio stream")["codec_name"], a, "{v}"),
        None => assert!(stream_of(&v, "audio").is_none()),
    }
    ffmpeg_decodes_clean(&env.flv_url(&ch)).await;
    if hls {
        let h = ffprobe_streams(&env.hls_url(&ch)).await;
        let hv = stream_of(&h, "video").expect("HLS video");
        assert_eq!(hv["codec_name"], video);
        assert_eq!(hv["width"], 1280);
        ffmpeg_decodes_clean(&env.hls_url(&ch)).await;
    }
    // One INVITE for the FLV and HLS viewers of the one channel.
    assert_eq!(env.sim().stats().invites - env.sim().stats().invite_retransmissions, 1);
    env.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_aac_over_tcp_passive_plays_as_flv_and_hls() {
    check_flv_and_hls(Transport::TcpPassive, "h264_aac.ps", "h264", Some("aac"), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_aac_over_udp_plays_as_flv_and_hls() {
    check_flv_and_hls(Transport::Udp, "h264_aac.ps", "h264", Some("aac"), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_aac_over_tcp_active_plays_as_flv_and_hls() {
    check_flv_and_hls(Transport::TcpActive, "h264_aac.ps", "h264", Some("aac"), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_g711a_plays_as_flv_with_alaw_audio() {
    check_flv_and_hls(Transport::TcpPassive, "h264_g711a.ps", "h264", Some("pcm_alaw"), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h265_aac_plays_as_hls() {
    if !tools_present() {
        return;
    }
    let env = setup(Transport::Udp, "h265_aac.ps", |_| {}, |_| {}).await;
    let ch = env.channel(0);
    let h = ffprobe_streams(&env.hls_url(&ch)).await;
    assert_eq!(stream_of(&h, "video").unwrap()["codec_name"], "hevc");
    assert_eq!(stream_of(&h, "video").unwrap()["width"], 1280);
    assert_eq!(stream_of(&h, "audio").unwrap()["codec_name"], "aac");
    env.gw.shutdown().await;
}

fn pyav_present() -> bool {
    let ok = Command::new("python3").args(["-c", "import av"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("GBRELAY_REQUIRE_TOOLS").is_none(),
            "PyAV is required (GBRELAY_REQUIRE_TOOLS set)"
        );
        eprintln!("skipping: PyAV not installed");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h265_in_enhanced_flv_decodes_with_pyav() {
    if !pyav_present() {
        return;
    }
    let env = setup(Transport::TcpPassive, "h265_aac.ps", |_| {}, |_| {}).await;
    let url = env.flv_url(&env.channel(0));
    let script = r#"
import av, sys
c = av.open(sys.argv[1], options={'rw_timeout': '15000000'})
v = c.streams.video[0]
n = 0
first_key = None
for pkt in c.demux(v):
    if pkt.size == 0:
        continue
    if first_key is None:
        first_key = pkt.is_keyframe
    for f in pkt.decode():
        n += 1
    if n >= 60:
        break
print(v.codec_context.name, v.codec_context.width, v.codec_context.height, n, first_key)
"#;
    let out = run("python3", vec!["-c".into(), script.into(), url]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "PyAV: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.split_whitespace().collect::<Vec<_>>(), ["hevc", "1280", "720", "60", "True"], "{text}");
    env.gw.shutdown().await;
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::Client::new().get(url).timeout(Duration::from_secs(20)).send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_channel_is_404_and_refusal_is_502_with_sip_status() {
    let env =
        setup(Transport::TcpPassive, "h264_aac.ps", |s| s.answer = AnswerPolicy::Refuse(486), |_| {}).await;
    let (st, body) = get(&env.flv_url("34020000001329999999")).await;
    assert_eq!(st, 404, "{body}");
    let (st, body) = get(&env.flv_url(&env.channel(0))).await;
    assert_eq!(st, 502, "{body}");
    assert!(body.contains("486"), "{body}");
    env.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_device_is_504_after_invite_retransmissions() {
    let env = setup(
        Transport::Udp,
        "h264_aac.ps",
        |s| s.answer = AnswerPolicy::NoAnswer,
        |c| {
            c.sip.invite_timeout = Duration::from_secs(3);
            c.stream.first_frame_timeout = Duration::from_secs(3);
        },
    )
    .await;
    let t0 = Instant::now();
    let (st, body) = get(&env.flv_url(&env.channel(0))).await;
    assert_eq!(st, 504, "{body}");
    assert!(t0.elapsed() < Duration::from_secs(6), "took {:?}", t0.elapsed());
    let stats = env.sim().stats();
    assert!(stats.invite_retransmissions >= 2, "Timer A retransmissions: {stats:?}");
    assert_eq!(stats.cancels, 0, "no CANCEL without a provisional response");
    env.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_device_is_503() {
    let mut env = setup(Transport::TcpPassive, "h264_aac.ps", |_| {}, |_| {}).await;
    let ch = env.channel(0);
    env.sim.take().unwrap().stop().await; // Expires: 0
    wait_until(Duration::from_secs(5), || !env.gw.signal.device_online(DEVICE)).await;
    let (st, body) = get(&env.flv_url(&ch)).await;
    assert_eq!(st, 503, "{body}");
    env.gw.shutdown().await;
}

/// Reads an HTTP-FLV body for `dur` and returns the bytes.
async fn read_flv(url: String, dur: Duration) -> Vec<u8> {
    use futures_util::StreamExt;
    let r = reqwest::Client::new().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut out = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < dur {
        match tokio::time::timeout(dur.saturating_sub(t0.elapsed()), body.next()).await {
            Ok(Some(Ok(b))) => out.extend_from_slice(&b),
            _ => break,
        }
    }
    out
}

/// FLV tags after the header: (type, timestamp, keyframe, tag bytes).
fn flv_tags(b: &[u8]) -> Vec<(u8, u32, bool, &[u8])> {
    let mut v = Vec::new();
    let mut p = 13;
    while p + 11 <= b.len() {
        let len = u32::from_be_bytes([0, b[p + 1], b[p + 2], b[p + 3]]) as usize;
        if p + 11 + len + 4 > b.len() {
            break;
        }
        let ts = u32::from_be_bytes([b[p + 7], b[p + 4], b[p + 5], b[p + 6]]);
        let key = b[p] == 9 && len > 0 && (b[p + 11] >> 4) & 0x7 == 1;
        v.push((b[p], ts, key, &b[p..p + 11 + len + 4]));
        p += 11 + len + 4;
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_viewers_share_one_invite_and_get_identical_bytes() {
    let env = setup(Transport::TcpPassive, "h264_aac.ps", |_| {}, |_| {}).await;
    let url = env.flv_url(&env.channel(0));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(tokio::spawn(read_flv(url.clone(), Duration::from_secs(4))));
    }
    let bodies: Vec<Vec<u8>> =
        futures_util::future::join_all(tasks).await.into_iter().map(|r| r.unwrap()).collect();
    let s = env.sim().stats();
    assert_eq!(s.invites - s.invite_retransmissions, 1, "{s:?}");
    // Every viewer's first video tag after the sequence header is a keyframe, and from the first
    // keyframe on, all bodies carry the same tags (up to the shortest).
    let from_key: Vec<Vec<&[u8]>> = bodies
        .iter()
        .map(|b| {
            let tags = flv_tags(b);
            let first_video = tags
                .iter()
                .position(|t| t.0 == 9 && t.3.len() > 16 && t.3[12] == 1)
                .expect("a coded video tag");
            assert!(tags[first_video].2, "first coded video tag is a keyframe");
            tags[first_video..].iter().map(|t| t.3).collect()
        })
        .collect();
    let shortest = from_key.iter().map(|t| t.len()).min().unwrap();
    assert!(shortest > 25, "viewers got at least a second of tags ({shortest})");
    for t in &from_key[1..] {
        assert_eq!(&t[..shortest], &from_key[0][..shortest]);
    }
    env.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stream_gets_bye_after_last_viewer_leaves() {
    let env =
        setup(Transport::Udp, "h264_aac.ps", |_| {}, |c| c.stream.idle_timeout = Duration::from_secs(2))
            .await;
    let mut events = env.sim().events();
    let url = env.flv_url(&env.channel(0));
    let body = read_flv(url, Duration::from_secs(2)).await;
    assert!(!flv_tags(&body).is_empty());
    let left = Instant::now();
    let bye = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Ok(SimEvent::Bye { from_server: true, .. }) => break,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    assert!(bye.is_ok(), "no BYE from the gateway");
    assert!(
        left.elapsed() < Duration::from_secs(3) + Duration::from_millis(500),
        "BYE after {:?}",
        left.elapsed()
    );
    env.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_loss_and_reordering_are_counted_and_play_on() {
    let env = setup(
        Transport::Udp,
        "h264_aac.ps",
        |s| {
            s.loss = 0.01;
            s.reorder = 0.02;
        },
        |_| {},
    )
    .await;
    let url = env.flv_url(&env.channel(0));
    let body = read_flv(url, Duration::from_secs(5)).await;
    let tags = flv_tags(&body);
    // No stall longer than 300 ms between consecutive video tags' arrival is approximated by the
    // media timeline: tags keep coming for the whole window.
    let video: Vec<u32> = tags.iter().filter(|t| t.0 == 9).map(|t| t.1).collect();
    assert!(video.len() > 60, "video tags: {}", video.len());
    let (_, streams) = get(&format!("http://{}/api/v1/streams", env.gw.http_addr)).await;
    let v: serde_json::Value = serde_json::from_str(&streams).unwrap();
    let lost = v["items"][0]["rtp"]["lost"].as_u64().unwrap_or(0);
    assert!(lost > 0, "loss counted in the stream status: {v}");
    let (_, metrics) = get(&format!("http://{}/metrics", env.gw.http_addr)).await;
    assert!(
        metrics.lines().any(|l| l.starts_with("gbrelay_rtp_lost_packets_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    env.gw.shutdown().await;
}
