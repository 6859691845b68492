//! Play routes: HTTP-FLV, WS-FLV and HLS (DESIGN.md §5).
//!
//! What belongs here: URL → [`StreamKey`] parsing, waiting for the first keyframe, handing each
//! batch of ready tags to the socket (hyper queues the `Bytes` of one batch and writes them with
//! one `writev`; WebSocket feeds a batch and flushes once), and telling HLS clients apart. What
//! does not: stream state and lifecycle (`hub`, which also keeps the HLS viewer count), error
//! mapping (`mod.rs`).
//!
//! An HLS client is the hash of its remote IP address (not the port: a player may use several
//! connections) and its `User-Agent`. No cookie or URL token: players handle those unevenly, and
//! a token would have to be written into every segment URI of the playlist. So players behind one
//! NAT or proxy with the same User-Agent count as one (`X-Forwarded-*` is not trusted); without
//! connection info (a router served without [`super::serve_with`]) only the User-Agent is used.

use super::{ApiError, AppState, PeerAddr};
use crate::config::FlvHevc;
use crate::hub::{FlvViewer, StreamKey};
use crate::metrics::{metrics, protocol};
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::time::Instant;

/// Query parameters of the play URLs.
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct PlayQuery {
    /// `enhanced` (default from config) or `codec-id-12`.
    hevc: Option<String>,
    /// 0 main stream, 1 sub-stream.
    substream: Option<u8>,
}

fn bad_request(reason: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", reason)
}

fn stream_key(device: String, channel: String, q: &PlayQuery) -> Result<StreamKey, ApiError> {
    if channel.is_empty() || device.is_empty() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "empty device or channel"));
    }
    if device == "rtp" {
        return Ok(StreamKey::Rtp { name: channel });
    }
    let substream = q.substream.unwrap_or(0);
    if substream > 1 {
        return Err(bad_request(format!("substream {substream} (0 main, 1 sub)")));
    }
    Ok(StreamKey::Live { device, channel, substream })
}

fn hevc_mode(q: &PlayQuery, default: FlvHevc) -> Result<FlvHevc, ApiError> {
    match q.hevc.as_deref() {
        None | Some("") => Ok(default),
        Some("enhanced") => Ok(FlvHevc::Enhanced),
        Some("codec-id-12") | Some("12") => Ok(FlvHevc::CodecId12),
        Some(other) => Err(bad_request(format!("hevc={other:?} (enhanced | codec-id-12)"))),
    }
}

fn no_cache(resp: &mut Response) {
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

/// `GET|HEAD /live/{device}/{channel}.flv`, with or without a WebSocket upgrade.
pub(super) async fn live_flv(
    State(app): State<AppState>,
    Path((device, file)): Path<(String, String)>,
    query: Result<Query<PlayQuery>, QueryRejection>,
    method: Method,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    let Some(channel) = file.strip_suffix(".flv") else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{file:?} is not a .flv")));
    };
    let key = stream_key(device, channel.to_owned(), &q)?;
    let mode = hevc_mode(&q, app.config.http.flv_hevc)?;
    if method == Method::HEAD {
        // HEAD never starts a pull; it says what a GET would carry.
        let mut resp = StatusCode::OK.into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("video/x-flv"));
        no_cache(&mut resp);
        return Ok(resp);
    }
    let proto = if ws.is_ok() { "ws-flv" } else { "flv" };
    let stream = app.hub.open(&key)?;
    let mut viewer = stream.subscribe_flv(mode, proto);
    let mut first = Vec::with_capacity(64);
    viewer.first(&mut first).await?;
    metrics().viewer_ttfb_seconds.get_or_create(&protocol(proto)).observe(t0.elapsed().as_secs_f64());

    match ws {
        Ok(upgrade) => Ok(upgrade.on_upgrade(move |socket| ws_flv(socket, viewer, first))),
        Err(_) => {
            let egress = metrics().egress_bytes.get_or_create(&protocol("flv")).clone();
            egress.inc_by(first.iter().map(|b| b.len() as u64).sum());
            let state = FlvBody { viewer, batch: first, next: 0, egress };
            let body = futures_util::stream::unfold(state, |mut st| async move {
                if st.next == st.batch.len() {
                    st.batch.clear();
                    // The first batch (the cached GOP) can be a few hundred tags; steady state
                    // is one or two: do not keep the join's capacity for the viewer's lifetime.
                    st.batch.shrink_to(FLV_BATCH_KEEP);
                    st.next = 0;
                    if !st.viewer.next(&mut st.batch).await {
                        return None;
                    }
                    st.egress.inc_by(st.batch.iter().map(|b| b.len() as u64).sum());
                }
                let b = std::mem::take(st.batch.get_mut(st.next)?);
                st.next += 1;
                Some((Ok::<Bytes, Infallible>(b), st))
            });
            let mut resp = Response::new(Body::from_stream(body));
            resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("video/x-flv"));
            no_cache(&mut resp);
            Ok(resp)
        }
    }
}

/// Tag slots an FLV viewer keeps between batches.
const FLV_BATCH_KEEP: usize = 16;

struct FlvBody {
    viewer: FlvViewer,
    /// The current batch, handed to hyper one `Bytes` at a time without waiting in between, so
    /// hyper queues the whole batch for one vectored write; `next` is the first not handed yet.
    batch: Vec<Bytes>,
    next: usize,
    egress: prometheus_client::metrics::counter::Counter,
}

/// WS-FLV: every batch goes out as binary messages fed together and flushed once.
async fn ws_flv(socket: WebSocket, mut viewer: FlvViewer, first: Vec<Bytes>) {
    let egress = metrics().egress_bytes.get_or_create(&protocol("ws-flv")).clone();
    let (mut tx, mut rx) = socket.split();
    let mut batch = first;
    loop {
        let n: u64 = batch.iter().map(|b| b.len() as u64).sum();
        for b in batch.drain(..) {
            if tx.feed(Message::Binary(b)).await.is_err() {
                return;
            }
        }
        if tx.flush().await.is_err() {
            return;
        }
        egress.inc_by(n);
        tokio::select! {
            more = viewer.next(&mut batch) => {
                if !more {
                    let _ = tx.send(Message::Close(None)).await;
                    return;
                }
            }
            msg = rx.next() => match msg {
                // The player only ever closes (or pings, which tungstenite answers).
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// The HLS client id of a request (see the module header).
fn hls_client(peer: Option<&PeerAddr>, headers: &HeaderMap) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    peer.map(|p| p.0.ip()).hash(&mut h);
    headers.get(header::USER_AGENT).map(|v| v.as_bytes()).hash(&mut h);
    h.finish()
}

/// `GET|HEAD /live/{device}/{channel}/index.m3u8` and `/live/{device}/{channel}/{seq}.ts`.
pub(super) async fn live_hls(
    State(app): State<AppState>,
    Path((device, channel, file)): Path<(String, String, String)>,
    query: Result<Query<PlayQuery>, QueryRejection>,
    method: Method,
    peer: Option<axum::Extension<PeerAddr>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| bad_request(e.body_text()))?;
    // A HEAD probes; it is not watching.
    let client = (method != Method::HEAD).then(|| hls_client(peer.as_ref().map(|p| &p.0), &headers));
    let key = stream_key(device, channel, &q)?;
    if file == "index.m3u8" {
        if method == Method::HEAD {
            let mut resp = StatusCode::OK.into_response();
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/vnd.apple.mpegurl"));
            no_cache(&mut resp);
            return Ok(resp);
        }
        let t0 = Instant::now();
        let stream = app.hub.open(&key)?;
        let text = stream.hls_playlist(client).await?;
        metrics().viewer_ttfb_seconds.get_or_create(&protocol("hls")).observe(t0.elapsed().as_secs_f64());
        metrics().egress_bytes.get_or_create(&protocol("hls")).inc_by(text.len() as u64);
        let mut resp = text.into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/vnd.apple.mpegurl"));
        no_cache(&mut resp);
        return Ok(resp);
    }
    let seq: u64 = file.strip_suffix(".ts").and_then(|s| s.parse().ok()).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{file:?} is not a segment"))
    })?;
    // A segment never starts a pull: it only exists for a running stream.
    let stream = app.hub.get(&key).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("stream {key} is not running"))
    })?;
    let data = stream.hls_segment(seq, client).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("segment {seq} not in window"))
    })?;
    if method != Method::HEAD {
        metrics().egress_bytes.get_or_create(&protocol("hls")).inc_by(data.len() as u64);
    }
    let mut resp = Response::new(Body::from(data));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp2t"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(addr: &str, ua: Option<&str>) -> u64 {
        let mut h = HeaderMap::new();
        if let Some(ua) = ua {
            h.insert(header::USER_AGENT, HeaderValue::from_str(ua).unwrap());
        }
        hls_client(Some(&PeerAddr(addr.parse().unwrap())), &h)
    }

    #[test]
    fn hls_client_is_the_address_without_port_and_the_user_agent() {
        let a = client("10.0.0.1:5000", Some("hls.js"));
        assert_eq!(a, client("10.0.0.1:5001", Some("hls.js")), "another connection, same client");
        assert_ne!(a, client("10.0.0.2:5000", Some("hls.js")));
        assert_ne!(a, client("10.0.0.1:5000", Some("VLC/3.0")));
        assert_ne!(a, client("10.0.0.1:5000", None));
    }
}
