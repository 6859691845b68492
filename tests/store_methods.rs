//! Store: every method's behaviour on an in-memory and a file database (issue 3 item 6).
//! Durability across reopen / kill -9 is in `store_durability.rs`.

use gbrelay::store::{ChannelRecord, DeviceRecord, DeviceState, SessionRecord, Store};
use serde_json::json;

const NVR: &str = "34020000001180000001";
const IPC: &str = "34020000001320000001";

fn chan(dev: &str, n: u32, name: &str) -> ChannelRecord {
    ChannelRecord {
        device_id: dev.into(),
        id: format!("340200000013200{n:05}"),
        name: name.into(),
        manufacturer: "Hikvision".into(),
        model: "DS-2CD".into(),
        status: "ON".into(),
        parent_id: dev.into(),
        civil_code: "340200".into(),
        longitude: Some(116.397 + n as f64 / 1000.0),
        latitude: Some(39.908),
        updated_at: 1_700_000_000_000 + n as i64,
    }
}

fn full_device(id: &str) -> DeviceRecord {
    DeviceRecord {
        id: id.into(),
        name: "大门NVR".into(),
        password: Some("secret1".into()),
        manufacturer: "Dahua".into(),
        model: "NVR4216".into(),
        firmware: "V4.0".into(),
        provisioned: true,
        state: DeviceState {
            online: true,
            transport: "tcp".into(),
            remote: "192.0.2.7:5061".into(),
            last_seen: 1_700_000_000_123,
            expires_at: 1_700_000_003_723,
            call_id: "abc@192.0.2.7".into(),
        },
        info: json!({"DeviceName": "大门NVR", "Channel": "16"}),
        created_at: 1_690_000_000_000,
    }
}

#[test]
fn upsert_then_get_device_round_trips_every_field_including_chinese_name() {
    let s = Store::open_in_memory().unwrap();
    let d = full_device(NVR);
    s.upsert_device(&d).unwrap();
    assert_eq!(s.get_device(NVR).unwrap(), Some(d));
    assert_eq!(s.get_device(IPC).unwrap(), None);
}

#[test]
fn upsert_device_with_no_password_keeps_the_stored_password() {
    let s = Store::open_in_memory().unwrap();
    s.upsert_device(&full_device(NVR)).unwrap();
    let mut d = full_device(NVR);
    d.password = None;
    d.name = "renamed".into();
    s.upsert_device(&d).unwrap();
    let got = s.get_device(NVR).unwrap().unwrap();
    assert_eq!(got.password.as_deref(), Some("secret1"));
    assert_eq!(got.name, "renamed");
    // An explicit new password does replace it.
    d.password = Some("other".into());
    s.upsert_device(&d).unwrap();
    assert_eq!(s.get_device(NVR).unwrap().unwrap().password.as_deref(), Some("other"));
}

#[test]
fn upsert_device_keeps_created_at_of_existing_row_and_fills_zero_with_now() {
    let s = Store::open_in_memory().unwrap();
    let mut d = full_device(NVR);
    d.created_at = 0;
    s.upsert_device(&d).unwrap();
    let first = s.get_device(NVR).unwrap().unwrap().created_at;
    assert!(first > 1_700_000_000_000, "0 means now, got {first}");
    d.created_at = 5;
    s.upsert_device(&d).unwrap();
    assert_eq!(s.get_device(NVR).unwrap().unwrap().created_at, first);
}

#[test]
fn create_device_is_provisioned_and_refuses_a_second_create() {
    let s = Store::open_in_memory().unwrap();
    assert!(s.create_device(NVR, "仓库", Some("pw")).unwrap());
    let d = s.get_device(NVR).unwrap().unwrap();
    assert!(d.provisioned);
    assert_eq!(d.name, "仓库");
    assert_eq!(d.password.as_deref(), Some("pw"));
    assert!(!d.state.online);
    assert!(d.created_at > 0);
    assert!(!s.create_device(NVR, "other", None).unwrap());
    let again = s.get_device(NVR).unwrap().unwrap();
    assert_eq!(again.name, "仓库", "a refused create changes nothing");
    assert_eq!(again.password.as_deref(), Some("pw"));
}

#[test]
fn create_device_adopts_an_unprovisioned_row_keeping_state_and_channels() {
    let s = Store::open_in_memory().unwrap();
    let st = DeviceState { online: true, transport: "udp".into(), ..Default::default() };
    s.set_device_state(NVR, &st).unwrap();
    s.set_device_info(NVR, &json!({"DeviceName": "自动"})).unwrap();
    s.replace_channels(NVR, &[chan(NVR, 1, "a")]).unwrap();
    assert!(!s.get_device(NVR).unwrap().unwrap().provisioned);

    assert!(s.create_device(NVR, "", Some("pw")).unwrap());
    let d = s.get_device(NVR).unwrap().unwrap();
    assert!(d.provisioned);
    assert_eq!(d.name, "自动", "empty name keeps the device's own");
    assert_eq!(d.password.as_deref(), Some("pw"));
    assert_eq!(d.state, st);
    assert_eq!(s.channel_count(NVR).unwrap(), 1);
}

#[test]
fn update_device_changes_only_what_is_given_and_can_clear_the_password() {
    let s = Store::open_in_memory().unwrap();
    s.create_device(NVR, "a", Some("pw")).unwrap();
    assert!(s.update_device(NVR, Some("b"), None).unwrap());
    let d = s.get_device(NVR).unwrap().unwrap();
    assert_eq!((d.name.as_str(), d.password.as_deref()), ("b", Some("pw")));

    assert!(s.update_device(NVR, None, Some(Some("pw2"))).unwrap());
    let d = s.get_device(NVR).unwrap().unwrap();
    assert_eq!((d.name.as_str(), d.password.as_deref()), ("b", Some("pw2")));

    assert!(s.update_device(NVR, None, Some(None)).unwrap());
    assert_eq!(s.get_device(NVR).unwrap().unwrap().password, None);

    assert!(!s.update_device(IPC, Some("x"), None).unwrap(), "unknown device");
    assert_eq!(s.get_device(IPC).unwrap(), None, "update never creates");
}

#[test]
fn delete_device_removes_it_and_its_channels_but_not_other_devices() {
    let s = Store::open_in_memory().unwrap();
    s.create_device(NVR, "n", None).unwrap();
    s.create_device(IPC, "i", None).unwrap();
    s.replace_channels(NVR, &[chan(NVR, 1, "a"), chan(NVR, 2, "b")]).unwrap();
    s.replace_channels(IPC, &[chan(IPC, 1, "c")]).unwrap();
    assert!(s.delete_device(NVR).unwrap());
    assert_eq!(s.get_device(NVR).unwrap(), None);
    assert_eq!(s.channel_count(NVR).unwrap(), 0);
    assert_eq!(s.channel_count(IPC).unwrap(), 1);
    assert!(!s.delete_device(NVR).unwrap(), "second delete finds nothing");
}

#[test]
fn set_device_state_creates_an_unprovisioned_row_and_updates_only_state() {
    let s = Store::open_in_memory().unwrap();
    let st = DeviceState {
        online: true,
        transport: "udp".into(),
        remote: "10.0.0.2:5060".into(),
        last_seen: 42,
        expires_at: 3_600_042,
        call_id: "c1".into(),
    };
    s.set_device_state(IPC, &st).unwrap();
    let d = s.get_device(IPC).unwrap().unwrap();
    assert!(!d.provisioned);
    assert_eq!(d.state, st);
    assert!(d.created_at > 0);

    s.create_device(NVR, "keep", Some("pw")).unwrap();
    s.set_device_state(NVR, &st).unwrap();
    let d = s.get_device(NVR).unwrap().unwrap();
    assert_eq!(d.state, st);
    assert_eq!(d.name, "keep");
    assert_eq!(d.password.as_deref(), Some("pw"));
    assert!(d.provisioned);
}

#[test]
fn mark_all_offline_clears_online_and_keeps_the_rest_of_the_state() {
    let s = Store::open_in_memory().unwrap();
    let st = DeviceState { online: true, transport: "tcp".into(), last_seen: 9, ..Default::default() };
    s.set_device_state(NVR, &st).unwrap();
    s.set_device_state(IPC, &st).unwrap();
    s.mark_all_offline().unwrap();
    for id in [NVR, IPC] {
        let d = s.get_device(id).unwrap().unwrap();
        assert!(!d.state.online);
        assert_eq!(d.state.transport, "tcp");
        assert_eq!(d.state.last_seen, 9);
    }
}

#[test]
fn set_device_info_stores_fields_as_received_and_fills_columns() {
    let s = Store::open_in_memory().unwrap();
    let info = json!({
        "DeviceName": "东门IPC", "Manufacturer": "Hikvision", "Model": "DS-2CD3T",
        "Firmware": "V5.5.0", "MaxCamera": "1", "Result": "OK"
    });
    s.set_device_info(IPC, &info).unwrap();
    let d = s.get_device(IPC).unwrap().unwrap();
    assert_eq!(d.info, info);
    assert_eq!(d.name, "东门IPC");
    assert_eq!(d.manufacturer, "Hikvision");
    assert_eq!(d.model, "DS-2CD3T");
    assert_eq!(d.firmware, "V5.5.0");
    assert!(!d.provisioned);
}

#[test]
fn set_device_info_does_not_overwrite_an_operator_name_nor_blank_missing_fields() {
    let s = Store::open_in_memory().unwrap();
    s.create_device(NVR, "操作员命名", None).unwrap();
    s.set_device_info(NVR, &json!({"DeviceName": "设备自称", "Manufacturer": "Uniview", "Firmware": "1"}))
        .unwrap();
    s.set_device_info(NVR, &json!({"Model": "NVR302", "Channel": 32})).unwrap();
    let d = s.get_device(NVR).unwrap().unwrap();
    assert_eq!(d.name, "操作员命名");
    assert_eq!(d.manufacturer, "Uniview", "absent field keeps the earlier value");
    assert_eq!(d.firmware, "1");
    assert_eq!(d.model, "NVR302");
    assert_eq!(d.info, json!({"Model": "NVR302", "Channel": 32}), "info is the latest response");
}

#[test]
fn list_devices_pages_by_id_with_the_total() {
    let s = Store::open_in_memory().unwrap();
    let ids: Vec<String> = (0..25).map(|i| format!("340200000011800{i:05}")).collect();
    for id in ids.iter().rev() {
        s.create_device(id, id, None).unwrap();
    }
    let (total, page) = s.list_devices(0, 10).unwrap();
    assert_eq!(total, 25);
    assert_eq!(page.iter().map(|d| d.id.clone()).collect::<Vec<_>>(), ids[..10]);
    let (total, page) = s.list_devices(20, 10).unwrap();
    assert_eq!(total, 25);
    assert_eq!(page.iter().map(|d| d.id.clone()).collect::<Vec<_>>(), ids[20..]);
    let (total, page) = s.list_devices(100, 10).unwrap();
    assert_eq!((total, page.len()), (25, 0));
    let (total, page) = s.list_devices(0, 0).unwrap();
    assert_eq!((total, page.len()), (25, 0));
    let (_, page) = s.list_devices(0, usize::MAX).unwrap();
    assert_eq!(page.len(), 25, "huge limit is clamped, not an error");
}

#[test]
fn replace_channels_replaces_the_whole_set_and_takes_the_device_id_from_the_argument() {
    let s = Store::open_in_memory().unwrap();
    s.create_device(NVR, "n", None).unwrap();
    s.replace_channels(NVR, &[chan(NVR, 1, "一号"), chan(NVR, 2, "二号"), chan(NVR, 3, "三号")]).unwrap();
    assert_eq!(s.channel_count(NVR).unwrap(), 3);
    let mut stray = chan("99999999999999999999", 4, "四号");
    stray.device_id = "99999999999999999999".into();
    s.replace_channels(NVR, &[chan(NVR, 2, "二号改"), stray]).unwrap();
    let (total, items) = s.list_channels(NVR, 0, 100).unwrap();
    assert_eq!(total, 2);
    assert_eq!(items[0].name, "二号改");
    assert_eq!(items[1].name, "四号");
    assert!(items.iter().all(|c| c.device_id == NVR));
    assert_eq!(s.get_device("99999999999999999999").unwrap(), None);
}

#[test]
fn replace_channels_for_an_unknown_device_creates_an_unprovisioned_device() {
    let s = Store::open_in_memory().unwrap();
    s.replace_channels(IPC, &[chan(IPC, 1, "x")]).unwrap();
    let d = s.get_device(IPC).unwrap().unwrap();
    assert!(!d.provisioned);
    assert_eq!(s.channel_count(IPC).unwrap(), 1);
}

#[test]
fn channel_round_trips_every_field_and_none_coordinates() {
    let s = Store::open_in_memory().unwrap();
    let c = chan(NVR, 7, "停车场 入口（南）");
    s.upsert_channel(&c).unwrap();
    assert_eq!(s.get_channel(NVR, &c.id).unwrap(), Some(c.clone()));
    let mut no_geo = c.clone();
    no_geo.longitude = None;
    no_geo.latitude = None;
    no_geo.status = "OFF".into();
    s.upsert_channel(&no_geo).unwrap();
    assert_eq!(s.get_channel(NVR, &c.id).unwrap(), Some(no_geo));
    assert_eq!(s.get_channel(NVR, "nope").unwrap(), None);
    assert_eq!(s.get_channel(IPC, &c.id).unwrap(), None, "channels are per device");
}

#[test]
fn upsert_channel_fills_zero_updated_at_with_now() {
    let s = Store::open_in_memory().unwrap();
    let mut c = chan(NVR, 1, "a");
    c.updated_at = 0;
    s.upsert_channel(&c).unwrap();
    assert!(s.get_channel(NVR, &c.id).unwrap().unwrap().updated_at > 1_700_000_000_000);
}

#[test]
fn delete_channel_reports_whether_it_existed() {
    let s = Store::open_in_memory().unwrap();
    let c = chan(NVR, 1, "a");
    s.upsert_channel(&c).unwrap();
    assert!(!s.delete_channel(IPC, &c.id).unwrap());
    assert!(s.delete_channel(NVR, &c.id).unwrap());
    assert!(!s.delete_channel(NVR, &c.id).unwrap());
    assert_eq!(s.channel_count(NVR).unwrap(), 0);
    assert!(s.get_device(NVR).unwrap().is_some(), "deleting a channel keeps its device");
}

#[test]
fn list_channels_pages_by_id_with_the_device_total() {
    let s = Store::open_in_memory().unwrap();
    let chans: Vec<_> = (1..=64).rev().map(|n| chan(NVR, n, &format!("通道{n}"))).collect();
    s.replace_channels(NVR, &chans).unwrap();
    s.replace_channels(IPC, &[chan(IPC, 1, "x")]).unwrap();
    let (total, page) = s.list_channels(NVR, 60, 10).unwrap();
    assert_eq!(total, 64);
    assert_eq!(
        page.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["通道61", "通道62", "通道63", "通道64"]
    );
    let (total, page) = s.list_channels("00000000000000000000", 0, 10).unwrap();
    assert_eq!((total, page.len()), (0, 0));
    assert_eq!(s.channel_count(NVR).unwrap(), 64);
}

#[test]
fn sessions_add_list_replace_and_remove() {
    let s = Store::open_in_memory().unwrap();
    let a = SessionRecord {
        call_id: "a@gw".into(),
        device_id: NVR.into(),
        channel_id: "34020000001320000001".into(),
        from_tag: "ft".into(),
        to_tag: "tt".into(),
        remote: "192.0.2.1:5060".into(),
        transport: "udp".into(),
        cseq: u32::MAX,
        created_at: 10,
    };
    let b = SessionRecord { call_id: "b@gw".into(), cseq: 2, created_at: 20, ..a.clone() };
    s.add_session(&b).unwrap();
    s.add_session(&a).unwrap();
    assert_eq!(s.list_sessions().unwrap(), vec![a.clone(), b.clone()], "oldest first");
    let a2 = SessionRecord { to_tag: "tt2".into(), ..a.clone() };
    s.add_session(&a2).unwrap();
    assert_eq!(s.list_sessions().unwrap(), vec![a2, b.clone()], "same Call-ID replaces");
    s.remove_session("a@gw").unwrap();
    s.remove_session("unknown").unwrap();
    assert_eq!(s.list_sessions().unwrap(), vec![b]);
}

#[test]
fn store_clones_share_one_database_across_threads() {
    let s = Store::open_in_memory().unwrap();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for n in 0..50 {
                    s.upsert_channel(&chan(NVR, t * 100 + n, "x")).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(s.channel_count(NVR).unwrap(), 200);
}
