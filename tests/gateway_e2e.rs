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

/// What a sample must play as, from its `testdata/*.ps.json`: codecs as the gateway's API names
/// them, and the video size.
struct Expected {
    video: String,
    width: u64,
    height: u64,
    /// Codec, sample rate, channels.
    audio: Option<(String, u64, u64)>,
}

impl Expected {
    fn of(media: &str) -> Expected {
        let path = testdata(&format!("{media}.json"));
        let j: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("sample json")).unwrap();
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_else(|| panic!("{path:?}: {v}")).to_owned();
        let num = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("{path:?}: {v}"));
        let a = &j["audio"];
        Expected {
            video: text(&j["video"]["codec"]),
            width: num(&j["video"]["width"]),
            height: num(&j["video"]["height"]),
            audio: (!a.is_null()).then(|| (text(&a["codec"]), num(&a["sample_rate"]), num(&a["channels"]))),
        }
    }

    /// G.711 has no place in MPEG-TS: the gateway's HLS carries the video only.
    fn audio_in_hls(&self) -> bool {
        self.audio.as_ref().is_some_and(|a| !a.0.starts_with("g711"))
    }
}

/// FFmpeg's name of a codec (ffprobe `codec_name`, PyAV `codec_context.name`).
fn ffmpeg_name(codec: &str) -> &'static str {
    match codec {
        "h264" => "h264",
        "h265" => "hevc",
        "aac" => "aac",
        "g711a" => "pcm_alaw",
        "g711u" => "pcm_mulaw",
        other => panic!("no FFmpeg name for {other}"),
    }
}

/// ffprobe's streams of `url` are the expected video (codec, size) and, when `with_audio`, the
/// expected audio (codec, rate, channels); without it, no audio at all.
async fn probe_matches(url: &str, exp: &Expected, with_audio: bool) {
    let p = ffprobe_streams(url).await;
    let v = stream_of(&p, "video").unwrap_or_else(|| panic!("{url}: no video: {p}"));
    assert_eq!(v["codec_name"], ffmpeg_name(&exp.video), "{url}: {p}");
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(exp.width), Some(exp.height)),
        "{url}: {p}"
    );
    match exp.audio.as_ref().filter(|_| with_audio) {
        Some((codec, rate, channels)) => {
            let a = stream_of(&p, "audio").unwrap_or_else(|| panic!("{url}: no audio: {p}"));
            assert_eq!(a["codec_name"], ffmpeg_name(codec), "{url}: {p}");
            assert_eq!(a["sample_rate"], rate.to_string(), "{url}: {p}");
            assert_eq!(a["channels"], *channels, "{url}: {p}");
        }
        None => assert!(stream_of(&p, "audio").is_none(), "{url}: unexpected audio: {p}"),
    }
}

/// ffprobe reports the expected streams and `ffmpeg -t 5` decodes with no error output.
async fn probe_and_decode(url: String, exp: &Expected, with_audio: bool) {
    probe_matches(&url, exp, with_audio).await;
    ffmpeg_decodes_clean(&url).await;
}

/// Reads an (Enhanced) FLV URL (argv 1) with PyAV for argv 2 seconds of video, decoding every
/// packet of every stream (and flushing the decoders at the end): prints what was read as JSON,
/// with every FFmpeg log line of level error or worse.
const PYAV_DECODE_ALL: &str = r#"
import av, av.logging, json, sys
av.logging.set_level(av.logging.ERROR)
out = {}
with av.logging.Capture(local=False) as logs:
    c = av.open(sys.argv[1], options={'rw_timeout': '15000000'})
    seen = {}
    first_video_key = None
    start = None
    for pkt in c.demux():
        if pkt.size == 0:
            continue
        s = pkt.stream
        if s.type == 'video':
            if first_video_key is None:
                first_video_key = pkt.is_keyframe
            t = float(pkt.pts * pkt.time_base)
            start = t if start is None else start
            if t - start >= float(sys.argv[2]):
                break
        n = seen.setdefault(s, [0, 0])
        n[0] += 1
        n[1] += len(s.codec_context.decode(pkt))
    for s, n in seen.items():
        n[1] += len(s.codec_context.decode(None))
        cc = s.codec_context
        d = {'codec': cc.name, 'packets': n[0], 'frames': n[1]}
        if s.type == 'video':
            d.update(width=cc.width, height=cc.height, first_key=first_video_key)
        else:
            d.update(sample_rate=cc.sample_rate, channels=cc.layout.nb_channels)
        out[s.type] = d
    out['streams'] = sorted(s.type for s in c.streams)
out['errors'] = [f'{name}: {msg}' for _, name, msg in logs]
print(json.dumps(out))
"#;

/// The FLV at `url` read by PyAV (for H.265, which Debian's FFmpeg 5.1 cannot read in FLV): the
/// expected codecs and size, the first video packet a keyframe, at least `secs` of video, every
/// packet decoded to a frame, and no FFmpeg error.
async fn pyav_decodes_all(url: String, exp: &Expected, secs: u32) {
    let out = run("python3", vec!["-c".into(), PYAV_DECODE_ALL.into(), url.clone(), secs.to_string()]).await;
    assert!(out.status.success(), "PyAV on {url}: {}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("PyAV output {e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(r["errors"], serde_json::json!([]), "{url}: FFmpeg errors: {r}");
    let v = &r["video"];
    assert_eq!(v["codec"], ffmpeg_name(&exp.video), "{r}");
    assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(exp.width), Some(exp.height)), "{r}");
    assert_eq!(v["first_key"], true, "first video packet is a keyframe: {r}");
    // 25 fps: a whole number of seconds is 25 frames per second, give or take the cut.
    assert!(v["packets"].as_u64().unwrap() >= u64::from(secs) * 25 - 1, "{secs} s of video: {r}");
    let mut kinds = vec!["video"];
    if let Some((codec, rate, channels)) = &exp.audio {
        let a = &r["audio"];
        assert_eq!(a["codec"], ffmpeg_name(codec), "{r}");
        assert_eq!(
            (a["sample_rate"].as_u64(), a["channels"].as_u64()),
            (Some(*rate), Some(*channels)),
            "{r}"
        );
        assert!(a["packets"].as_u64().unwrap() > 0, "{r}");
        kinds.insert(0, "audio");
    }
    assert_eq!(r["streams"], serde_json::json!(kinds), "{r}");
    for k in kinds {
        assert_eq!(r[k]["frames"], r[k]["packets"], "every {k} packet decodes to a frame: {r}");
    }
}

/// The gateway and the simulated device for playing `media` over `transport`, or `None` (the
/// test is skipped) without the judging tools. SIP goes over TCP for the TCP media transports,
/// over UDP otherwise: both registrations are used.
async fn start_playing(transport: Transport, media: &str, pyav: bool) -> Option<Env> {
    if !tools_present() || (pyav && !pyav_present()) {
        return None;
    }
    let sip = if transport == Transport::Udp { SipTransport::Udp } else { SipTransport::Tcp };
    Some(setup(transport, media, |s| s.sip_transport = sip, |_| {}).await)
}

/// `GET /api/v1/streams` shows the channel's stream live with the sample's codecs and size, and,
/// for G.711 audio only, the note that browsers will play no sound.
async fn api_shows_stream(env: &Env, ch: &str, exp: &Expected) {
    let (st, body) = get(&format!("http://{}/api/v1/streams", env.gw.http_addr)).await;
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let s = v["items"]
        .as_array()
        .and_then(|i| i.iter().find(|s| s["channel"] == ch))
        .unwrap_or_else(|| panic!("no stream of {ch}: {v}"));
    assert_eq!(s["status"], "live", "{s}");
    assert_eq!(s["video_codec"], exp.video.as_str(), "{s}");
    assert_eq!((s["width"].as_u64(), s["height"].as_u64()), (Some(exp.width), Some(exp.height)), "{s}");
    let audio = exp.audio.as_ref().map(|a| a.0.as_str());
    assert_eq!(s["audio_codec"].as_str(), audio, "{s}");
    if audio.is_some_and(|a| a.starts_with("g711")) {
        let reason = s["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("browsers will play no sound"), "G.711 note: {s}");
    } else {
        assert!(s["reason"].is_null(), "no note for browser-playable audio: {s}");
    }
}

/// The stream served one INVITE for all its FLV and HLS viewers; then shut down.
async fn finish(env: Env) {
    let s = env.sim().stats();
    assert_eq!(s.invites - s.invite_retransmissions, 1, "{s:?}");
    env.gw.shutdown().await;
}

/// H.264 + AAC: FLV and HLS both probe as h264 (size) + aac and decode clean with FFmpeg.
async fn check_h264_aac(transport: Transport) {
    let media = "h264_aac.ps";
    let Some(env) = start_playing(transport, media, false).await else { return };
    let (exp, ch) = (Expected::of(media), env.channel(0));
    tokio::join!(
        probe_and_decode(env.flv_url(&ch), &exp, true),
        probe_and_decode(env.hls_url(&ch), &exp, true)
    );
    api_shows_stream(&env, &ch, &exp).await;
    finish(env).await;
}

/// H.265 + AAC: HLS probes as hevc (size) + aac and decodes clean with FFmpeg; the Enhanced FLV
/// (hvc1) is judged by PyAV, decoding every frame it gets.
async fn check_h265_aac(transport: Transport) {
    let media = "h265_aac.ps";
    let Some(env) = start_playing(transport, media, true).await else { return };
    let (exp, ch) = (Expected::of(media), env.channel(0));
    tokio::join!(pyav_decodes_all(env.flv_url(&ch), &exp, 5), probe_and_decode(env.hls_url(&ch), &exp, true));
    api_shows_stream(&env, &ch, &exp).await;
    finish(env).await;
}

/// H.264 + G.711A: the FLV carries the A-law audio (SoundFormat 7) beside h264; the HLS carries
/// the video only (TS has no G.711); both decode clean, and the stream info warns of no sound in
/// browsers.
async fn check_h264_g711a(transport: Transport) {
    let media = "h264_g711a.ps";
    let Some(env) = start_playing(transport, media, false).await else { return };
    let (exp, ch) = (Expected::of(media), env.channel(0));
    assert!(!exp.audio_in_hls(), "the sample's audio is G.711");
    tokio::join!(
        probe_and_decode(env.flv_url(&ch), &exp, true),
        probe_and_decode(env.hls_url(&ch), &exp, false)
    );
    api_shows_stream(&env, &ch, &exp).await;
    finish(env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_aac_over_udp_plays_as_flv_and_hls() {
    check_h264_aac(Transport::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_aac_over_tcp_passive_plays_as_flv_and_hls() {
    check_h264_aac(Transport::TcpPassive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_aac_over_tcp_active_plays_as_flv_and_hls() {
    check_h264_aac(Transport::TcpActive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h265_aac_over_udp_plays_as_hls_and_enhanced_flv() {
    check_h265_aac(Transport::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h265_aac_over_tcp_passive_plays_as_hls_and_enhanced_flv() {
    check_h265_aac(Transport::TcpPassive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h265_aac_over_tcp_active_plays_as_hls_and_enhanced_flv() {
    check_h265_aac(Transport::TcpActive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_g711a_over_udp_plays_alaw_flv_and_video_only_hls() {
    check_h264_g711a(Transport::Udp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_g711a_over_tcp_passive_plays_alaw_flv_and_video_only_hls() {
    check_h264_g711a(Transport::TcpPassive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_g711a_over_tcp_active_plays_alaw_flv_and_video_only_hls() {
    check_h264_g711a(Transport::TcpActive).await;
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

/// `POST /api/v1/rtp` with `tcp-active`: the gateway connects to the source's `peer` address and
/// the stream plays; without `peer` the request is a JSON 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_only_tcp_active_receiver_connects_to_the_peer_and_plays() {
    use gbrelay::sim::{MediaSource, MediaSourceConfig, MediaTransport};
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let gw = start(config(dir.path(), Transport::TcpActive, |_| {})).await.expect("gateway starts");
    let src = MediaSource::start(MediaSourceConfig::loopback(
        testdata("h264_aac.ps"),
        MediaTransport::TcpActive,
        4242,
    ))
    .await
    .expect("source listens");
    let client = reqwest::Client::new();
    let api = format!("http://{}/api/v1/rtp", gw.http_addr);
    let port = gw.media.shared_port();
    let no_peer = client
        .post(&api)
        .header("content-type", "application/json")
        .body(
            serde_json::json!({"stream": "act", "transport": "tcp-active", "port": port, "ssrc": 4242})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(no_peer.status(), 400);
    let body: serde_json::Value = no_peer.text().await.unwrap().parse().unwrap();
    assert_eq!(body["error"], "peer_required");
    let ok = client
        .post(&api)
        .header("content-type", "application/json")
        .body(
            serde_json::json!({
                "stream": "act", "transport": "tcp-active", "port": port, "ssrc": 4242,
                "peer": src.local_addr().to_string(),
            })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "{:?}", ok.text().await);
    let url = format!("http://{}/live/rtp/act.flv", gw.http_addr);
    let v = ffprobe_streams(&url).await;
    let video = stream_of(&v, "video").expect("a video stream");
    assert_eq!(video["codec_name"], "h264");
    assert_eq!((video["width"].as_u64(), video["height"].as_u64()), (Some(1280), Some(720)));
    assert_eq!(stream_of(&v, "audio").expect("an audio stream")["codec_name"], "aac");
    assert!(src.stats().packets > 0);
    assert_eq!(client.delete(format!("{api}/act")).send().await.unwrap().status(), 204);
    src.stop();
    gw.shutdown().await;
}
