//! Keepalive and online/offline, the restart case, catalog aggregation over several GB2312
//! MESSAGEs, catalog notifications and DeviceInfo — over real sockets on 127.0.0.1.

mod signal_ua;
use signal_ua::*;

use gbrelay::proto::gb::manscdp::{build_catalog_response, encode_gb2312, CatalogItem};
use gbrelay::store::{DeviceState, Store};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const S: Duration = Duration::from_secs(3);

#[tokio::test]
async fn keepalives_keep_a_device_online_and_missing_them_takes_it_offline_in_time() {
    let store = Store::open_in_memory().unwrap();
    let mut cfg = test_config();
    cfg.sip.keepalive_interval = Duration::from_millis(300);
    cfg.sip.keepalive_missed = 2;
    let (h, _j) = start(cfg, store.clone()).await;
    let mut ua = Ua::udp(NVR, "12345678", h.local_sip_addr()).await;
    assert_eq!(ua.register(3600).await.status(), Some(200));
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(ua.keepalive().await.unwrap().status(), Some(200));
        assert!(h.device_online(NVR), "keepalives every 200 ms keep it online");
    }
    let t = std::time::Instant::now();
    assert!(eventually(S, || !h.device_online(NVR)).await);
    let took = t.elapsed();
    // 2 × 300 ms after the last keepalive, plus the 200 ms housekeeping period.
    assert!(took >= Duration::from_millis(500) && took < Duration::from_millis(1200), "{took:?}");
    assert!(!store.get_device(NVR).unwrap().unwrap().state.online);
    // A keepalive while the registration is still valid brings it back.
    assert_eq!(ua.keepalive().await.unwrap().status(), Some(200));
    assert!(eventually(S, || h.device_online(NVR)).await);
}

#[tokio::test]
async fn after_a_restart_a_keepalive_from_a_registered_device_brings_it_online_at_once() {
    let store = Store::open_in_memory().unwrap();
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let st = DeviceState {
        online: true,
        transport: "udp".into(),
        remote: "127.0.0.1:5999".into(),
        last_seen: now_ms - 10_000,
        expires_at: now_ms + 600_000,
        call_id: "old".into(),
    };
    store.set_device_state(NVR, &st).unwrap();
    let expired = "34020000001180000009";
    store.set_device_state(expired, &DeviceState { expires_at: now_ms - 1, ..st.clone() }).unwrap();
    let (h, _j) = start(test_config(), store.clone()).await;
    assert!(!h.device_online(NVR));
    let mut ua = Ua::udp(NVR, "12345678", h.local_sip_addr()).await;
    assert_eq!(ua.keepalive().await.unwrap().status(), Some(200));
    assert!(h.device_online(NVR));
    let rec = store.get_device(NVR).unwrap().unwrap();
    assert!(rec.state.online);
    assert_eq!(rec.state.remote, ua.local.to_string(), "requests now go where the keepalive came from");
    let mut old = Ua::udp(expired, "12345678", h.local_sip_addr()).await;
    assert_eq!(old.keepalive().await.unwrap().status(), Some(200), "every MESSAGE is answered");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!h.device_online(expired), "an expired registration needs a REGISTER");
}

fn items(n: usize) -> Vec<CatalogItem> {
    (1..=n)
        .map(|i| CatalogItem {
            device_id: format!("340200000013200{i:05}"),
            name: format!("前门通道{i}号"),
            manufacturer: "海康威视".into(),
            model: "IPC".into(),
            civil_code: "340200".into(),
            parent_id: NVR.into(),
            status: if i % 2 == 0 { "ON".into() } else { "OFF".into() },
            longitude: Some(117.2),
            latitude: Some(31.8),
            ..Default::default()
        })
        .collect()
}

#[tokio::test]
async fn a_64_channel_catalog_in_several_gb2312_messages_arrives_whole_with_chinese_names() {
    let store = Store::open_in_memory().unwrap();
    let (h, _j) = start(test_config(), store.clone()).await;
    let mut ua = Ua::tcp(NVR, "12345678", h.local_sip_addr()).await;
    assert_eq!(ua.register(3600).await.status(), Some(200));
    let q = ua
        .request(|m| String::from_utf8_lossy(&m.body).contains("<CmdType>Catalog</CmdType>"), S)
        .await
        .unwrap();
    ua.answer(&q, 200, None).await;
    let sn = match gbrelay::proto::gb::manscdp::parse(&q.body).unwrap() {
        gbrelay::proto::gb::manscdp::Manscdp::Other { sn, .. } => sn,
        m => panic!("{m:?}"),
    };
    let all = items(64);
    for chunk in all.chunks(10) {
        let body = build_catalog_response(sn, NVR, 64, chunk);
        assert!(std::str::from_utf8(&body).is_err(), "GB2312 bytes on the wire");
        assert_eq!(ua.message(&body).await.unwrap().status(), Some(200));
        if chunk.len() == 10 {
            assert!(store.channel_count(NVR).unwrap() == 0, "not stored before the last part");
        }
    }
    assert!(eventually(S, || store.channel_count(NVR).unwrap() == 64).await);
    let (total, chans) = store.list_channels(NVR, 0, 1000).unwrap();
    assert_eq!(total, 64);
    let c7 = chans.iter().find(|c| c.id == "34020000001320000007").unwrap();
    assert_eq!(c7.name, "前门通道7号");
    assert_eq!(c7.manufacturer, "海康威视");
    assert_eq!(c7.status, "OFF");
    assert_eq!(c7.parent_id, NVR);
    assert_eq!(c7.latitude, Some(31.8));

    // Notifications: one channel removed, one added, one turned on.
    let mut add = items(65).pop().unwrap();
    add.event = Some("ADD".into());
    let mut del = all[0].clone();
    del.event = Some("DEL".into());
    let mut on = all[6].clone();
    on.event = Some("ON".into());
    let notify = gbrelay::proto::gb::manscdp::build_catalog_response(99, NVR, 3, &[add, del, on]);
    let notify = encoding_rs::GBK
        .decode(&notify)
        .0
        .replace("<Response>", "<Notify>")
        .replace("</Response>", "</Notify>");
    assert_eq!(ua.message(&encode_gb2312(&notify)).await.unwrap().status(), Some(200));
    assert!(eventually(S, || store.get_channel(NVR, "34020000001320000065").unwrap().is_some()).await);
    assert!(store.get_channel(NVR, "34020000001320000001").unwrap().is_none());
    assert_eq!(store.get_channel(NVR, "34020000001320000007").unwrap().unwrap().status, "ON");

    // DeviceInfo keeps the vendor's fields.
    let info = encode_gb2312(&format!("<?xml version=\"1.0\" encoding=\"GB2312\"?><Response><CmdType>DeviceInfo</CmdType><SN>5</SN><DeviceID>{NVR}</DeviceID><Result>OK</Result><DeviceName>一号录像机</DeviceName><Manufacturer>Dahua</Manufacturer><Model>NVR4216</Model><Firmware>V4.0</Firmware><MaxCamera>64</MaxCamera></Response>"));
    assert_eq!(ua.message(&info).await.unwrap().status(), Some(200));
    assert!(eventually(S, || store.get_device(NVR).unwrap().unwrap().model == "NVR4216").await);
    let d = store.get_device(NVR).unwrap().unwrap();
    assert_eq!(d.info["MaxCamera"], "64");
    assert_eq!(d.info["DeviceName"], "一号录像机");
}

#[tokio::test]
async fn a_stalled_catalog_keeps_the_parts_that_arrived() {
    let store = Store::open_in_memory().unwrap();
    let mut cfg = test_config();
    cfg.sip.catalog_stall = Duration::from_millis(300);
    let (h, _j) = start(cfg, store.clone()).await;
    let mut ua = Ua::udp(NVR, "12345678", h.local_sip_addr()).await;
    assert_eq!(ua.register(3600).await.status(), Some(200));
    let all = items(20);
    assert_eq!(ua.message(&build_catalog_response(1, NVR, 20, &all[..8])).await.unwrap().status(), Some(200));
    assert!(eventually(S, || store.channel_count(NVR).unwrap() == 8).await);
}

#[tokio::test]
async fn refresh_catalog_sends_a_query_and_a_reregistration_with_a_new_call_id_queries_again() {
    let store = Store::open_in_memory().unwrap();
    let (h, _j) = start(test_config(), store.clone()).await;
    let mut ua = Ua::udp(NVR, "12345678", h.local_sip_addr()).await;
    assert_eq!(ua.register(3600).await.status(), Some(200));
    for _ in 0..2 {
        let q = ua.request(|m| m.method() == "MESSAGE", S).await.unwrap();
        ua.answer(&q, 200, None).await;
    }
    // A refresh REGISTER (same Call-ID) does not query.
    assert_eq!(ua.register(3600).await.status(), Some(200));
    assert!(ua.request(|m| m.method() == "MESSAGE", Duration::from_millis(400)).await.is_none());
    // The API asks: Ok once the device accepted the query.
    let h2 = h.clone();
    let refresh = tokio::spawn(async move { h2.refresh_catalog(NVR).await });
    let q = ua.request(|m| String::from_utf8_lossy(&m.body).contains("Catalog"), S).await.unwrap();
    ua.answer(&q, 200, None).await;
    refresh.await.unwrap().unwrap();
    assert!(matches!(
        h.refresh_catalog("34020000001180000077").await,
        Err(gbrelay::signal::SignalError::DeviceNotFound(_))
    ));
    // Reboot: new Call-ID → queried again.
    ua.call_id = "rebooted@127.0.0.1".into();
    ua.backlog.clear();
    assert_eq!(ua.register(3600).await.status(), Some(200));
    assert!(ua.request(|m| String::from_utf8_lossy(&m.body).contains("Catalog"), S).await.is_some());
}
