//! Store durability (issue 3 item 6): data survives reopening, a handle that is never closed, and a
//! process killed with SIGKILL mid-write; schema versioning; a large catalog in one transaction.

use gbrelay::store::{ChannelRecord, DeviceState, Store, StoreError, SCHEMA_VERSION};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NVR: &str = "34020000001180000001";

fn chan(n: usize) -> ChannelRecord {
    ChannelRecord {
        device_id: NVR.into(),
        id: format!("340200000013200{n:05}"),
        name: format!("摄像机{n}号"),
        status: "ON".into(),
        updated_at: 1_700_000_000_000,
        ..Default::default()
    }
}

#[test]
fn open_creates_missing_parent_directories_and_uses_wal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/gbrelay.db");
    let s = Store::open(&path).unwrap();
    s.create_device(NVR, "n", None).unwrap();
    assert!(path.exists());
    let raw = rusqlite::Connection::open(&path).unwrap();
    let mode: String = raw.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode.to_ascii_lowercase(), "wal");
    let v: i64 = raw.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(v, SCHEMA_VERSION);
}

#[test]
fn devices_channels_and_sessions_persist_across_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gbrelay.db");
    {
        let s = Store::open(&path).unwrap();
        s.create_device(NVR, "北门录像机", Some("pw")).unwrap();
        s.set_device_state(NVR, &DeviceState { online: true, last_seen: 5, ..Default::default() }).unwrap();
        s.replace_channels(NVR, &(0..64).map(chan).collect::<Vec<_>>()).unwrap();
        s.add_session(&gbrelay::store::SessionRecord {
            call_id: "x@gw".into(),
            cseq: 3,
            created_at: 1,
            ..Default::default()
        })
        .unwrap();
    }
    let s = Store::open(&path).unwrap();
    let d = s.get_device(NVR).unwrap().unwrap();
    assert_eq!(d.name, "北门录像机");
    assert_eq!(d.password.as_deref(), Some("pw"));
    assert!(d.state.online, "state as last written; startup code calls mark_all_offline");
    assert_eq!(s.channel_count(NVR).unwrap(), 64);
    assert_eq!(s.get_channel(NVR, &chan(63).id).unwrap().unwrap().name, "摄像机63号");
    assert_eq!(s.list_sessions().unwrap().len(), 1);
}

#[test]
fn committed_changes_are_visible_when_the_first_handle_is_never_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gbrelay.db");
    let s = Store::open(&path).unwrap();
    s.create_device(NVR, "一", None).unwrap();
    s.replace_channels(NVR, &(0..10).map(chan).collect::<Vec<_>>()).unwrap();
    // Leak the handle: no close, no WAL checkpoint, as after a crash.
    std::mem::forget(s);
    let s2 = Store::open(&path).unwrap();
    assert_eq!(s2.get_device(NVR).unwrap().unwrap().name, "一");
    assert_eq!(s2.channel_count(NVR).unwrap(), 10);
}

/// Child mode of `every_change_acknowledged_before_a_kill_9_survives_it`: writes one channel per
/// committed call forever, printing the count after each commit, until it is killed.
fn kill9_child(path: &str) -> ! {
    let s = Store::open(std::path::Path::new(path)).unwrap();
    s.create_device(NVR, "kill9", Some("pw")).unwrap();
    let mut n = 0usize;
    loop {
        s.upsert_channel(&chan(n)).unwrap();
        n += 1;
        s.set_device_state(NVR, &DeviceState { last_seen: n as i64, ..Default::default() }).unwrap();
        println!("COMMITTED {n}");
    }
}

#[test]
fn every_change_acknowledged_before_a_kill_9_survives_it() {
    if let Ok(path) = std::env::var("GBRELAY_STORE_KILL9_CHILD") {
        kill9_child(&path);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/gbrelay.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "every_change_acknowledged_before_a_kill_9_survives_it", "--nocapture"])
        .env("GBRELAY_STORE_KILL9_CHILD", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acknowledged = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("COMMITTED ") {
            acknowledged = n.trim().parse().unwrap();
            if acknowledged >= 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "child too slow: {acknowledged} commits");
    }
    // Child::kill sends SIGKILL on Unix: no destructor, no close, no checkpoint runs.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "child was killed, not finished");
    assert!(acknowledged >= 200, "child stopped early at {acknowledged}");

    let s = Store::open(&path).unwrap();
    let d = s.get_device(NVR).unwrap().unwrap();
    assert_eq!(d.name, "kill9");
    assert_eq!(d.password.as_deref(), Some("pw"));
    let count = s.channel_count(NVR).unwrap();
    assert!(count >= acknowledged, "{count} channels on disk, {acknowledged} were acknowledged");
    assert!(d.state.last_seen as usize >= acknowledged);
    for n in [0, acknowledged / 2, acknowledged - 1] {
        assert_eq!(s.get_channel(NVR, &chan(n).id).unwrap().unwrap().name, format!("摄像机{n}号"));
    }
}

#[test]
fn a_database_from_a_newer_build_is_refused_not_misread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    {
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute_batch(&format!("PRAGMA user_version = {}", SCHEMA_VERSION + 1)).unwrap();
    }
    match Store::open(&path) {
        Err(StoreError::UnsupportedSchema { found, supported }) => {
            assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected UnsupportedSchema, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn reopening_a_current_database_runs_no_migration_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gbrelay.db");
    Store::open(&path).unwrap().create_device(NVR, "x", None).unwrap();
    let s = Store::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    assert!(s.get_device(NVR).unwrap().is_some());
}

#[test]
fn an_unwritable_location_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    // Its "directory" is a regular file: create_dir_all fails.
    let err = Store::open(&file.join("sub/gbrelay.db")).expect_err("must fail");
    assert!(matches!(err, StoreError::CreateDir { .. }), "{err}");
    // A file that is not a database.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![0x5au8; 8192]).unwrap();
    assert!(Store::open(&junk).is_err());
}

#[test]
fn replacing_five_thousand_channels_is_one_fast_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("gbrelay.db")).unwrap();
    let chans: Vec<_> = (0..5000).map(chan).collect();
    let t = Instant::now();
    s.replace_channels(NVR, &chans).unwrap();
    let took = t.elapsed();
    assert_eq!(s.channel_count(NVR).unwrap(), 5000);
    // One transaction: one WAL commit. Row-per-commit would be far slower than this bound even
    // without fsync; debug builds of SQLite do this in well under a second.
    assert!(took < Duration::from_secs(5), "replace of 5000 took {took:?}");
    let t = Instant::now();
    s.replace_channels(NVR, &chans[..1000]).unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    let (total, page) = s.list_channels(NVR, 0, 5000).unwrap();
    assert_eq!((total, page.len()), (1000, 1000));
    eprintln!("replace_channels(5000) took {took:?}");
}
