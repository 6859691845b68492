//! Database schema and its migrations, versioned by SQLite's `PRAGMA user_version`.
//!
//! Belongs here: the SQL that creates and upgrades tables, and the function that brings a database
//! to [`SCHEMA_VERSION`]. Not here: queries (they are in `mod.rs`).
//!
//! Rule for later changes: never edit a step that has shipped; append a new one. Step `i` upgrades a
//! database from version `i` to `i + 1`, runs in one transaction together with the `user_version`
//! bump, so a crash mid-migration leaves the old version intact (SQLite DDL is transactional).

use super::StoreError;
use rusqlite::Connection;

/// Migration steps; `MIGRATIONS[i]` takes a database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // v0 → v1: devices, channels, open invite sessions.
    r#"
    CREATE TABLE devices (
        id            TEXT PRIMARY KEY NOT NULL,
        name          TEXT NOT NULL DEFAULT '',
        password      TEXT,
        manufacturer  TEXT NOT NULL DEFAULT '',
        model         TEXT NOT NULL DEFAULT '',
        firmware      TEXT NOT NULL DEFAULT '',
        provisioned   INTEGER NOT NULL DEFAULT 0,
        online        INTEGER NOT NULL DEFAULT 0,
        transport     TEXT NOT NULL DEFAULT '',
        remote        TEXT NOT NULL DEFAULT '',
        last_seen     INTEGER NOT NULL DEFAULT 0,
        expires_at    INTEGER NOT NULL DEFAULT 0,
        call_id       TEXT NOT NULL DEFAULT '',
        info          TEXT NOT NULL DEFAULT 'null',
        created_at    INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE channels (
        device_id     TEXT NOT NULL,
        id            TEXT NOT NULL,
        name          TEXT NOT NULL DEFAULT '',
        manufacturer  TEXT NOT NULL DEFAULT '',
        model         TEXT NOT NULL DEFAULT '',
        status        TEXT NOT NULL DEFAULT '',
        parent_id     TEXT NOT NULL DEFAULT '',
        civil_code    TEXT NOT NULL DEFAULT '',
        longitude     REAL,
        latitude      REAL,
        updated_at    INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (device_id, id)
    ) WITHOUT ROWID;
    CREATE TABLE sessions (
        call_id       TEXT PRIMARY KEY NOT NULL,
        device_id     TEXT NOT NULL DEFAULT '',
        channel_id    TEXT NOT NULL DEFAULT '',
        from_tag      TEXT NOT NULL DEFAULT '',
        to_tag        TEXT NOT NULL DEFAULT '',
        remote        TEXT NOT NULL DEFAULT '',
        transport     TEXT NOT NULL DEFAULT '',
        cseq          INTEGER NOT NULL DEFAULT 0,
        created_at    INTEGER NOT NULL DEFAULT 0
    );
    "#,
];

/// The version this build writes and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Reads `PRAGMA user_version`.
pub fn user_version(conn: &Connection) -> Result<i64, StoreError> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|source| StoreError::Sqlite { op: "read user_version", source })
}

/// Brings the database to [`SCHEMA_VERSION`], one transaction per step. A database written by a
/// newer build (higher version) is refused rather than misread.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let found = user_version(conn)?;
    if !(0..=SCHEMA_VERSION).contains(&found) {
        return Err(StoreError::UnsupportedSchema { found, supported: SCHEMA_VERSION });
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let to = from as i64 + 1;
        let step = |source| StoreError::Migration { from: from as i64, to, source };
        let tx = conn.transaction().map_err(step)?;
        tx.execute_batch(sql).map_err(step)?;
        // PRAGMA does not take bound parameters; `to` is an integer we computed.
        tx.execute_batch(&format!("PRAGMA user_version = {to}")).map_err(step)?;
        tx.commit().map_err(step)?;
        tracing::info!(from, to, "store schema migrated");
    }
    Ok(())
}
