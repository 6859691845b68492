//! The HTTP edge: play routes (HTTP-FLV, WS-FLV, HLS), the stream and media-only REST API,
//! `/metrics` and `/healthz`, on axum 0.8 over hyper 1.
//!
//! What belongs here: routing, mapping typed errors to HTTP statuses (DESIGN.md §3 convention 5:
//! only at the edge), CORS, the server loop with its stuck-writer guard. What does not: stream
//! state (in `hub`), the device API (in `devices.rs`, owned by the store side; merged in through
//! the `extra` router of [`router`]).
//!
//! Routes (DESIGN.md §5):
//! - `GET|HEAD /live/{deviceId}/{channelId}.flv` — HTTP-FLV; the same with a WebSocket upgrade is
//!   WS-FLV. `?hevc=codec-id-12|enhanced`, `?substream=1`.
//! - `GET|HEAD /live/{deviceId}/{channelId}/index.m3u8`, `/live/{deviceId}/{channelId}/{seq}.ts`.
//! - `/live/rtp/{name}.flv`, `/live/rtp/{name}/index.m3u8`: media-only streams.
//! - `GET /api/v1/streams`, `POST|DELETE /api/v1/streams/{deviceId}/{channelId}`,
//!   `POST /api/v1/rtp`, `DELETE /api/v1/rtp/{name}`, `GET /metrics`, `GET /healthz`.
//! - `OPTIONS` anywhere: answered by the CORS layer.

mod api;
pub mod devices;
mod io;
mod play;

pub use api::{RtpControl, RtpOpenRequest};
pub use io::{PeerAddr, StallGuardIo, StallGuardListener};

use crate::config::Config;
use crate::hub::{Hub, PullError, ViewError};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use std::sync::Arc;
use std::time::Duration;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

/// Everything the handlers need.
#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub config: Arc<Config>,
    /// Opens media-only receivers (`POST /api/v1/rtp`); `None` answers 501.
    pub rtp: Option<Arc<dyn RtpControl>>,
}

/// An error answer: JSON `{"error": "...", "reason": "..."}` (plus `sip_status` for a refused
/// INVITE).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// Short machine-readable kind: `not_found`, `offline`, `refused`, `timeout`, …
    pub error: String,
    /// Human-readable reason.
    pub reason: String,
    pub sip_status: Option<u16>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &str, reason: impl Into<String>) -> ApiError {
        ApiError { status, error: error.to_owned(), reason: reason.into(), sip_status: None }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.error, self.reason)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.error, "reason": self.reason });
        if let Some(s) = self.sip_status {
            body["sip_status"] = s.into();
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<PullError> for ApiError {
    fn from(e: PullError) -> ApiError {
        let reason = e.to_string();
        match e {
            PullError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", reason),
            PullError::Offline(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "offline", reason),
            PullError::Refused { status, .. } => ApiError {
                sip_status: Some(status),
                ..ApiError::new(StatusCode::BAD_GATEWAY, "refused", reason)
            },
            PullError::Timeout(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", reason),
            PullError::Busy(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", reason),
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", reason),
        }
    }
}

impl From<ViewError> for ApiError {
    fn from(e: ViewError) -> ApiError {
        match e {
            ViewError::Pull(p) => p.into(),
            ViewError::Timeout(r) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", r),
            ViewError::Ended(r) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "ended", format!("stream ended: {r}"))
            }
        }
    }
}

fn cors(origin: &str) -> CorsLayer {
    let allow = if origin.trim() == "*" {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origin.split(',').filter_map(|o| HeaderValue::from_str(o.trim()).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers(Any)
        .expose_headers(Any)
        .max_age(Duration::from_secs(3600))
}

/// The whole HTTP surface. `extra` is merged in (the device API router of `devices.rs`; pass
/// `Router::new()` for none).
pub fn router(state: AppState, extra: Router) -> Router {
    let cors = cors(&state.config.http.cors_origin);
    let own = Router::new()
        .route("/live/{device}/{file}", get(play::live_flv))
        .route("/live/{device}/{channel}/{file}", get(play::live_hls))
        .route("/api/v1/streams", get(api::list_streams))
        .route("/api/v1/streams/{device}/{channel}", post(api::start_stream).delete(api::stop_stream))
        .route("/api/v1/rtp", post(api::open_rtp))
        .route("/api/v1/rtp/{name}", delete(api::close_rtp))
        .route("/metrics", get(api::metrics_text))
        .route("/healthz", get(api::healthz))
        .with_state(state);
    own.merge(extra)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(cors)
}

/// Serve `router` on `listener` until the task is dropped, dropping connections whose writes stay
/// blocked for 10 s (see [`serve_with`]).
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    serve_with(listener, router, Duration::from_secs(10)).await
}

/// Serve with a stuck-writer timeout (use `stream.slow_viewer_timeout`): a connection whose socket
/// accepts no byte for `stuck_timeout` is closed and counted in `viewer_drops{reason="stuck"}`.
/// Handlers see the remote address as the request extension [`PeerAddr`].
///
/// HTTP/1.1 only (with upgrades, for WS-FLV): our own accept loop over hyper's `http1` builder
/// rather than `axum::serve`, whose auto HTTP/1+2 connection cost more memory per idle
/// connection. Like `axum::serve`, dropping this future (aborting its task) stops accepting and
/// asks every open connection to shut down gracefully (idle keep-alive ones close at once).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    stuck_timeout: Duration,
) -> std::io::Result<()> {
    use axum::serve::Listener as _;
    let mut listener = StallGuardListener::new(listener, stuck_timeout);
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop_on_drop = stop.clone().drop_guard();
    loop {
        let (io, peer) = listener.accept().await;
        let router = router.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |mut req: axum::extract::Request<_>| {
                req.extensions_mut().insert(PeerAddr(peer));
                tower_service::Service::call(&mut router.clone(), req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .writev(true)
                .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                .with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::trace!(error = %e, %peer, "HTTP connection failed");
                    }
                    return;
                }
                _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
            }
            if let Err(e) = conn.await {
                tracing::trace!(error = %e, %peer, "HTTP connection failed");
            }
        });
    }
}
