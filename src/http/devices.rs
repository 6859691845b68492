//! Device API (issue 3 item 7): JSON over the HTTP listener for devices and their channels.
//!
//! Belongs here: the `/api/v1/devices` routes, their request validation, JSON views and error
//! mapping. Not here: SIP (the live view and catalog queries come through [`DeviceControl`], which
//! the signalling layer implements), persistence (the [`Store`]), play routes and `/metrics`.
//!
//! Routes (contract):
//! - `GET    /api/v1/devices?offset=&limit=`          → 200 `{"total":N,"items":[device…]}`
//! - `POST   /api/v1/devices` `{"id","password","name"}` → 201 device detail; 409 exists; 400 bad id
//! - `GET    /api/v1/devices/{id}`                     → 200 device detail; 404
//! - `PUT`/`PATCH /api/v1/devices/{id}` `{"name","password"}` → 200 device detail; 404
//!   (absent field: unchanged; `"password": null`: cleared, the configured default applies)
//! - `DELETE /api/v1/devices/{id}`                     → 204; 404
//! - `GET    /api/v1/devices/{id}/channels?offset=&limit=` → 200 `{"total":N,"items":[channel…]}`; 404
//! - `POST   /api/v1/devices/{id}/catalog`             → 202; 404 unknown; 503 offline; 504 no answer
//!
//! `offset` defaults to 0, `limit` to 100 and is capped at 5000 (a larger value is clamped, not
//! refused). Errors are `{"error":"<code>","reason":"<text>"}`. Passwords are never serialized: the
//! views below have no password field at all (only `has_password`).
//!
//! Store calls are synchronous; every handler runs them in `tokio::task::spawn_blocking` so a slow
//! disk (WAL checkpoint fsync) never stalls a runtime worker that is also moving media. The sync
//! `DeviceControl::is_online` is called there too, so an implementation may use blocking locks
//! (`blocking_read` and the like); only `refresh_catalog`'s future is awaited on the runtime.

use crate::store::{ChannelRecord, DeviceRecord, Store, StoreError};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Default page size of list routes.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size served; larger requests are clamped to it.
pub const MAX_LIMIT: usize = 5000;
/// How long `POST …/catalog` waits for the signalling layer to accept the query.
pub const CATALOG_TIMEOUT: Duration = Duration::from_secs(10);

/// What the API needs from the signalling side.
pub trait DeviceControl: Send + Sync + 'static {
    /// Live view from the SIP side: registered and keepalives current.
    fn is_online(&self, device_id: &str) -> bool;
    /// Sends a Catalog query to the device. `Err` carries a human reason (offline, unknown…).
    fn refresh_catalog(&self, device_id: &str) -> BoxFuture<'static, Result<(), String>>;
}

/// State of the device router.
#[derive(Clone)]
pub struct DevicesState {
    pub store: Store,
    pub control: Arc<dyn DeviceControl>,
}

/// The `/api/v1/devices` routes, state applied. Merge it into the main router.
pub fn router(state: DevicesState) -> Router {
    Router::new()
        .route("/api/v1/devices", get(list_devices).post(create_device))
        .route(
            "/api/v1/devices/{id}",
            get(get_device).put(update_device).patch(update_device).delete(delete_device),
        )
        .route("/api/v1/devices/{id}/channels", get(list_channels))
        .route("/api/v1/devices/{id}/catalog", post(refresh_catalog))
        // Applies to the routes above only (kept through `Router::merge`).
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An API error: status, short machine code, human reason.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub reason: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, reason: impl Into<String>) -> Self {
        ApiError { status, code, reason: reason.into() }
    }
    fn bad_request(code: &'static str, reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, reason)
    }
    fn device_not_found(id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "device_not_found", format!("no device with id {id:?}"))
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    reason: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { error: self.code, reason: &self.reason })).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "device API: store failure");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store_error", e.to_string())
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this path")
}

/// Runs store work off the async workers (see the header).
async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        tracing::error!(error = %e, "device API: blocking task failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal task failed")
    })?
}

// ---------------------------------------------------------------------------------------------
// Request parsing

/// `offset`/`limit` from the query string; unknown parameters are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Page {
    offset: usize,
    limit: usize,
}

fn parse_page(q: Result<Query<HashMap<String, String>>, QueryRejection>) -> Result<Page, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let num = |key: &str, default: usize| -> Result<usize, ApiError> {
        match q.get(key).map(|v| v.trim()) {
            None | Some("") => Ok(default),
            Some(v) => v.parse::<usize>().map_err(|_| {
                ApiError::bad_request("bad_query", format!("{key} must be a non-negative integer, got {v:?}"))
            }),
        }
    };
    Ok(Page { offset: num("offset", 0)?, limit: num("limit", DEFAULT_LIMIT)?.min(MAX_LIMIT) })
}

fn path_id(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(id)| id).map_err(|e| ApiError::bad_request("bad_path", e.body_text()))
}

fn parse_body<T: serde::de::DeserializeOwned>(b: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = b.map_err(|e| ApiError::new(e.status(), "bad_body", e.body_text()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("bad_body", format!("invalid JSON body: {e}")))
}

/// GB/T 28181-2016 Annex D: a device/channel code is 20 decimal digits.
pub fn is_gb_id(id: &str) -> bool {
    id.len() == 20 && id.bytes().all(|b| b.is_ascii_digit())
}

fn check_text(field: &str, v: &str, max_chars: usize, allow_empty: bool) -> Result<(), ApiError> {
    if !allow_empty && v.is_empty() {
        return Err(ApiError::bad_request("bad_body", format!("{field} must not be empty")));
    }
    if v.chars().count() > max_chars {
        return Err(ApiError::bad_request(
            "bad_body",
            format!("{field} is longer than {max_chars} characters"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(ApiError::bad_request("bad_body", format!("{field} contains control characters")));
    }
    Ok(())
}

const MAX_NAME: usize = 128;
const MAX_PASSWORD: usize = 128;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn explicit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    /// Accepted when equal to the path's ID (clients that send the object back).
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "explicit")]
    password: Option<Option<String>>,
}

// ---------------------------------------------------------------------------------------------
// Views (no password field anywhere)

fn rfc3339(ms: i64) -> Option<String> {
    if ms <= 0 {
        return None;
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

#[derive(Serialize)]
struct DeviceView {
    id: String,
    name: String,
    online: bool,
    transport: String,
    remote: String,
    channels: usize,
    last_seen: Option<String>,
    manufacturer: String,
    model: String,
    firmware: String,
    provisioned: bool,
    has_password: bool,
    expires_at: Option<String>,
}

#[derive(Serialize)]
struct DeviceDetail {
    #[serde(flatten)]
    base: DeviceView,
    info: serde_json::Value,
    created_at: Option<String>,
}

fn device_view(d: DeviceRecord, online: bool, channels: usize) -> DeviceView {
    DeviceView {
        online,
        channels,
        last_seen: rfc3339(d.state.last_seen),
        expires_at: rfc3339(d.state.expires_at),
        has_password: d.password.is_some(),
        id: d.id,
        name: d.name,
        transport: d.state.transport,
        remote: d.state.remote,
        manufacturer: d.manufacturer,
        model: d.model,
        firmware: d.firmware,
        provisioned: d.provisioned,
    }
}

fn device_detail(mut d: DeviceRecord, online: bool, channels: usize) -> DeviceDetail {
    let info = match std::mem::take(&mut d.info) {
        serde_json::Value::Null => serde_json::Value::Object(Default::default()),
        v => v,
    };
    let created_at = rfc3339(d.created_at);
    DeviceDetail { base: device_view(d, online, channels), info, created_at }
}

#[derive(Serialize)]
struct ChannelView {
    id: String,
    device_id: String,
    name: String,
    status: String,
    manufacturer: String,
    model: String,
    parent_id: String,
    civil_code: String,
    longitude: Option<f64>,
    latitude: Option<f64>,
    updated_at: Option<String>,
}

fn channel_view(c: ChannelRecord) -> ChannelView {
    ChannelView {
        updated_at: rfc3339(c.updated_at),
        id: c.id,
        device_id: c.device_id,
        name: c.name,
        status: c.status,
        manufacturer: c.manufacturer,
        model: c.model,
        parent_id: c.parent_id,
        civil_code: c.civil_code,
        // JSON has no NaN/inf; serde_json would write null anyway, make it explicit.
        longitude: c.longitude.filter(|v| v.is_finite()),
        latitude: c.latitude.filter(|v| v.is_finite()),
    }
}

#[derive(Serialize)]
struct PageBody<T> {
    total: usize,
    items: Vec<T>,
}

/// Loads one device's detail view (None if unknown).
fn load_detail(st: &DevicesState, id: &str) -> Result<Option<DeviceDetail>, ApiError> {
    let Some(d) = st.store.get_device(id)? else { return Ok(None) };
    let channels = st.store.channel_count(id)?;
    let online = st.control.is_online(id);
    Ok(Some(device_detail(d, online, channels)))
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn list_devices(
    State(st): State<DevicesState>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<PageBody<DeviceView>>, ApiError> {
    let page = parse_page(q)?;
    blocking(move || {
        let (total, devices) = st.store.list_devices(page.offset, page.limit)?;
        let mut items = Vec::with_capacity(devices.len());
        for d in devices {
            let channels = st.store.channel_count(&d.id)?;
            let online = st.control.is_online(&d.id);
            items.push(device_view(d, online, channels));
        }
        Ok(Json(PageBody { total, items }))
    })
    .await
}

async fn get_device(
    State(st): State<DevicesState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DeviceDetail>, ApiError> {
    let id = path_id(id)?;
    blocking(move || load_detail(&st, &id)?.map(Json).ok_or_else(|| ApiError::device_not_found(&id))).await
}

async fn create_device(
    State(st): State<DevicesState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b: CreateBody = parse_body(body)?;
    if !is_gb_id(&b.id) {
        return Err(ApiError::bad_request(
            "bad_device_id",
            format!("id must be 20 decimal digits (GB/T 28181 Annex D), got {:?}", b.id),
        ));
    }
    let name = b.name.unwrap_or_default();
    check_text("name", &name, MAX_NAME, true)?;
    if let Some(p) = &b.password {
        check_text("password", p, MAX_PASSWORD, false)?;
    }
    let id = b.id;
    let detail = blocking(move || {
        if !st.store.create_device(&id, &name, b.password.as_deref())? {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "device_exists",
                format!("device {id:?} already exists"),
            ));
        }
        load_detail(&st, &id)?.ok_or_else(|| ApiError::device_not_found(&id))
    })
    .await?;
    let mut resp = (StatusCode::CREATED, Json(&detail)).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/api/v1/devices/{}", detail.base.id)) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(resp)
}

async fn update_device(
    State(st): State<DevicesState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DeviceDetail>, ApiError> {
    let id = path_id(id)?;
    let b: UpdateBody = parse_body(body)?;
    if b.id.as_deref().is_some_and(|bid| bid != id) {
        return Err(ApiError::bad_request(
            "bad_body",
            "id in the body differs from the path; IDs cannot change",
        ));
    }
    if let Some(n) = &b.name {
        check_text("name", n, MAX_NAME, true)?;
    }
    if let Some(Some(p)) = &b.password {
        check_text("password", p, MAX_PASSWORD, false)?;
    }
    blocking(move || {
        let pw = b.password.as_ref().map(|p| p.as_deref());
        if !st.store.update_device(&id, b.name.as_deref(), pw)? {
            return Err(ApiError::device_not_found(&id));
        }
        load_detail(&st, &id)?.map(Json).ok_or_else(|| ApiError::device_not_found(&id))
    })
    .await
}

async fn delete_device(
    State(st): State<DevicesState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = path_id(id)?;
    blocking(move || {
        if st.store.delete_device(&id)? {
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(ApiError::device_not_found(&id))
        }
    })
    .await
}

async fn list_channels(
    State(st): State<DevicesState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<PageBody<ChannelView>>, ApiError> {
    let id = path_id(id)?;
    let page = parse_page(q)?;
    blocking(move || {
        if st.store.get_device(&id)?.is_none() {
            return Err(ApiError::device_not_found(&id));
        }
        let (total, chans) = st.store.list_channels(&id, page.offset, page.limit)?;
        Ok(Json(PageBody { total, items: chans.into_iter().map(channel_view).collect() }))
    })
    .await
}

#[derive(Serialize)]
struct CatalogAccepted {
    status: &'static str,
    device_id: String,
}

async fn refresh_catalog(
    State(st): State<DevicesState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(id)?;
    // `is_online` is sync and may take a blocking lock: call it off the async workers too.
    let (known, online) = {
        let (st, id) = (st.clone(), id.clone());
        blocking(move || {
            let known = st.store.get_device(&id)?.is_some();
            Ok((known, known && st.control.is_online(&id)))
        })
        .await?
    };
    if !known {
        return Err(ApiError::device_not_found(&id));
    }
    if !online {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "device_offline",
            format!("device {id:?} is offline"),
        ));
    }
    match tokio::time::timeout(CATALOG_TIMEOUT, st.control.refresh_catalog(&id)).await {
        Ok(Ok(())) => {
            Ok((StatusCode::ACCEPTED, Json(CatalogAccepted { status: "catalog_query_sent", device_id: id }))
                .into_response())
        }
        Ok(Err(reason)) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "device_unavailable", reason)),
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("catalog query not accepted within {CATALOG_TIMEOUT:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(q: &str) -> Result<Page, ApiError> {
        let uri: axum::http::Uri = format!("/x?{q}").parse().unwrap();
        parse_page(Query::try_from_uri(&uri))
    }

    #[test]
    fn page_defaults_clamps_and_rejects_non_numbers() {
        assert_eq!(page("").unwrap(), Page { offset: 0, limit: DEFAULT_LIMIT });
        assert_eq!(page("offset=5&limit=7&x=y").unwrap(), Page { offset: 5, limit: 7 });
        assert_eq!(page("limit=999999").unwrap().limit, MAX_LIMIT);
        assert_eq!(page("limit=").unwrap().limit, DEFAULT_LIMIT);
        for bad in ["limit=-1", "offset=abc", "limit=1.5", "offset=99999999999999999999999"] {
            let e = page(bad).unwrap_err();
            assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "bad_query"), "{bad}");
        }
    }

    #[test]
    fn gb_id_is_exactly_twenty_ascii_digits() {
        assert!(is_gb_id("34020000001180000001"));
        assert!(!is_gb_id("3402000000118000000"));
        assert!(!is_gb_id("340200000011800000012"));
        assert!(!is_gb_id("3402000000118000000a"));
        assert!(!is_gb_id("３４020000001180000001"), "full-width digits are not ASCII");
    }

    #[test]
    fn times_render_as_rfc3339_utc_and_zero_as_none() {
        assert_eq!(rfc3339(0), None);
        assert_eq!(rfc3339(1_700_000_000_123).as_deref(), Some("2023-11-14T22:13:20.123Z"));
    }
}
