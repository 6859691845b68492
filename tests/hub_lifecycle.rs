//! Hub lifecycle without HTTP: stop while starting, shutdown, duplicate attach, pull bound.

mod hub_support;

use gbrelay::hub::{Hub, HubConfig, PullError, StreamKey, ViewError};
use hub_support::*;
use std::sync::Arc;
use std::time::Duration;

fn hub(cfg: gbrelay::config::Config) -> (Arc<Hub>, Arc<FakePuller>) {
    let puller = Arc::new(FakePuller::default());
    (Hub::new(HubConfig::from_config(&cfg), puller.clone(), Arc::new(TestMux)), puller)
}

fn live(channel: &str) -> StreamKey {
    StreamKey::Live { device: "34020000001180000001".into(), channel: channel.into(), substream: 0 }
}

#[tokio::test]
async fn stop_requested_while_the_invite_is_pending_calls_the_stopper_once_it_answers() {
    let (hub, puller) = hub(test_config());
    puller.set(
        "a",
        Behaviour::Stream {
            answer_ms: 200,
            frame_ms: 10,
            gop: 10,
            size: 100,
            frames: None,
            end_reason: None,
        },
    );
    let s = hub.open(&live("a")).unwrap();
    assert!(hub.stop(&live("a"), "api"));
    assert!(wait_until(Duration::from_secs(2), || !puller.stops("a").is_empty()).await);
    assert_eq!(puller.stops("a"), vec![(String::from("api"), puller.stops("a")[0].1)]);
    assert!(s.is_finished());
    assert!(hub.is_empty());
    // The key can be pulled again.
    hub.open(&live("a")).unwrap();
    assert_eq!(puller.pulls("a"), 2);
}

#[tokio::test]
async fn shutdown_stops_every_stream_and_waits_for_them() {
    let (hub, puller) = hub(test_config());
    for c in ["a", "b", "c"] {
        puller.set(c, Behaviour::live());
        hub.open(&live(c)).unwrap().pin();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    hub.shutdown(Duration::from_secs(2)).await;
    assert!(hub.is_empty());
    for c in ["a", "b", "c"] {
        assert_eq!(puller.stops(c)[0].0, "shutdown");
    }
}

#[tokio::test]
async fn attaching_a_taken_name_is_refused_and_stops_the_new_source() {
    let (hub, puller) = hub(test_config());
    let key = StreamKey::Rtp { name: "x".into() };
    hub.attach(key.clone(), spawn_source("x1".into(), Behaviour::live(), puller.stops.clone())).unwrap();
    let err =
        hub.attach(key, spawn_source("x2".into(), Behaviour::live(), puller.stops.clone())).unwrap_err();
    assert!(matches!(err, PullError::Busy(_)));
    assert_eq!(puller.stops("x2")[0].0, "duplicate");
    assert!(puller.stops("x1").is_empty());
}

#[tokio::test]
async fn a_pull_that_never_answers_fails_after_twice_the_first_frame_timeout() {
    let mut cfg = test_config();
    cfg.stream.first_frame_timeout = Duration::from_millis(200);
    let (hub, puller) = hub(cfg);
    puller.set(
        "hang",
        Behaviour::Stream {
            answer_ms: 60_000,
            frame_ms: 10,
            gop: 10,
            size: 100,
            frames: None,
            end_reason: None,
        },
    );
    let s = hub.open(&live("hang")).unwrap();
    let err = s.wait_started(Duration::from_secs(2)).await.unwrap_err();
    assert!(matches!(err, ViewError::Pull(PullError::Timeout(_))), "{err:?}");
    assert!(hub.is_empty());
}

fn lagged_drops() -> u64 {
    let text = gbrelay::metrics::render();
    text.lines()
        .find(|l| l.starts_with("gbrelay_viewer_drops_total{reason=\"lagged\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn viewer_behind_the_ring_jumps_to_a_keyframe_with_sequence_headers_and_is_counted() {
    let mut cfg = test_config();
    cfg.stream.ring_bytes = 128 * 1024;
    let (hub, puller) = hub(cfg);
    puller.set(
        "big",
        Behaviour::Stream {
            answer_ms: 1,
            frame_ms: 5,
            gop: 10,
            size: 16_000,
            frames: None,
            end_reason: None,
        },
    );
    let s = hub.open(&live("big")).unwrap();
    let mut v = s.subscribe_flv(gbrelay::config::FlvHevc::Enhanced, "flv");
    let mut out = vec![];
    v.first(&mut out).await.unwrap();
    let before = lagged_drops();
    // Stop reading while ~1.6 MB go by: far more than the 128 KiB ring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(s.ring_bytes() <= 128 * 1024);
    out.clear();
    assert!(v.next(&mut out).await);
    let after = lagged_drops();
    assert!(after > before, "lagged drops {before} -> {after}");
    let mut r = FlvReader::default();
    r.feed(b"FLV\x01\x05\0\0\0\x09\0\0\0\0");
    for b in &out {
        r.feed(b);
    }
    // No second FLV header; sequence header(s) again, then a keyframe.
    assert!(r.tags[0].is_seq_header(), "{:?}", r.tags[0]);
    let first = r.tags.iter().find(|t| t.kind == 9 && !t.is_seq_header()).unwrap();
    assert!(first.is_video_keyframe());
}

#[tokio::test]
async fn audio_only_source_gets_start_points_after_a_second_of_audio() {
    let (hub, _) = hub(test_config());
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        for n in 0.. {
            tokio::time::sleep(Duration::from_millis(2)).await;
            if tx.send(gbrelay::hub::SourceEvent::Frame(audio_frame(n, 20))).await.is_err() {
                return;
            }
        }
    });
    let handle = gbrelay::hub::PullHandle {
        events: rx,
        stopper: Box::new(|_| {}),
        transport: "udp".into(),
        started_at: std::time::Instant::now(),
    };
    let s = hub.attach(StreamKey::Rtp { name: "aac".into() }, handle).unwrap();
    let mut v = s.subscribe_flv(gbrelay::config::FlvHevc::Enhanced, "flv");
    let mut out = vec![];
    v.first(&mut out).await.unwrap();
    // FLV header: audio flag only (E.2 TypeFlagsAudio = 4).
    assert_eq!(&out[0][..5], b"FLV\x01\x04");
    let mut r = FlvReader::default();
    for b in &out {
        r.feed(b);
    }
    assert!(r.tags.iter().all(|t| t.kind == 8));
    assert!(r.tags[0].is_seq_header());
}
