//! Device API (issue 3 item 7) against a real server on 127.0.0.1:0 with a fake `DeviceControl`.

use futures_util::future::BoxFuture;
use gbrelay::http::devices::{router, DeviceControl, DevicesState};
use gbrelay::store::{ChannelRecord, DeviceState, Store};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const NVR: &str = "34020000001180000001";
const IPC: &str = "34020000001320000009";
const SECRET: &str = "Pa55-very-secret";

#[derive(Default)]
struct FakeControl {
    online: Mutex<HashSet<String>>,
    catalog_calls: AtomicUsize,
    catalog_error: Mutex<Option<String>>,
}

impl FakeControl {
    fn set_online(&self, id: &str, on: bool) {
        let mut s = self.online.lock().unwrap();
        if on {
            s.insert(id.to_string());
        } else {
            s.remove(id);
        }
    }
}

impl DeviceControl for FakeControl {
    fn is_online(&self, device_id: &str) -> bool {
        self.online.lock().unwrap().contains(device_id)
    }
    fn refresh_catalog(&self, _device_id: &str) -> BoxFuture<'static, Result<(), String>> {
        self.catalog_calls.fetch_add(1, Ordering::SeqCst);
        let r = match self.catalog_error.lock().unwrap().clone() {
            Some(e) => Err(e),
            None => Ok(()),
        };
        Box::pin(async move { r })
    }
}

struct Api {
    base: String,
    client: reqwest::Client,
    store: Store,
    control: Arc<FakeControl>,
    /// Every response body seen, to check no password ever leaks.
    seen: Mutex<String>,
}

impl Api {
    async fn start() -> Api {
        Api::start_with(Store::open_in_memory().unwrap()).await
    }

    async fn start_with(store: Store) -> Api {
        let control = Arc::new(FakeControl::default());
        let app = router(DevicesState { store: store.clone(), control: control.clone() });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Api {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            store,
            control,
            seen: Mutex::new(String::new()),
        }
    }

    /// Sends a request; returns status, parsed JSON (Null when empty) and content type.
    async fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value, String) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.client.request(method, format!("{}{}", self.base, path));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let ctype =
            resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let text = resp.text().await.unwrap();
        self.seen.lock().unwrap().push_str(&text);
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        };
        (status, v, ctype)
    }

    fn assert_no_password_leaked(&self) {
        let seen = self.seen.lock().unwrap();
        assert!(!seen.is_empty());
        assert!(!seen.contains(SECRET), "a password value appeared in a response");
        assert!(!seen.contains("\"password\""), "a password field appeared in a response");
    }
}

fn assert_error(r: &(u16, Value, String), status: u16, code: &str) {
    assert_eq!(r.0, status, "{:?}", r.1);
    assert!(r.2.starts_with("application/json"), "content-type {:?}", r.2);
    assert_eq!(r.1["error"], code, "{:?}", r.1);
    assert!(r.1["reason"].as_str().is_some_and(|s| !s.is_empty()), "{:?}", r.1);
}

fn chans(dev: &str, n: usize) -> Vec<ChannelRecord> {
    (0..n)
        .map(|i| ChannelRecord {
            device_id: dev.into(),
            id: format!("340200000013200{i:05}"),
            name: format!("通道{i}·东门"),
            manufacturer: "Hikvision".into(),
            model: "DS-2CD".into(),
            status: if i % 2 == 0 { "ON" } else { "OFF" }.into(),
            parent_id: dev.into(),
            civil_code: "340200".into(),
            longitude: if i == 0 { Some(116.5) } else { None },
            latitude: if i == 0 { Some(39.9) } else { None },
            updated_at: 1_700_000_000_000,
        })
        .collect()
}

#[tokio::test]
async fn create_returns_201_with_the_device_and_a_second_create_is_409() {
    let api = Api::start().await;
    let body = json!({"id": NVR, "password": SECRET, "name": "北门NVR"}).to_string();
    let r = api.call("POST", "/api/v1/devices", Some(&body)).await;
    assert_eq!(r.0, 201, "{:?}", r.1);
    assert_eq!(r.1["id"], NVR);
    assert_eq!(r.1["name"], "北门NVR");
    assert_eq!(r.1["online"], false);
    assert_eq!(r.1["provisioned"], true);
    assert_eq!(r.1["has_password"], true);
    assert_eq!(r.1["channels"], 0);
    assert_eq!(r.1["last_seen"], Value::Null);
    assert!(r.1["created_at"].as_str().unwrap().ends_with('Z'));
    let stored = api.store.get_device(NVR).unwrap().unwrap();
    assert_eq!(stored.password.as_deref(), Some(SECRET));

    let again = api.call("POST", "/api/v1/devices", Some(&body)).await;
    assert_error(&again, 409, "device_exists");
    api.assert_no_password_leaked();
}

#[tokio::test]
async fn create_rejects_bad_ids_and_bodies_with_json_400() {
    let api = Api::start().await;
    for id in ["123", "3402000000118000000x", "340200000011800000011", ""] {
        let r = api.call("POST", "/api/v1/devices", Some(&json!({"id": id}).to_string())).await;
        assert_error(&r, 400, "bad_device_id");
    }
    for body in [
        "{not json",
        "[]",
        r#"{"name":"no id"}"#,
        r#"{"id":"34020000001180000001","pasword":"typo"}"#,
        r#"{"id":"34020000001180000001","password":""}"#,
        r#"{"id":"34020000001180000001","name":"a\u0007b"}"#,
    ] {
        let r = api.call("POST", "/api/v1/devices", Some(body)).await;
        assert_error(&r, 400, "bad_body");
    }
    assert_eq!(api.store.list_devices(0, 10).unwrap().0, 0, "nothing was created");
    // Without a password the configured default applies later.
    let r = api.call("POST", "/api/v1/devices", Some(&json!({"id": IPC}).to_string())).await;
    assert_eq!(r.0, 201);
    assert_eq!(r.1["has_password"], false);
}

#[tokio::test]
async fn oversized_body_is_a_json_413() {
    let api = Api::start().await;
    let big = format!(r#"{{"id":"{NVR}","name":"{}"}}"#, "x".repeat(3 * 1024 * 1024));
    let r = api.call("POST", "/api/v1/devices", Some(&big)).await;
    assert_error(&r, 413, "bad_body");
}

#[tokio::test]
async fn get_device_shows_live_online_state_counts_and_detail() {
    let api = Api::start().await;
    api.store.create_device(NVR, "仓库", Some(SECRET)).unwrap();
    api.store
        .set_device_state(
            NVR,
            &DeviceState {
                online: true,
                transport: "tcp".into(),
                remote: "192.0.2.7:5061".into(),
                last_seen: 1_700_000_000_123,
                expires_at: 1_700_003_600_123,
                call_id: "c".into(),
            },
        )
        .unwrap();
    api.store
        .set_device_info(NVR, &json!({"DeviceName": "x", "Manufacturer": "Dahua", "Channel": "16"}))
        .unwrap();
    api.store.replace_channels(NVR, &chans(NVR, 16)).unwrap();

    // Store says online, live view says offline: the live view wins.
    let r = api.call("GET", &format!("/api/v1/devices/{NVR}"), None).await;
    assert_eq!(r.0, 200);
    assert_eq!(r.1["online"], false);
    api.control.set_online(NVR, true);
    let r = api.call("GET", &format!("/api/v1/devices/{NVR}"), None).await;
    let d = &r.1;
    assert_eq!(d["online"], true);
    assert_eq!(d["name"], "仓库");
    assert_eq!(d["transport"], "tcp");
    assert_eq!(d["remote"], "192.0.2.7:5061");
    assert_eq!(d["channels"], 16);
    assert_eq!(d["last_seen"], "2023-11-14T22:13:20.123Z");
    assert_eq!(d["expires_at"], "2023-11-14T23:13:20.123Z");
    assert_eq!(d["manufacturer"], "Dahua");
    assert_eq!(d["info"], json!({"DeviceName": "x", "Manufacturer": "Dahua", "Channel": "16"}));
    assert_eq!(d["provisioned"], true);

    let r = api.call("GET", "/api/v1/devices/34020000001180009999", None).await;
    assert_error(&r, 404, "device_not_found");
    api.assert_no_password_leaked();
}

#[tokio::test]
async fn list_devices_pages_with_total_and_every_contract_field() {
    let api = Api::start().await;
    for i in 0..25 {
        api.store
            .create_device(&format!("340200000011800{i:05}"), &format!("设备{i}"), Some(SECRET))
            .unwrap();
    }
    api.store.replace_channels("34020000001180000003", &chans("34020000001180000003", 4)).unwrap();
    api.control.set_online("34020000001180000003", true);

    let r = api.call("GET", "/api/v1/devices", None).await;
    assert_eq!(r.0, 200);
    assert_eq!(r.1["total"], 25);
    let items = r.1["items"].as_array().unwrap();
    assert_eq!(items.len(), 25);
    for key in [
        "id",
        "name",
        "online",
        "transport",
        "remote",
        "channels",
        "last_seen",
        "manufacturer",
        "model",
        "firmware",
        "provisioned",
        "expires_at",
    ] {
        assert!(items.iter().all(|d| d.get(key).is_some()), "missing {key}");
    }
    assert_eq!(items[3]["online"], true);
    assert_eq!(items[3]["channels"], 4);
    assert_eq!(items[4]["online"], false);
    assert_eq!(items[3]["name"], "设备3");

    let r = api.call("GET", "/api/v1/devices?offset=20&limit=10", None).await;
    assert_eq!(r.1["total"], 25);
    let ids: Vec<_> = r.1["items"].as_array().unwrap().iter().map(|d| d["id"].clone()).collect();
    assert_eq!(ids, (20..25).map(|i| json!(format!("340200000011800{i:05}"))).collect::<Vec<_>>());

    let r = api.call("GET", "/api/v1/devices?limit=0", None).await;
    assert_eq!((r.1["total"].clone(), r.1["items"].as_array().unwrap().len()), (json!(25), 0));
    api.assert_no_password_leaked();
}

#[tokio::test]
async fn bad_query_parameters_are_json_400() {
    let api = Api::start().await;
    api.store.create_device(NVR, "n", None).unwrap();
    for q in ["limit=abc", "offset=-1", "limit=1e3", "offset=%FF"] {
        let r = api.call("GET", &format!("/api/v1/devices?{q}"), None).await;
        assert_error(&r, 400, "bad_query");
        let r = api.call("GET", &format!("/api/v1/devices/{NVR}/channels?{q}"), None).await;
        assert_error(&r, 400, "bad_query");
    }
}

#[tokio::test]
async fn put_and_patch_update_name_and_password_and_null_clears_the_password() {
    let api = Api::start().await;
    api.store.create_device(NVR, "old", Some("first-pass")).unwrap();
    let url = format!("/api/v1/devices/{NVR}");

    let r = api.call("PUT", &url, Some(r#"{"name":"新名字"}"#)).await;
    assert_eq!(r.0, 200, "{:?}", r.1);
    assert_eq!(r.1["name"], "新名字");
    assert_eq!(api.store.get_device(NVR).unwrap().unwrap().password.as_deref(), Some("first-pass"));

    let r = api.call("PATCH", &url, Some(&json!({"password": SECRET}).to_string())).await;
    assert_eq!(r.0, 200);
    assert_eq!(r.1["name"], "新名字", "absent name is unchanged");
    assert_eq!(api.store.get_device(NVR).unwrap().unwrap().password.as_deref(), Some(SECRET));

    let r = api.call("PATCH", &url, Some(r#"{"password":null}"#)).await;
    assert_eq!(r.1["has_password"], false);
    assert_eq!(api.store.get_device(NVR).unwrap().unwrap().password, None);

    // Sending the object back with its own id is fine; another id is not.
    let r = api.call("PUT", &url, Some(&json!({"id": NVR, "name": "n2"}).to_string())).await;
    assert_eq!(r.0, 200);
    let r = api.call("PUT", &url, Some(&json!({"id": IPC, "name": "n3"}).to_string())).await;
    assert_error(&r, 400, "bad_body");
    let r = api.call("PUT", &url, Some(r#"{"online":true}"#)).await;
    assert_error(&r, 400, "bad_body");
    assert_eq!(api.store.get_device(NVR).unwrap().unwrap().name, "n2");

    let r = api.call("PUT", &format!("/api/v1/devices/{IPC}"), Some(r#"{"name":"x"}"#)).await;
    assert_error(&r, 404, "device_not_found");
    assert!(api.store.get_device(IPC).unwrap().is_none(), "update never creates");
    api.assert_no_password_leaked();
}

#[tokio::test]
async fn delete_is_204_then_404_and_removes_channels() {
    let api = Api::start().await;
    api.store.create_device(NVR, "n", None).unwrap();
    api.store.replace_channels(NVR, &chans(NVR, 3)).unwrap();
    let url = format!("/api/v1/devices/{NVR}");
    let r = api.call("DELETE", &url, None).await;
    assert_eq!((r.0, r.1.clone()), (204, Value::Null));
    assert_eq!(api.store.channel_count(NVR).unwrap(), 0);
    assert_error(&api.call("GET", &url, None).await, 404, "device_not_found");
    assert_error(&api.call("DELETE", &url, None).await, 404, "device_not_found");
}

#[tokio::test]
async fn channels_list_serves_a_thousand_per_page_with_chinese_names_and_total() {
    let api = Api::start().await;
    api.store.create_device(NVR, "n", None).unwrap();
    api.store.replace_channels(NVR, &chans(NVR, 1200)).unwrap();
    let url = format!("/api/v1/devices/{NVR}/channels");

    let r = api.call("GET", &url, None).await;
    assert_eq!(r.0, 200);
    assert_eq!(r.1["total"], 1200);
    assert_eq!(r.1["items"].as_array().unwrap().len(), 100, "default limit");

    let r = api.call("GET", &format!("{url}?limit=1000"), None).await;
    let items = r.1["items"].as_array().unwrap();
    assert_eq!(items.len(), 1000);
    let first = &items[0];
    assert_eq!(first["id"], "34020000001320000000");
    assert_eq!(first["name"], "通道0·东门");
    assert_eq!(first["status"], "ON");
    assert_eq!(first["manufacturer"], "Hikvision");
    assert_eq!(first["model"], "DS-2CD");
    assert_eq!(first["parent_id"], NVR);
    assert_eq!(first["civil_code"], "340200");
    assert_eq!(first["longitude"], 116.5);
    assert_eq!(first["latitude"], 39.9);
    assert_eq!(items[1]["longitude"], Value::Null);
    assert_eq!(items[1]["status"], "OFF");

    let r = api.call("GET", &format!("{url}?offset=1000&limit=1000"), None).await;
    assert_eq!(r.1["total"], 1200);
    assert_eq!(r.1["items"].as_array().unwrap().len(), 200);

    let r = api.call("GET", &format!("{url}?limit=100000"), None).await;
    assert_eq!(r.1["items"].as_array().unwrap().len(), 1200, "clamped to the cap, not refused");

    let r = api.call("GET", &format!("/api/v1/devices/{IPC}/channels"), None).await;
    assert_error(&r, 404, "device_not_found");
}

#[tokio::test]
async fn catalog_refresh_is_202_when_online_503_when_offline_404_when_unknown() {
    let api = Api::start().await;
    api.store.create_device(NVR, "n", None).unwrap();
    let url = format!("/api/v1/devices/{NVR}/catalog");

    assert_error(
        &api.call("POST", &format!("/api/v1/devices/{IPC}/catalog"), None).await,
        404,
        "device_not_found",
    );
    assert_error(&api.call("POST", &url, None).await, 503, "device_offline");
    assert_eq!(api.control.catalog_calls.load(Ordering::SeqCst), 0, "offline: no query sent");

    api.control.set_online(NVR, true);
    let r = api.call("POST", &url, None).await;
    assert_eq!(r.0, 202, "{:?}", r.1);
    assert_eq!(r.1["device_id"], NVR);
    assert_eq!(api.control.catalog_calls.load(Ordering::SeqCst), 1);

    *api.control.catalog_error.lock().unwrap() = Some("transport closed".into());
    let r = api.call("POST", &url, None).await;
    assert_error(&r, 503, "device_unavailable");
    assert_eq!(r.1["reason"], "transport closed");
}

#[tokio::test]
async fn wrong_method_is_a_json_405() {
    let api = Api::start().await;
    assert_error(&api.call("DELETE", "/api/v1/devices", None).await, 405, "method_not_allowed");
    assert_error(
        &api.call("GET", &format!("/api/v1/devices/{NVR}/catalog"), None).await,
        405,
        "method_not_allowed",
    );
}

#[tokio::test]
async fn a_store_failure_is_a_json_500_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gbrelay.db");
    let api = Api::start_with(Store::open(&path).unwrap()).await;
    api.store.create_device(NVR, "n", None).unwrap();
    // Break the database behind the store's back.
    rusqlite::Connection::open(&path).unwrap().execute_batch("DROP TABLE channels").unwrap();
    let r = api.call("GET", &format!("/api/v1/devices/{NVR}/channels"), None).await;
    assert_error(&r, 500, "store_error");
    let r = api.call("GET", "/api/v1/devices", None).await;
    assert_error(&r, 500, "store_error");
}
