//! Persistence of devices, channels and open invite sessions (SQLite through `rusqlite`, bundled).
//!
//! Belongs here: the record types the other layers exchange with the store, the [`Store`] handle and
//! its queries. Not here: SIP or HTTP logic (the store never decides whether a device is allowed or
//! online; it records what `signal` tells it), the schema SQL (in [`schema`]).
//!
//! Durability (issue 3 item 6: "each change is committed when it happens, survives kill -9"): every
//! method is its own transaction and commits before returning. The file is in WAL mode with
//! `synchronous=NORMAL`: a committed transaction is in the WAL file (written by `write(2)`) before
//! the call returns, so it survives the process being killed; only an OS crash or power loss can
//! lose the last commits (SQLite docs, "WAL mode … synchronous=NORMAL"). That trades an fsync per
//! keepalive for throughput; use FULL if power-loss durability of the last second matters.
//!
//! Concurrency: one connection behind a `std::sync::Mutex`; every method is short and synchronous.
//! Async callers may call directly (sub-millisecond) or through `spawn_blocking`.
//!
//! Times are unix milliseconds. A `created_at` / `updated_at` of 0 given to a write means "now".

pub mod schema;

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

pub use schema::SCHEMA_VERSION;

/// Errors of the store. Each carries the operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("store: cannot create directory {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("store: cannot open {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("store: {op}: {source}")]
    Sqlite { op: &'static str, source: rusqlite::Error },
    #[error("store: migration {from} -> {to} failed: {source}")]
    Migration { from: i64, to: i64, source: rusqlite::Error },
    #[error("store: database schema version {found} is not supported (this build knows up to {supported})")]
    UnsupportedSchema { found: i64, supported: i64 },
    #[error("store: {op}: JSON: {source}")]
    Json { op: &'static str, source: serde_json::Error },
}

/// A device (NVR, IPC, platform) as stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceRecord {
    /// 20-digit GB/T 28181 device ID (Annex D).
    pub id: String,
    pub name: String,
    /// Per-device SIP digest password; `None` means the configured default applies.
    pub password: Option<String>,
    pub manufacturer: String,
    pub model: String,
    pub firmware: String,
    /// Created through the API (true) or admitted on registration without provisioning (false).
    pub provisioned: bool,
    pub state: DeviceState,
    /// The DeviceInfo response's fields as received (JSON object), `Null` if never queried.
    pub info: serde_json::Value,
    /// Unix ms.
    pub created_at: i64,
}

/// Registration state of a device as last recorded by the signalling layer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceState {
    pub online: bool,
    /// "udp" or "tcp".
    pub transport: String,
    /// "ip:port" the device's requests come from.
    pub remote: String,
    /// Unix ms; 0 = never.
    pub last_seen: i64,
    /// Unix ms when the registration expires; 0 = none.
    pub expires_at: i64,
    /// Call-ID of the current registration (a new one means the device rebooted).
    pub call_id: String,
}

/// A channel (camera) of a device, from the Catalog response (GB/T 28181-2016 §A.2.6.4 items).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChannelRecord {
    pub device_id: String,
    pub id: String,
    pub name: String,
    pub manufacturer: String,
    pub model: String,
    /// "ON" / "OFF" as the device reports it.
    pub status: String,
    pub parent_id: String,
    pub civil_code: String,
    pub longitude: Option<f64>,
    pub latitude: Option<f64>,
    /// Unix ms.
    pub updated_at: i64,
}

/// An open INVITE dialog, kept so a restarted gateway can BYE what it no longer serves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionRecord {
    pub call_id: String,
    pub device_id: String,
    pub channel_id: String,
    pub from_tag: String,
    pub to_tag: String,
    pub remote: String,
    pub transport: String,
    pub cseq: u32,
    /// Unix ms.
    pub created_at: i64,
}

/// Handle to the database; cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn or_now(t: i64) -> i64 {
    if t == 0 {
        now_ms()
    } else {
        t
    }
}

fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { op, source }
}

/// SQLite integers are i64; a usize beyond that range is clamped (pagination only).
fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

const DEVICE_COLS: &str = "id, name, password, manufacturer, model, firmware, provisioned, online, \
     transport, remote, last_seen, expires_at, call_id, info, created_at";

fn device_from_row(r: &Row<'_>) -> rusqlite::Result<DeviceRecord> {
    let info_text: String = r.get(13)?;
    let info = serde_json::from_str(&info_text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(13, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(DeviceRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        password: r.get(2)?,
        manufacturer: r.get(3)?,
        model: r.get(4)?,
        firmware: r.get(5)?,
        provisioned: r.get(6)?,
        state: DeviceState {
            online: r.get(7)?,
            transport: r.get(8)?,
            remote: r.get(9)?,
            last_seen: r.get(10)?,
            expires_at: r.get(11)?,
            call_id: r.get(12)?,
        },
        info,
        created_at: r.get(14)?,
    })
}

const CHANNEL_COLS: &str = "device_id, id, name, manufacturer, model, status, parent_id, civil_code, \
     longitude, latitude, updated_at";

fn channel_from_row(r: &Row<'_>) -> rusqlite::Result<ChannelRecord> {
    Ok(ChannelRecord {
        device_id: r.get(0)?,
        id: r.get(1)?,
        name: r.get(2)?,
        manufacturer: r.get(3)?,
        model: r.get(4)?,
        status: r.get(5)?,
        parent_id: r.get(6)?,
        civil_code: r.get(7)?,
        longitude: r.get(8)?,
        latitude: r.get(9)?,
        updated_at: r.get(10)?,
    })
}

const SESSION_COLS: &str =
    "call_id, device_id, channel_id, from_tag, to_tag, remote, transport, cseq, created_at";

fn session_from_row(r: &Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        call_id: r.get(0)?,
        device_id: r.get(1)?,
        channel_id: r.get(2)?,
        from_tag: r.get(3)?,
        to_tag: r.get(4)?,
        remote: r.get(5)?,
        transport: r.get(6)?,
        cseq: r.get(7)?,
        created_at: r.get(8)?,
    })
}

/// Inserts an unprovisioned device row if none exists (a channel or state for a device the
/// signalling layer admitted without provisioning).
fn ensure_device(tx: &Transaction<'_>, id: &str) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT OR IGNORE INTO devices (id, created_at) VALUES (?1, ?2)")?
        .execute(params![id, now_ms()])?;
    Ok(())
}

fn insert_channel(tx: &Transaction<'_>, device_id: &str, c: &ChannelRecord) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO channels (device_id, id, name, manufacturer, model, status, parent_id, \
         civil_code, longitude, latitude, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
         ON CONFLICT (device_id, id) DO UPDATE SET name = excluded.name, \
         manufacturer = excluded.manufacturer, model = excluded.model, status = excluded.status, \
         parent_id = excluded.parent_id, civil_code = excluded.civil_code, \
         longitude = excluded.longitude, latitude = excluded.latitude, updated_at = excluded.updated_at",
    )?
    .execute(params![
        device_id,
        c.id,
        c.name,
        c.manufacturer,
        c.model,
        c.status,
        c.parent_id,
        c.civil_code,
        c.longitude,
        c.latitude,
        or_now(c.updated_at),
    ])?;
    Ok(())
}

/// Looks up a DeviceInfo field by its GB element name or a snake/lower-case spelling, returning
/// it as text if it is a non-empty string or a number.
fn info_field(info: &serde_json::Value, names: &[&str]) -> Option<String> {
    let obj = info.as_object()?;
    for (k, v) in obj {
        let key = k.replace('_', "");
        if names.iter().any(|n| key.eq_ignore_ascii_case(n)) {
            let s = match v {
                serde_json::Value::String(s) => s.trim().to_string(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => continue,
            };
            if !s.is_empty() {
                return Some(s);
            }
        }
    }
    None
}

impl Store {
    /// Opens (creating if needed) the database file, creating its parent directory, and migrates
    /// it to [`SCHEMA_VERSION`].
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|source| StoreError::CreateDir { path: dir.to_path_buf(), source })?;
        }
        let conn =
            Connection::open(path).map_err(|source| StoreError::Open { path: path.to_path_buf(), source })?;
        // WAL: readers never block the writer, and a commit is one append (see the header).
        let mode: String =
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(sql("set journal_mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "store: WAL not available, using journal mode as is");
        }
        Self::setup(conn)
    }

    /// A private database in memory (tests, `--no-store` runs).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory()
            .map_err(|source| StoreError::Open { path: PathBuf::from(":memory:"), source })?;
        Self::setup(conn)
    }

    fn setup(mut conn: Connection) -> Result<Store, StoreError> {
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(sql("set synchronous"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sql("set busy_timeout"))?;
        schema::migrate(&mut conn)?;
        Ok(Store { conn: Arc::new(Mutex::new(conn)) })
    }

    /// The connection. A panic while holding the lock cannot leave a half-done change behind (an
    /// unfinished `Transaction` rolls back on drop), so a poisoned lock is safe to reuse.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        schema::user_version(&self.conn())
    }

    // ---- devices ----

    pub fn get_device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached(&format!("SELECT {DEVICE_COLS} FROM devices WHERE id = ?1"))
            .map_err(sql("get_device"))?;
        st.query_row([id], device_from_row).optional().map_err(sql("get_device"))
    }

    /// A page of devices ordered by ID, with the total count.
    pub fn list_devices(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<(usize, Vec<DeviceRecord>), StoreError> {
        let conn = self.conn();
        let total: i64 = conn
            .query_row("SELECT COUNT(*) FROM devices", [], |r| r.get(0))
            .map_err(sql("list_devices count"))?;
        let mut st = conn
            .prepare_cached(&format!("SELECT {DEVICE_COLS} FROM devices ORDER BY id LIMIT ?1 OFFSET ?2"))
            .map_err(sql("list_devices"))?;
        let items = st
            .query_map(params![to_i64(limit), to_i64(offset)], device_from_row)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(sql("list_devices"))?;
        Ok((total as usize, items))
    }

    /// Inserts or replaces the whole record. A `password` of `None` keeps a stored password (use
    /// [`Store::update_device`] to clear it); `created_at` of an existing row is kept.
    pub fn upsert_device(&self, d: &DeviceRecord) -> Result<(), StoreError> {
        let info = serde_json::to_string(&d.info)
            .map_err(|source| StoreError::Json { op: "upsert_device", source })?;
        let conn = self.conn();
        conn.prepare_cached(&format!(
            "INSERT INTO devices ({DEVICE_COLS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
             password = COALESCE(excluded.password, devices.password), \
             manufacturer = excluded.manufacturer, model = excluded.model, \
             firmware = excluded.firmware, provisioned = excluded.provisioned, \
             online = excluded.online, transport = excluded.transport, remote = excluded.remote, \
             last_seen = excluded.last_seen, expires_at = excluded.expires_at, \
             call_id = excluded.call_id, info = excluded.info"
        ))
        .and_then(|mut st| {
            st.execute(params![
                d.id,
                d.name,
                d.password,
                d.manufacturer,
                d.model,
                d.firmware,
                d.provisioned,
                d.state.online,
                d.state.transport,
                d.state.remote,
                d.state.last_seen,
                d.state.expires_at,
                d.state.call_id,
                info,
                or_now(d.created_at),
            ])
        })
        .map_err(sql("upsert_device"))?;
        Ok(())
    }

    /// Provisions a device (`provisioned = true`). Returns false if a provisioned device with this
    /// ID exists (nothing changes). A row the signalling layer created for an unprovisioned device
    /// is adopted: it becomes provisioned with this name (unless empty) and password, keeping its
    /// state and channels.
    pub fn create_device(&self, id: &str, name: &str, password: Option<&str>) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(sql("create_device"))?;
        let existing: Option<bool> = tx
            .query_row("SELECT provisioned FROM devices WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(sql("create_device"))?;
        match existing {
            Some(true) => return Ok(false),
            Some(false) => {
                tx.execute(
                    "UPDATE devices SET provisioned = 1, password = ?2, \
                     name = CASE WHEN ?3 = '' THEN name ELSE ?3 END WHERE id = ?1",
                    params![id, password, name],
                )
                .map_err(sql("create_device"))?;
            }
            None => {
                tx.execute(
                    "INSERT INTO devices (id, name, password, provisioned, created_at) \
                     VALUES (?1, ?2, ?3, 1, ?4)",
                    params![id, name, password, now_ms()],
                )
                .map_err(sql("create_device"))?;
            }
        }
        tx.commit().map_err(sql("create_device"))?;
        Ok(true)
    }

    /// Changes the name and/or password (`Some(None)` clears the password so the default
    /// applies). Returns false if the device does not exist.
    pub fn update_device(
        &self,
        id: &str,
        name: Option<&str>,
        password: Option<Option<&str>>,
    ) -> Result<bool, StoreError> {
        let conn = self.conn();
        let n = conn
            .execute(
                "UPDATE devices SET name = CASE WHEN ?2 THEN ?3 ELSE name END, \
                 password = CASE WHEN ?4 THEN ?5 ELSE password END WHERE id = ?1",
                params![id, name.is_some(), name, password.is_some(), password.flatten()],
            )
            .map_err(sql("update_device"))?;
        Ok(n > 0)
    }

    /// Deletes the device and its channels (sessions are kept: they still need a BYE). Returns
    /// false if it did not exist.
    pub fn delete_device(&self, id: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(sql("delete_device"))?;
        tx.execute("DELETE FROM channels WHERE device_id = ?1", [id])
            .map_err(sql("delete_device channels"))?;
        let n = tx.execute("DELETE FROM devices WHERE id = ?1", [id]).map_err(sql("delete_device"))?;
        tx.commit().map_err(sql("delete_device"))?;
        Ok(n > 0)
    }

    /// Records the registration state; creates an unprovisioned row if the device is unknown.
    pub fn set_device_state(&self, id: &str, st: &DeviceState) -> Result<(), StoreError> {
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT INTO devices (id, online, transport, remote, last_seen, expires_at, call_id, \
             created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (id) DO UPDATE SET online = excluded.online, \
             transport = excluded.transport, remote = excluded.remote, \
             last_seen = excluded.last_seen, expires_at = excluded.expires_at, \
             call_id = excluded.call_id",
        )
        .and_then(|mut s| {
            s.execute(params![
                id,
                st.online,
                st.transport,
                st.remote,
                st.last_seen,
                st.expires_at,
                st.call_id,
                now_ms()
            ])
        })
        .map_err(sql("set_device_state"))?;
        Ok(())
    }

    /// Marks every device offline (at startup: nothing is online until it talks to us again).
    pub fn mark_all_offline(&self) -> Result<(), StoreError> {
        self.conn()
            .execute("UPDATE devices SET online = 0 WHERE online <> 0", [])
            .map_err(sql("mark_all_offline"))?;
        Ok(())
    }

    /// Stores the DeviceInfo response (GB/T 28181-2016 §A.2.6.6) as received and copies its
    /// `Manufacturer`, `Model` and `Firmware` into the columns when present and non-empty.
    /// `DeviceName` fills `name` only while the name is empty, so a name given through the API
    /// is not overwritten. Creates an unprovisioned row if the device is unknown.
    pub fn set_device_info(&self, id: &str, info: &serde_json::Value) -> Result<(), StoreError> {
        let text = serde_json::to_string(info)
            .map_err(|source| StoreError::Json { op: "set_device_info", source })?;
        let name = info_field(info, &["DeviceName", "Name"]);
        let manufacturer = info_field(info, &["Manufacturer"]);
        let model = info_field(info, &["Model"]);
        let firmware = info_field(info, &["Firmware"]);
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(sql("set_device_info"))?;
        ensure_device(&tx, id).map_err(sql("set_device_info"))?;
        tx.execute(
            "UPDATE devices SET info = ?2, \
             name = CASE WHEN name = '' AND ?3 IS NOT NULL THEN ?3 ELSE name END, \
             manufacturer = COALESCE(?4, manufacturer), model = COALESCE(?5, model), \
             firmware = COALESCE(?6, firmware) WHERE id = ?1",
            params![id, text, name, manufacturer, model, firmware],
        )
        .map_err(sql("set_device_info"))?;
        tx.commit().map_err(sql("set_device_info"))?;
        Ok(())
    }

    // ---- channels ----

    /// Replaces all channels of a device in one transaction (a complete Catalog). Each record's
    /// `device_id` is taken from the argument; duplicate channel IDs keep the last one.
    pub fn replace_channels(&self, device_id: &str, chans: &[ChannelRecord]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(sql("replace_channels"))?;
        ensure_device(&tx, device_id).map_err(sql("replace_channels"))?;
        tx.execute("DELETE FROM channels WHERE device_id = ?1", [device_id])
            .map_err(sql("replace_channels delete"))?;
        for c in chans {
            insert_channel(&tx, device_id, c).map_err(sql("replace_channels insert"))?;
        }
        tx.commit().map_err(sql("replace_channels"))?;
        Ok(())
    }

    /// Inserts or updates one channel (catalog notification "ADD"/"ON"/"OFF"/"UPDATE").
    pub fn upsert_channel(&self, c: &ChannelRecord) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(sql("upsert_channel"))?;
        ensure_device(&tx, &c.device_id).map_err(sql("upsert_channel"))?;
        insert_channel(&tx, &c.device_id, c).map_err(sql("upsert_channel"))?;
        tx.commit().map_err(sql("upsert_channel"))?;
        Ok(())
    }

    /// Returns false if the channel did not exist.
    pub fn delete_channel(&self, device_id: &str, channel_id: &str) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute("DELETE FROM channels WHERE device_id = ?1 AND id = ?2", params![device_id, channel_id])
            .map_err(sql("delete_channel"))?;
        Ok(n > 0)
    }

    pub fn get_channel(
        &self,
        device_id: &str,
        channel_id: &str,
    ) -> Result<Option<ChannelRecord>, StoreError> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached(&format!("SELECT {CHANNEL_COLS} FROM channels WHERE device_id = ?1 AND id = ?2"))
            .map_err(sql("get_channel"))?;
        st.query_row(params![device_id, channel_id], channel_from_row).optional().map_err(sql("get_channel"))
    }

    /// A page of a device's channels ordered by channel ID, with the device's channel total.
    pub fn list_channels(
        &self,
        device_id: &str,
        offset: usize,
        limit: usize,
    ) -> Result<(usize, Vec<ChannelRecord>), StoreError> {
        let conn = self.conn();
        let total: i64 = conn
            .query_row("SELECT COUNT(*) FROM channels WHERE device_id = ?1", [device_id], |r| r.get(0))
            .map_err(sql("list_channels count"))?;
        let mut st = conn
            .prepare_cached(&format!(
                "SELECT {CHANNEL_COLS} FROM channels WHERE device_id = ?1 ORDER BY id \
                 LIMIT ?2 OFFSET ?3"
            ))
            .map_err(sql("list_channels"))?;
        let items = st
            .query_map(params![device_id, to_i64(limit), to_i64(offset)], channel_from_row)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(sql("list_channels"))?;
        Ok((total as usize, items))
    }

    pub fn channel_count(&self, device_id: &str) -> Result<usize, StoreError> {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM channels WHERE device_id = ?1", [device_id], |r| r.get(0))
            .map_err(sql("channel_count"))?;
        Ok(n as usize)
    }

    // ---- sessions ----

    /// Records an open dialog (replacing one with the same Call-ID).
    pub fn add_session(&self, s: &SessionRecord) -> Result<(), StoreError> {
        self.conn()
            .execute(
                &format!(
                    "INSERT OR REPLACE INTO sessions ({SESSION_COLS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                ),
                params![
                    s.call_id,
                    s.device_id,
                    s.channel_id,
                    s.from_tag,
                    s.to_tag,
                    s.remote,
                    s.transport,
                    s.cseq,
                    or_now(s.created_at)
                ],
            )
            .map_err(sql("add_session"))?;
        Ok(())
    }

    /// Forgets a dialog; unknown Call-IDs are not an error.
    pub fn remove_session(&self, call_id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM sessions WHERE call_id = ?1", [call_id])
            .map_err(sql("remove_session"))?;
        Ok(())
    }

    /// All recorded dialogs, oldest first.
    pub fn list_sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached(&format!("SELECT {SESSION_COLS} FROM sessions ORDER BY created_at, call_id"))
            .map_err(sql("list_sessions"))?;
        let rows = st
            .query_map([], session_from_row)
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(sql("list_sessions"))?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_is_send_sync_and_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Store>();
    }

    #[test]
    fn info_field_matches_gb_and_snake_spellings_and_numbers() {
        let v = serde_json::json!({"device_name": "前门", "Manufacturer": " Hikvision ", "Channel": 16, "Model": ""});
        assert_eq!(info_field(&v, &["DeviceName"]).as_deref(), Some("前门"));
        assert_eq!(info_field(&v, &["Manufacturer"]).as_deref(), Some("Hikvision"));
        assert_eq!(info_field(&v, &["Channel"]).as_deref(), Some("16"));
        assert_eq!(info_field(&v, &["Model"]), None, "empty strings are absent");
        assert_eq!(info_field(&serde_json::Value::Null, &["Model"]), None);
    }

    #[test]
    fn fresh_database_is_at_current_schema_version() {
        let s = Store::open_in_memory().unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        const { assert!(SCHEMA_VERSION >= 1) };
    }
}
