//! REST API, media-only receivers, CORS / OPTIONS / HEAD, `/metrics` and the viewer counts against
//! the real server.

mod hub_support;

use futures_util::future::BoxFuture;
use gbrelay::http::{ApiError, RtpControl, RtpOpenRequest};
use gbrelay::hub::PullHandle;
use hub_support::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_preflight_and_get_carry_cors_headers_and_head_does_not_pull() {
    let s = start_server(test_config(), None).await;
    s.puller.set("c1", Behaviour::live());
    let client = reqwest::Client::new();
    let url = live_url(&s.base, "c1");
    let resp = client
        .request(reqwest::Method::OPTIONS, &url)
        .header("Origin", "http://player.example")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    assert!(resp.headers()["access-control-allow-methods"].to_str().unwrap().contains("GET"));

    let resp = client.head(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "video/x-flv");
    assert_eq!(s.puller.pulls("c1"), 0, "HEAD started a pull");

    let resp =
        client.get(format!("{}/api/v1/streams", s.base)).header("Origin", "http://x").send().await.unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_cors_origin_is_echoed_only_for_that_origin() {
    let mut cfg = test_config();
    cfg.http.cors_origin = "http://a.example".into();
    let s = start_server(cfg, None).await;
    let client = reqwest::Client::new();
    let resp =
        client.get(format!("{}/healthz", s.base)).header("Origin", "http://a.example").send().await.unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], "http://a.example");
    let resp =
        client.get(format!("{}/healthz", s.base)).header("Origin", "http://b.example").send().await.unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_starts_lists_and_stops_a_stream() {
    let s = start_server(test_config(), None).await;
    s.puller.set("c2", Behaviour::live());
    let client = reqwest::Client::new();
    let url = format!("{}/api/v1/streams/34020000001180000001/c2", s.base);
    let resp = client.post(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.text().await.unwrap().parse().unwrap();
    assert_eq!(v["status"], "live");
    assert_eq!(v["transport"], "udp");
    // Pinned: survives idle_timeout with no viewer.
    tokio::time::sleep(s.config.stream.idle_timeout + Duration::from_millis(400)).await;
    let v: serde_json::Value = client
        .get(format!("{}/api/v1/streams", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .parse::<serde_json::Value>()
        .unwrap();
    assert_eq!(v["total"], 1);
    let item = &v["items"][0];
    for field in [
        "device",
        "channel",
        "transport",
        "video_codec",
        "width",
        "height",
        "audio_codec",
        "viewers",
        "bytes_in",
        "started_at",
        "status",
        "reason",
    ] {
        assert!(item.get(field).is_some(), "missing {field}: {item}");
    }
    assert_eq!(item["device"], "34020000001180000001");
    assert_eq!(item["channel"], "c2");
    assert_eq!(item["video_codec"], "h264");
    assert_eq!(item["audio_codec"], "aac");
    assert_eq!(item["width"], 640);
    assert!(item["bytes_in"].as_u64().unwrap() > 0);
    assert_eq!(client.delete(&url).send().await.unwrap().status(), 204);
    assert!(wait_until(Duration::from_secs(2), || !s.puller.stops("c2").is_empty()).await);
    assert_eq!(s.puller.stops("c2")[0].0, "api");
    assert_eq!(client.delete(&url).send().await.unwrap().status(), 404);
}

struct FakeRtp {
    stops: Arc<Mutex<Vec<(String, String, std::time::Instant)>>>,
    opened: Mutex<Vec<RtpOpenRequest>>,
}

impl RtpControl for FakeRtp {
    fn open(&self, req: RtpOpenRequest) -> BoxFuture<'static, Result<(u16, PullHandle), ApiError>> {
        self.opened.lock().unwrap().push(req.clone());
        let h = spawn_source(req.stream.clone(), Behaviour::live(), self.stops.clone());
        Box::pin(async move { Ok((30002, h)) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_only_receiver_opens_plays_and_closes_through_the_api() {
    let stops = Arc::new(Mutex::new(vec![]));
    let rtp = Arc::new(FakeRtp { stops: stops.clone(), opened: Mutex::new(vec![]) });
    let s = start_server(test_config(), Some(rtp.clone())).await;
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/api/v1/rtp", s.base))
        .header("content-type", "application/json")
        .body(serde_json::json!({"stream": "cam-1", "transport": "udp", "port": 0, "ssrc": 123}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.text().await.unwrap().parse().unwrap();
    assert_eq!(v["port"], 30002);
    assert_eq!(rtp.opened.lock().unwrap()[0].ssrc, Some(123));
    // Same name again: conflict.
    let resp = client
        .post(format!("{}/api/v1/rtp", s.base))
        .header("content-type", "application/json")
        .body(serde_json::json!({"stream": "cam-1", "transport": "udp"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    let bad = client
        .post(format!("{}/api/v1/rtp", s.base))
        .header("content-type", "application/json")
        .body(serde_json::json!({"stream": "a/b", "transport": "udp"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let (status, r, _) =
        read_flv(&format!("{}/live/rtp/cam-1.flv", s.base), 20, Duration::from_secs(5)).await;
    assert_eq!(status, 200);
    assert!(r.tags.iter().find(|t| t.kind == 9 && !t.is_seq_header()).unwrap().is_video_keyframe());
    // Not idle-stopped although the viewer left.
    tokio::time::sleep(s.config.stream.idle_timeout + Duration::from_millis(400)).await;
    assert!(stops.lock().unwrap().is_empty());
    assert_eq!(client.delete(format!("{}/api/v1/rtp/cam-1", s.base)).send().await.unwrap().status(), 204);
    assert!(wait_until(Duration::from_secs(2), || !stops.lock().unwrap().is_empty()).await);
    assert_eq!(stops.lock().unwrap()[0].1, "api");
}

/// A strict reader of the Prometheus / OpenMetrics text exposition format: every sample line is
/// `name{label="value",...} number`, every family has `# TYPE`, the text ends with `# EOF`.
type Sample = (String, Vec<(String, String)>, f64);

fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples = vec![];
    let mut typed = std::collections::HashSet::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"));
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                ["counter", "gauge", "histogram", "summary", "unknown", "info", "stateset"].contains(&kind),
                "{line}"
            );
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels in {line}"))),
            None => (series, ""),
        };
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "{line}");
        let labels: Vec<(String, String)> = if labels.is_empty() {
            vec![]
        } else {
            labels
                .split("\",")
                .map(|kv| {
                    let (k, v) = kv.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line}"));
                    (k.to_owned(), v.trim_end_matches('"').to_owned())
                })
                .collect()
        };
        let family = ["_total", "_bucket", "_count", "_sum", "_created"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| typed.contains(*f))
            .unwrap_or(name);
        assert!(typed.contains(family), "sample {name} has no # TYPE");
        samples.push((name.to_owned(), labels, value));
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_viewers_egress_and_ttfb() {
    let s = start_server(test_config(), None).await;
    s.puller.set("cm", Behaviour::live());
    let (status, _, _) = read_flv(&live_url(&s.base, "cm"), 30, Duration::from_secs(5)).await;
    assert_eq!(status, 200);
    let resp = reqwest::get(format!("{}/metrics", s.base)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let samples = parse_exposition(&resp.text().await.unwrap());
    let get = |name: &str, label: Option<(&str, &str)>| {
        samples
            .iter()
            .find(|(n, l, _)| n == name && label.is_none_or(|(k, v)| l.iter().any(|(a, b)| a == k && b == v)))
            .map(|s| s.2)
    };
    assert!(get("gbrelay_egress_bytes_total", Some(("protocol", "flv"))).unwrap() > 0.0);
    assert!(get("gbrelay_viewer_ttfb_seconds_count", Some(("protocol", "flv"))).unwrap() >= 1.0);
    assert!(get("gbrelay_invite_to_keyframe_seconds_count", None).unwrap() >= 1.0);
    assert!(get("gbrelay_streams_active", None).is_some());
    assert!(get("gbrelay_viewers", Some(("protocol", "flv"))).is_some());
    let h: serde_json::Value = reqwest::get(format!("{}/healthz", s.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .parse::<serde_json::Value>()
        .unwrap();
    assert_eq!(h["status"], "ok");
}

/// `gbrelay_viewers{protocol="hls"}` now.
async fn hls_viewers_gauge(base: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    parse_exposition(&text)
        .iter()
        .find(|(n, l, _)| n == "gbrelay_viewers" && l.iter().any(|(k, v)| k == "protocol" && v == "hls"))
        .map_or(0.0, |s| s.2)
}

/// `viewers` and `viewers_hls` of the only stream in `GET /api/v1/streams`.
async fn stream_viewers(base: &str) -> (u64, u64) {
    let v: serde_json::Value =
        reqwest::get(format!("{base}/api/v1/streams")).await.unwrap().text().await.unwrap().parse().unwrap();
    let item = &v["items"][0];
    assert_eq!(item["status"], "live", "{v}");
    (item["viewers"].as_u64().unwrap(), item["viewers_hls"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hls_clients_count_as_two_viewers_until_they_stop_requesting() {
    let mut cfg = test_config();
    cfg.hls.viewer_timeout = Some(Duration::from_millis(1000));
    let s = start_server(cfg, None).await;
    s.puller.set("chls", Behaviour::live());
    // Pinned through the API, so the stream outlives its viewers and only the count moves.
    let api = reqwest::Client::new();
    let resp = api.post(format!("{}/api/v1/streams/34020000001180000001/chls", s.base)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let before = hls_viewers_gauge(&s.base).await;
    assert_eq!(stream_viewers(&s.base).await, (0, 0));

    // Two players with the same User-Agent on two addresses: two clients. Playlist and segment
    // requests of one client count once, whichever connection (port) they come on.
    let playlist = format!("{}/live/34020000001180000001/chls/index.m3u8", s.base);
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .user_agent("player/1.0")
            .local_address(std::net::IpAddr::from(ip))
            .build()
            .unwrap()
    };
    let (a, b) = (from([127, 0, 0, 1]), from([127, 0, 0, 2]));
    let text = a.get(&playlist).send().await.unwrap().text().await.unwrap();
    let seg = text.lines().find(|l| l.ends_with(".ts")).unwrap().to_owned();
    let seg_url = format!("{}/live/34020000001180000001/chls/{seg}", s.base);
    assert_eq!(a.get(&seg_url).send().await.unwrap().status(), 200);
    assert_eq!(b.get(&playlist).send().await.unwrap().status(), 200);
    assert_eq!(b.get(&seg_url).send().await.unwrap().status(), 200);
    assert_eq!(from([127, 0, 0, 1]).get(&playlist).send().await.unwrap().status(), 200);
    // A HEAD probes; it is not a viewer.
    assert_eq!(api.head(&seg_url).send().await.unwrap().status(), 200);
    let last_request = Instant::now();
    assert_eq!(hls_viewers_gauge(&s.base).await - before, 2.0);
    assert_eq!(stream_viewers(&s.base).await, (2, 2));

    // No request for `viewer_timeout`: both drop out of the gauge and the stream's count.
    let mut gone = None;
    while last_request.elapsed() < Duration::from_secs(4) {
        if stream_viewers(&s.base).await == (0, 0) {
            gone = Some(last_request.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gone = gone.expect("HLS viewers never expired");
    assert!(gone >= Duration::from_millis(900), "expired after {gone:?}, before the 1 s timeout");
    assert_eq!(hls_viewers_gauge(&s.base).await, before);
    assert!(s.puller.stops("chls").is_empty(), "the pinned stream was stopped");
}
