//! REST API for streams and media-only receivers, `/metrics` and `/healthz`.
//!
//! What belongs here: `GET /api/v1/streams`, `POST|DELETE /api/v1/streams/{deviceId}/{channelId}`,
//! `POST /api/v1/rtp`, `DELETE /api/v1/rtp/{name}`, the [`RtpControl`] seam the gateway glue
//! implements, and the text endpoints. What does not: the device API (`devices.rs`), play routes
//! (`play.rs`).

use super::{ApiError, AppState};
use crate::config::Transport;
use crate::hub::{PullHandle, StreamKey};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::future::BoxFuture;

/// `POST /api/v1/rtp` body.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RtpOpenRequest {
    /// Stream name: plays at `/live/rtp/{stream}.flv`.
    pub stream: String,
    pub transport: Transport,
    /// `media.rtp_port`: the shared port (then `ssrc` is required); 0: one from the pool.
    #[serde(default)]
    pub port: u16,
    pub ssrc: Option<u32>,
    /// `tcp-active` only, and required there: the source's `ip:port` the gateway connects to
    /// (the address a device would give in its SDP answer). An extension of the body.
    #[serde(default)]
    pub peer: Option<std::net::SocketAddr>,
}

/// Opens media-only receivers (implemented by the gateway glue over `media`).
pub trait RtpControl: Send + Sync + 'static {
    /// Open a receiver; answer the port it listens on and the source handle (its stopper closes
    /// the receiver). Errors carry their HTTP status (400 bad request, 409 port taken, 503 pool
    /// exhausted, …).
    fn open(&self, req: RtpOpenRequest) -> BoxFuture<'static, Result<(u16, PullHandle), ApiError>>;
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct SubstreamQuery {
    substream: Option<u8>,
}

pub(super) async fn list_streams(State(app): State<AppState>) -> Response {
    let items = app.hub.list();
    Json(serde_json::json!({ "total": items.len(), "items": items })).into_response()
}

fn live_key(device: String, channel: String, q: &SubstreamQuery) -> StreamKey {
    StreamKey::Live { device, channel, substream: q.substream.unwrap_or(0) }
}

/// Start (and pin) a stream; answers its info once the device has answered.
pub(super) async fn start_stream(
    State(app): State<AppState>,
    Path((device, channel)): Path<(String, String)>,
    Query(q): Query<SubstreamQuery>,
) -> Result<Response, ApiError> {
    let key = live_key(device, channel, &q);
    let stream = app.hub.open(&key)?;
    stream.pin();
    stream.wait_started(app.config.stream.first_frame_timeout).await?;
    Ok(Json(stream.info()).into_response())
}

pub(super) async fn stop_stream(
    State(app): State<AppState>,
    Path((device, channel)): Path<(String, String)>,
    Query(q): Query<SubstreamQuery>,
) -> Result<StatusCode, ApiError> {
    let key = live_key(device, channel, &q);
    if app.hub.stop(&key, "api") {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("stream {key} is not running")))
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

pub(super) async fn open_rtp(
    State(app): State<AppState>,
    body: Result<Json<RtpOpenRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    if !valid_name(&req.stream) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("stream name {:?}: 1-64 characters of A-Z a-z 0-9 - _ .", req.stream),
        ));
    }
    let key = StreamKey::Rtp { name: req.stream.clone() };
    if app.hub.get(&key).is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "exists",
            format!("stream {:?} is open", req.stream),
        ));
    }
    let Some(ctl) = app.rtp.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported",
            "media-only receivers are not enabled",
        ));
    };
    let name = req.stream.clone();
    let (port, handle) = ctl.open(req).await?;
    app.hub.attach(key, handle).map_err(|e| ApiError::new(StatusCode::CONFLICT, "exists", e.to_string()))?;
    Ok((
        StatusCode::OK,
        Json(serde_json::json!({
            "port": port,
            "stream": name,
            "flv": format!("/live/rtp/{name}.flv"),
            "hls": format!("/live/rtp/{name}/index.m3u8"),
        })),
    )
        .into_response())
}

pub(super) async fn close_rtp(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if app.hub.stop(&StreamKey::Rtp { name: name.clone() }, "api") {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no media-only stream {name:?}")))
    }
}

/// Prometheus / OpenMetrics text (`prometheus-client` writes OpenMetrics 1.0, ending in `# EOF`).
pub(super) async fn metrics_text() -> Response {
    let mut resp = crate::metrics::render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

pub(super) async fn healthz(State(app): State<AppState>) -> Response {
    Json(serde_json::json!({ "status": "ok", "streams": app.hub.len() })).into_response()
}
