//! The fleet store: reports in, compliance state and history out. SQLite (default, a file beside
//! the repository) or PostgreSQL (`--database postgres://…`), through sqlx's `Any` driver, with
//! one schema and one set of queries written in the SQL both accept.
//!
//! Owns: migrations, `ingest` (batched: one transaction per batch of queued reports, a constant
//! number of statements per report), event retention, the rule lists of the repository's
//! signed policies, and the read queries the admin view,
//! the exports and `embargo-server fleet` share. It holds no state of its own besides the pool,
//! so several server processes can share one PostgreSQL.
//! **Invariant:** a report's sequence is stored at most once per device: the device row's
//! `last_sequence` is advanced by a conditional upsert inside the report's transaction, so a
//! retry or a concurrent duplicate stores nothing.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use embargo_policy::report::{Report, RuleStatus};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::AnyConnection;
use sqlx::{AnyPool, Row};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database: {0}")]
    Query(#[from] sqlx::Error),
    #[error("database: {0}")]
    Batch(String),
}

/// The schema, version by version. Portable SQL: SQLite and PostgreSQL run the same text.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "fleet compliance",
        r#"
CREATE TABLE devices (
    device TEXT PRIMARY KEY,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    last_sequence BIGINT NOT NULL,
    reported_at BIGINT NOT NULL,
    agent_version TEXT NOT NULL,
    mode TEXT NOT NULL,
    policy_fleet TEXT,
    policy_version BIGINT,
    policy_sha256 TEXT,
    policy_applied_at BIGINT,
    degraded BIGINT NOT NULL,
    reasons TEXT NOT NULL
);
CREATE TABLE rules (
    rule TEXT PRIMARY KEY,
    first_seen BIGINT NOT NULL,
    first_policy_version BIGINT
);
CREATE TABLE device_rules (
    device TEXT NOT NULL,
    rule TEXT NOT NULL,
    status TEXT NOT NULL,
    since BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    apps TEXT NOT NULL,
    PRIMARY KEY (device, rule)
);
CREATE INDEX device_rules_rule ON device_rules (rule, status);
CREATE TABLE rule_history (
    device TEXT NOT NULL,
    rule TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    at BIGINT NOT NULL,
    status TEXT NOT NULL,
    policy_version BIGINT,
    PRIMARY KEY (device, rule, sequence)
);
CREATE INDEX rule_history_rule_at ON rule_history (rule, at);
CREATE TABLE device_history (
    device TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    at BIGINT NOT NULL,
    what TEXT NOT NULL,
    PRIMARY KEY (device, sequence, what)
);
CREATE TABLE events (
    device TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    rule TEXT,
    detail TEXT NOT NULL,
    PRIMARY KEY (device, seq)
);
"#,
    ),
    (
        2,
        "policies from the repository, event retention",
        r#"
CREATE TABLE policies (
    sha256 TEXT PRIMARY KEY,
    fleet TEXT NOT NULL,
    version BIGINT NOT NULL,
    rules TEXT NOT NULL,
    first_seen BIGINT NOT NULL
);
ALTER TABLE events ADD COLUMN received BIGINT;
UPDATE events SET received = at;
CREATE INDEX events_received ON events (received);
"#,
    ),
];

fn migrator() -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|(v, d, sql)| Migration::new(*v, Cow::Borrowed(d), MigrationType::Simple, Cow::Borrowed(sql), false))
        .collect::<Vec<_>>();
    Migrator { migrations: Cow::Owned(migrations), ignore_missing: false, locking: true, no_tx: false }
}

/// The database, as a pool. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The batching writers' queue.
    writer: tokio::sync::mpsc::Sender<Job>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend).finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// What `ingest` did with a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// The highest sequence stored for the device (after this report).
    pub acked: u64,
    pub stored: bool,
}

impl Store {
    /// Connects and migrates. `url` is `sqlite://PATH` (created if missing) or `postgres://…`.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let err = |source| StoreError::Connect { url: redact(url), source };
        let (backend, url, max) = if let Some(path) = url.strip_prefix("sqlite://") {
            // One connection: SQLite has one writer; a pool of several would only queue on its
            // lock with sleeps. WAL and NORMAL sync: a crash loses at most the last transactions,
            // never consistency, and the agent re-sends anything not acknowledged.
            (Backend::Sqlite, format!("sqlite://{path}?mode=rwc"), 1)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned(), 8)
        } else {
            return Err(err(sqlx::Error::Configuration(
                "the database URL must start with sqlite:// or postgres://".into(),
            )));
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA busy_timeout = 5000").execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(err)?;
        migrator().run(&pool).await?;
        // SQLite has one writer; PostgreSQL takes several at once (the pool's other connections
        // serve the admin view's reads).
        let writers = match backend {
            Backend::Sqlite => 1,
            Backend::Postgres => PG_WRITERS,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..writers {
            tokio::spawn(write_batches(pool.clone(), rx.clone()));
        }
        Ok(Store { pool, backend, writer: tx })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Stores `report` for `device` (from the client certificate), received at `now`. The
    /// report joins a writer's next batch: one transaction for up to `BATCH` queued reports,
    /// each in its own savepoint. SQLite has one writer, PostgreSQL `PG_WRITERS`.
    pub async fn ingest(&self, device: &str, report: &Report, now: u64) -> Result<Ingested, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job { device: device.to_owned(), report: report.clone(), now, reply };
        self.writer.send(job).await.map_err(|_| StoreError::Batch("the store's writer has stopped".into()))?;
        answer.await.map_err(|_| StoreError::Batch("the store's writer has stopped".into()))?
    }

    /// Deletes audit events received before `now - retention` and, per device, all but the
    /// newest `max_per_device`. Returns the rows deleted. Run by the server's upkeep task, never
    /// on a request's path.
    pub async fn prune_events(&self, now: u64, retention: &Retention) -> Result<u64, StoreError> {
        let cutoff = now.saturating_sub(retention.max_age.as_secs()) as i64;
        let mut deleted = sqlx::query("DELETE FROM events WHERE received < $1")
            .bind(cutoff)
            .execute(&self.pool)
            .await?
            .rows_affected();
        // Only devices over the bound are touched; for each, events below its Nth newest go.
        let over: Vec<String> =
            sqlx::query("SELECT device FROM events GROUP BY device HAVING COUNT(*) > $1 ORDER BY device")
                .bind(retention.max_per_device as i64)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, sqlx::Error>>()?;
        for device in over {
            deleted += sqlx::query(
                "DELETE FROM events WHERE device = $1 AND seq < \
                 (SELECT seq FROM events WHERE device = $1 ORDER BY seq DESC LIMIT 1 OFFSET $2)",
            )
            .bind(&device)
            .bind(retention.max_per_device.saturating_sub(1) as i64)
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        Ok(deleted)
    }

    /// The sha256 of every policy whose rule list is stored.
    pub async fn policy_hashes(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        sqlx::query("SELECT sha256 FROM policies")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Stores a verified policy's rule ids (once per sha256; several servers may race).
    pub async fn add_policy(&self, p: &PolicyRules, now: u64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO policies (sha256, fleet, version, rules, first_seen) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(p.sha256.as_str())
        .bind(p.fleet.as_str())
        .bind(p.version as i64)
        .bind(serde_json::to_string(&p.rules).expect("strings serialize"))
        .bind(now as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The stored rule lists of the policies some device reports applying, by version.
    pub async fn applied_policies(&self) -> Result<Vec<PolicyRules>, StoreError> {
        let rows = sqlx::query(
            "SELECT sha256, fleet, version, rules FROM policies \
             WHERE sha256 IN (SELECT policy_sha256 FROM devices WHERE policy_sha256 IS NOT NULL) \
             ORDER BY version, sha256",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PolicyRules {
                    sha256: r.try_get(0)?,
                    fleet: r.try_get(1)?,
                    version: r.try_get::<i64, _>(2)? as u64,
                    rules: serde_json::from_str(&r.try_get::<String, _>(3)?).unwrap_or_default(),
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Every device, most recently seen first.
    pub async fn devices(&self) -> Result<Vec<DeviceRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT device, first_seen, last_seen, last_sequence, agent_version, mode, policy_fleet, policy_version, \
             policy_sha256, degraded, reasons FROM devices ORDER BY last_seen DESC, device",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(device_row).collect::<Result<_, sqlx::Error>>().map_err(Into::into)
    }

    /// Every (device, rule) with its current state.
    pub async fn device_rules(&self, device: Option<&str>) -> Result<Vec<DeviceRuleRow>, StoreError> {
        let q = match device {
            Some(_) => {
                "SELECT device, rule, status, since, updated, apps FROM device_rules WHERE device = $1 ORDER BY rule"
            }
            None => "SELECT device, rule, status, since, updated, apps FROM device_rules ORDER BY rule, device",
        };
        let mut query = sqlx::query(q);
        if let Some(d) = device {
            query = query.bind(d);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(device_rule_row).collect::<Result<_, sqlx::Error>>().map_err(Into::into)
    }

    /// Rules any device has reported: (rule, first seen, first policy version).
    pub async fn rules(&self) -> Result<Vec<(String, u64, Option<u64>)>, StoreError> {
        let rows = sqlx::query("SELECT rule, first_seen, first_policy_version FROM rules ORDER BY rule")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((r.try_get(0)?, r.try_get::<i64, _>(1)? as u64, r.try_get::<Option<i64>, _>(2)?.map(|v| v as u64)))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// A rule's state changes in time order: (device, at, status).
    pub async fn rule_history(&self, rule: &str) -> Result<Vec<(String, u64, RuleStatus)>, StoreError> {
        let rows =
            sqlx::query("SELECT device, at, status FROM rule_history WHERE rule = $1 ORDER BY at, device, sequence")
                .bind(rule)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get::<i64, _>(1)? as u64,
                    RuleStatus::parse(&r.try_get::<String, _>(2)?).unwrap_or(RuleStatus::Failed),
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// One device's timeline: (at, what), oldest first — rule state changes, policy changes,
    /// gaps, degraded reports, audit events.
    pub async fn timeline(&self, device: &str) -> Result<Vec<(u64, String)>, StoreError> {
        let mut out = Vec::new();
        for r in sqlx::query("SELECT at, rule, status, policy_version FROM rule_history WHERE device = $1")
            .bind(device)
            .fetch_all(&self.pool)
            .await?
        {
            let v: Option<i64> = r.try_get(3)?;
            out.push((
                r.try_get::<i64, _>(0)? as u64,
                format!(
                    "rule {}: {} (policy {})",
                    r.try_get::<String, _>(1)?,
                    r.try_get::<String, _>(2)?,
                    v.map_or("none".into(), |v| v.to_string())
                ),
            ));
        }
        for r in sqlx::query("SELECT at, what FROM device_history WHERE device = $1")
            .bind(device)
            .fetch_all(&self.pool)
            .await?
        {
            out.push((r.try_get::<i64, _>(0)? as u64, r.try_get(1)?));
        }
        for r in sqlx::query("SELECT at, kind, rule, detail FROM events WHERE device = $1")
            .bind(device)
            .fetch_all(&self.pool)
            .await?
        {
            let rule: Option<String> = r.try_get(2)?;
            out.push((
                r.try_get::<i64, _>(0)? as u64,
                format!(
                    "event {}{}: {}",
                    r.try_get::<String, _>(1)?,
                    rule.map(|r| format!(" [{r}]")).unwrap_or_default(),
                    r.try_get::<String, _>(3)?
                ),
            ));
        }
        out.sort();
        Ok(out)
    }
}

/// Which devices a paged device list shows (`/admin/`'s three device tables and their exports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceList {
    All,
    /// Not seen since this time (server clock).
    SeenBefore(u64),
    /// On a policy version below this one, or on none.
    PolicyBelow(u64),
}

impl DeviceList {
    fn clause(self) -> (&'static str, Option<i64>) {
        match self {
            DeviceList::All => ("", None),
            DeviceList::SeenBefore(t) => (" WHERE last_seen < $1", Some(t as i64)),
            DeviceList::PolicyBelow(v) => (" WHERE (policy_version IS NULL OR policy_version < $1)", Some(v as i64)),
        }
    }
}

/// One row of a device's timeline as stored, before it is worded (see `Store::timeline_page`).
#[derive(Debug, Clone)]
pub struct TimelineRow {
    pub at: u64,
    pub what: String,
}

/// The read queries of the paged admin view (`pages.rs`): each returns at most the rows asked
/// for, or aggregates the database computes, so a request's memory does not grow with the fleet.
impl Store {
    /// The devices in `list`, most recently seen first: `limit` rows from `offset`.
    pub async fn devices_page(&self, list: DeviceList, offset: u64, limit: u64) -> Result<Vec<DeviceRow>, StoreError> {
        let (filter, bound) = list.clause();
        let n = if bound.is_some() { 2 } else { 1 };
        let sql = format!(
            "SELECT device, first_seen, last_seen, last_sequence, agent_version, mode, policy_fleet, policy_version, \
             policy_sha256, degraded, reasons FROM devices{filter} ORDER BY last_seen DESC, device LIMIT ${n} OFFSET ${}",
            n + 1
        );
        let mut q = sqlx::query(&sql);
        if let Some(b) = bound {
            q = q.bind(b);
        }
        let rows = q.bind(limit as i64).bind(offset as i64).fetch_all(&self.pool).await?;
        rows.iter().map(device_row).collect::<Result<_, sqlx::Error>>().map_err(Into::into)
    }

    /// How many devices `list` holds.
    pub async fn devices_count(&self, list: DeviceList) -> Result<u64, StoreError> {
        let (filter, bound) = list.clause();
        let sql = format!("SELECT COUNT(*) FROM devices{filter}");
        let mut q = sqlx::query(&sql);
        if let Some(b) = bound {
            q = q.bind(b);
        }
        Ok(q.fetch_one(&self.pool).await?.try_get::<i64, _>(0)? as u64)
    }

    /// One device's row.
    pub async fn device(&self, device: &str) -> Result<Option<DeviceRow>, StoreError> {
        let row = sqlx::query(
            "SELECT device, first_seen, last_seen, last_sequence, agent_version, mode, policy_fleet, policy_version, \
             policy_sha256, degraded, reasons FROM devices WHERE device = $1",
        )
        .bind(device)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(device_row).transpose().map_err(Into::into)
    }

    /// The newest policy version any device reports.
    pub async fn newest_policy_version(&self) -> Result<Option<u64>, StoreError> {
        let v: Option<i64> =
            sqlx::query("SELECT MAX(policy_version) FROM devices").fetch_one(&self.pool).await?.try_get(0)?;
        Ok(v.map(|v| v as u64))
    }

    /// Devices per (policy sha256, policy version): (sha256, version, devices, earliest first_seen).
    pub async fn devices_by_policy(&self) -> Result<Vec<(Option<String>, Option<u64>, u64, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT policy_sha256, policy_version, COUNT(*), MIN(first_seen) FROM devices \
             GROUP BY policy_sha256, policy_version ORDER BY policy_version, policy_sha256",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get::<Option<i64>, _>(1)?.map(|v| v as u64),
                    r.try_get::<i64, _>(2)? as u64,
                    r.try_get::<i64, _>(3)? as u64,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// The policies (sha256, fleet, version) some device applies whose rule list is stored,
    /// oldest version first; the rule lists themselves are read by `policy_rules`.
    pub async fn applied_policy_heads(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT sha256, fleet, version FROM policies \
             WHERE sha256 IN (SELECT policy_sha256 FROM devices WHERE policy_sha256 IS NOT NULL) \
             ORDER BY version, sha256",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get::<i64, _>(2)? as u64)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// The stored rule ids of the policy `sha256` (empty when none is stored).
    pub async fn policy_rules(&self, sha256: &str) -> Result<Vec<String>, StoreError> {
        let row =
            sqlx::query("SELECT rules FROM policies WHERE sha256 = $1").bind(sha256).fetch_optional(&self.pool).await?;
        Ok(match row {
            Some(r) => serde_json::from_str(&r.try_get::<String, _>(0)?).unwrap_or_default(),
            None => Vec::new(),
        })
    }

    /// How many rules devices have reported (the `rules` table only grows).
    pub async fn rules_count(&self) -> Result<u64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) FROM rules").fetch_one(&self.pool).await?.try_get::<i64, _>(0)? as u64)
    }

    /// Non-compliant (device, rule) rows counted per (rule, status, the device's policy sha256
    /// and version), with the rule's first policy version: what the admin must act on, aggregated
    /// by the database. (rule, status, sha256, version, rows)
    #[allow(clippy::type_complexity)]
    pub async fn noncompliant_counts(
        &self,
    ) -> Result<Vec<(String, RuleStatus, Option<String>, Option<u64>, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT dr.rule, dr.status, d.policy_sha256, d.policy_version, COUNT(*) FROM device_rules dr \
             JOIN devices d ON d.device = dr.device WHERE dr.status <> 'compliant' \
             GROUP BY dr.rule, dr.status, d.policy_sha256, d.policy_version",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    RuleStatus::parse(&r.try_get::<String, _>(1)?).unwrap_or(RuleStatus::Failed),
                    r.try_get(2)?,
                    r.try_get::<Option<i64>, _>(3)?.map(|v| v as u64),
                    r.try_get::<i64, _>(4)? as u64,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// A device's rules, non-compliant first, then by rule id: `limit` rows from `offset`.
    pub async fn device_rules_page(
        &self,
        device: &str,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<DeviceRuleRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT device, rule, status, since, updated, apps FROM device_rules WHERE device = $1 \
             ORDER BY CASE WHEN status = 'compliant' THEN 1 ELSE 0 END, rule LIMIT $2 OFFSET $3",
        )
        .bind(device)
        .bind(limit as i64)
        .bind(offset as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(device_rule_row).collect::<Result<_, sqlx::Error>>().map_err(Into::into)
    }

    /// How many rules a device has a row for.
    pub async fn device_rules_count(&self, device: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) FROM device_rules WHERE device = $1")
            .bind(device)
            .fetch_one(&self.pool)
            .await?
            .try_get::<i64, _>(0)? as u64)
    }

    /// Every (device, rule) row after `after` in (rule, device) order, at most `limit`: the
    /// export reads the table in such chunks instead of whole.
    /// With each row, its device's policy version.
    pub async fn device_rules_after(
        &self,
        after: Option<(&str, &str)>,
        limit: u64,
    ) -> Result<Vec<(DeviceRuleRow, Option<u64>)>, StoreError> {
        let (rule, device) = after.unwrap_or(("", ""));
        let rows = sqlx::query(
            "SELECT dr.device, dr.rule, dr.status, dr.since, dr.updated, dr.apps, d.policy_version \
             FROM device_rules dr LEFT JOIN devices d ON d.device = dr.device \
             WHERE dr.rule > $1 OR (dr.rule = $1 AND dr.device > $2) ORDER BY dr.rule, dr.device LIMIT $3",
        )
        .bind(rule)
        .bind(device)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((device_rule_row(r)?, r.try_get::<Option<i64>, _>(6)?.map(|v| v as u64))))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// The devices in `list` after `after` by device id, at most `limit` (the exports' order:
    /// by id, which a device's report does not change, so a streamed export lists each once).
    pub async fn devices_after(
        &self,
        list: DeviceList,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<DeviceRow>, StoreError> {
        let (filter, bound) = list.clause();
        let n = if bound.is_some() { 2 } else { 1 };
        let joiner = if bound.is_some() { " AND" } else { " WHERE" };
        let sql = format!(
            "SELECT device, first_seen, last_seen, last_sequence, agent_version, mode, policy_fleet, policy_version, \
             policy_sha256, degraded, reasons FROM devices{filter}{joiner} device > ${n} ORDER BY device LIMIT ${}",
            n + 1
        );
        let mut q = sqlx::query(&sql);
        if let Some(b) = bound {
            q = q.bind(b);
        }
        let rows = q.bind(after.unwrap_or("")).bind(limit as i64).fetch_all(&self.pool).await?;
        rows.iter().map(device_row).collect::<Result<_, sqlx::Error>>().map_err(Into::into)
    }

    /// One device's timeline, newest first: `limit` rows from `offset` of its rule state changes,
    /// policy changes, gaps, degraded reports and audit events (one query; the database sorts).
    pub async fn timeline_page(&self, device: &str, offset: u64, limit: u64) -> Result<Vec<TimelineRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, k, n, a, b, c, d FROM (\
               SELECT at, CAST(0 AS BIGINT) AS k, sequence AS n, rule AS a, status AS b, policy_version AS c, NULL AS d \
                 FROM rule_history WHERE device = $1 \
               UNION ALL SELECT at, CAST(1 AS BIGINT), sequence, what, NULL, NULL, NULL FROM device_history WHERE device = $1 \
               UNION ALL SELECT at, CAST(2 AS BIGINT), seq, kind, rule, NULL, detail FROM events WHERE device = $1\
             ) t ORDER BY at DESC, k DESC, n DESC, a DESC LIMIT $2 OFFSET $3",
        )
        .bind(device)
        .bind(limit as i64)
        .bind(offset as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let at = r.try_get::<i64, _>(0)? as u64;
                let a: String = r.try_get(3)?;
                let b: Option<String> = r.try_get(4)?;
                let what = match r.try_get::<i64, _>(1)? {
                    0 => format!(
                        "rule {a}: {} (policy {})",
                        b.unwrap_or_default(),
                        r.try_get::<Option<i64>, _>(5)?.map_or("none".into(), |v| v.to_string())
                    ),
                    1 => a,
                    _ => format!(
                        "event {a}{}: {}",
                        b.map(|r| format!(" [{r}]")).unwrap_or_default(),
                        r.try_get::<Option<String>, _>(6)?.unwrap_or_default()
                    ),
                };
                Ok(TimelineRow { at, what })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// The first contact of every device first seen at or after `since`, sorted (for charts: how
    /// many devices were known at a time; `pages::RuleCache` keeps them).
    pub async fn devices_first_seen(&self, since: Option<u64>) -> Result<Vec<u64>, StoreError> {
        sqlx::query("SELECT first_seen FROM devices WHERE first_seen >= $1 ORDER BY first_seen")
            .bind(since.unwrap_or(0) as i64)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok(r.try_get::<i64, _>(0)? as u64))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// How many rows a device's timeline has.
    pub async fn timeline_count(&self, device: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "SELECT (SELECT COUNT(*) FROM rule_history WHERE device = $1) + \
             (SELECT COUNT(*) FROM device_history WHERE device = $1) + (SELECT COUNT(*) FROM events WHERE device = $1)",
        )
        .bind(device)
        .fetch_one(&self.pool)
        .await?
        .try_get::<i64, _>(0)? as u64)
    }
}

fn device_row(r: &AnyRow) -> Result<DeviceRow, sqlx::Error> {
    Ok(DeviceRow {
        device: r.try_get(0)?,
        first_seen: r.try_get::<i64, _>(1)? as u64,
        last_seen: r.try_get::<i64, _>(2)? as u64,
        last_sequence: r.try_get::<i64, _>(3)? as u64,
        agent_version: r.try_get(4)?,
        mode: r.try_get(5)?,
        policy_fleet: r.try_get(6)?,
        policy_version: r.try_get::<Option<i64>, _>(7)?.map(|v| v as u64),
        policy_sha256: r.try_get(8)?,
        degraded: r.try_get::<i64, _>(9)? != 0,
        reasons: serde_json::from_str(&r.try_get::<String, _>(10)?).unwrap_or_default(),
    })
}

fn device_rule_row(r: &AnyRow) -> Result<DeviceRuleRow, sqlx::Error> {
    Ok(DeviceRuleRow {
        device: r.try_get(0)?,
        rule: r.try_get(1)?,
        status: RuleStatus::parse(&r.try_get::<String, _>(2)?).unwrap_or(RuleStatus::Failed),
        since: r.try_get::<i64, _>(3)? as u64,
        updated: r.try_get::<i64, _>(4)? as u64,
        apps: serde_json::from_str(&r.try_get::<String, _>(5)?).unwrap_or_default(),
    })
}

/// A value bound into a statement built at run time (multi-row `VALUES`).
#[derive(Debug, Clone)]
enum Val {
    Int(i64),
    OptInt(Option<i64>),
    Text(String),
    OptText(Option<String>),
}

/// Most bind parameters in one statement (SQLite's limit is 32,766, PostgreSQL's 65,535).
const MAX_PARAMS: usize = 30_000;

/// Runs `head VALUES (…), (…) tail` for `rows` (each `width` values), in as few statements as
/// the parameter limit allows: with the format's bounds (1,024 rules, 512 events) that is one.
async fn insert_rows(
    tx: &mut AnyConnection,
    head: &str,
    tail: &str,
    width: usize,
    rows: &[Vec<Val>],
) -> Result<(), StoreError> {
    for chunk in rows.chunks((MAX_PARAMS / width).max(1)) {
        let mut sql = String::with_capacity(head.len() + tail.len() + chunk.len() * width * 5);
        sql.push_str(head);
        sql.push_str(" VALUES ");
        let mut n = 0;
        for (i, _) in chunk.iter().enumerate() {
            sql.push_str(if i == 0 { "(" } else { ", (" });
            for c in 0..width {
                n += 1;
                if c > 0 {
                    sql.push_str(", ");
                }
                sql.push('$');
                sql.push_str(&n.to_string());
            }
            sql.push(')');
        }
        sql.push(' ');
        sql.push_str(tail);
        let mut q = sqlx::query(&sql);
        for v in chunk.iter().flatten() {
            q = match v {
                Val::Int(x) => q.bind(*x),
                Val::OptInt(x) => q.bind(*x),
                Val::Text(x) => q.bind(x.clone()),
                Val::OptText(x) => q.bind(x.clone()),
            };
        }
        q.execute(&mut *tx).await?;
    }
    Ok(())
}

/// Stores one report through `tx` (a transaction or savepoint the caller commits).
///
/// Round trips: a constant number per report whatever it holds — read the device, the
/// conditional upsert, read the device's rules (not on a first report), then one multi-row
/// statement each for the timeline, the rule states, the rules newly compliant, the history,
/// the rules first seen and the events, each only when it has rows. On PostgreSQL every
/// statement is a round trip, so a report with 512 events costs the same as one with none.
/// A rule a report matched that its device had no row for: (rule, received at, policy version).
/// The writer stores these for its whole batch in one sorted statement (see `write_batches`).
type FirstSeen = (String, i64, Option<i64>);

async fn ingest_in(
    tx: &mut AnyConnection,
    device: &str,
    report: &Report,
    now: u64,
) -> Result<(Ingested, Vec<FirstSeen>), StoreError> {
    let seq = report.sequence as i64;
    let now_i = now as i64;
    let policy = report.policy.as_ref();
    let reasons = serde_json::to_string(&report.health.reasons).expect("strings serialize");
    let previous: Option<(i64, Option<i64>)> =
        sqlx::query("SELECT last_sequence, policy_version FROM devices WHERE device = $1")
            .bind(device)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r: AnyRow| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?)))
            .transpose()?;
    let updated = sqlx::query(
        "INSERT INTO devices (device, first_seen, last_seen, last_sequence, reported_at, agent_version, mode, \
         policy_fleet, policy_version, policy_sha256, policy_applied_at, degraded, reasons) \
         VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (device) DO UPDATE SET last_seen = excluded.last_seen, last_sequence = excluded.last_sequence, \
         reported_at = excluded.reported_at, agent_version = excluded.agent_version, mode = excluded.mode, \
         policy_fleet = excluded.policy_fleet, policy_version = excluded.policy_version, \
         policy_sha256 = excluded.policy_sha256, policy_applied_at = excluded.policy_applied_at, \
         degraded = excluded.degraded, reasons = excluded.reasons \
         WHERE devices.last_sequence < excluded.last_sequence",
    )
    .bind(device)
    .bind(now_i)
    .bind(seq)
    .bind(report.at as i64)
    .bind(report.agent_version.as_str())
    .bind(match report.mode {
        embargo_policy::report::Mode::Enforce => "enforce",
        embargo_policy::report::Mode::Monitor => "monitor",
    })
    .bind(policy.map(|p| p.fleet.clone()))
    .bind(policy.map(|p| p.version as i64))
    .bind(policy.map(|p| p.sha256.clone()))
    .bind(policy.map(|p| p.applied_at as i64))
    .bind(i64::from(report.health.degraded))
    .bind(reasons)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        // A retry of a stored sequence, or an older one: nothing is stored again.
        // The conditional upsert wrote nothing, and nothing was written before it.
        let acked: i64 = sqlx::query("SELECT last_sequence FROM devices WHERE device = $1")
            .bind(device)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        return Ok((Ingested { acked: acked as u64, stored: false }, Vec::new()));
    }
    let policy_version = policy.map(|p| p.version as i64);
    let dev = || Val::Text(device.to_owned());
    // The device's timeline: first contact, policy changes, declared gaps.
    let mut timeline = Vec::new();
    match previous {
        None => timeline.push("first report".to_owned()),
        Some((_, old)) if old != policy_version => timeline.push(format!(
            "policy {} -> {}",
            old.map_or("none".into(), |v| v.to_string()),
            policy_version.map_or("none".into(), |v| v.to_string())
        )),
        _ => {}
    }
    if let Some(g) = &report.gap {
        timeline.push(format!(
            "{} reports dropped by the agent's spool (sequences {}-{})",
            g.dropped, g.first_sequence, g.last_sequence
        ));
    }
    if report.health.degraded {
        timeline.push(format!("degraded: {}", report.health.reasons.join("; ")));
    }
    if !timeline.is_empty() {
        let rows: Vec<Vec<Val>> =
            timeline.into_iter().map(|what| vec![dev(), Val::Int(seq), Val::Int(now_i), Val::Text(what)]).collect();
        insert_rows(tx, "INSERT INTO device_history (device, sequence, at, what)", "ON CONFLICT DO NOTHING", 4, &rows)
            .await?;
    }
    // A device's first report has no rules stored yet: one read saved.
    let current: HashMap<String, String> = if previous.is_none() {
        HashMap::new()
    } else {
        sqlx::query("SELECT rule, status FROM device_rules WHERE device = $1")
            .bind(device)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?)))
            .collect::<Result<_, sqlx::Error>>()?
    };
    let history_row = |rule: &str, status: &str| {
        vec![
            dev(),
            Val::Text(rule.to_owned()),
            Val::Int(seq),
            Val::Int(now_i),
            Val::Text(status.to_owned()),
            Val::OptInt(policy_version),
        ]
    };
    let mut reported = std::collections::HashSet::new();
    let (mut states, mut history, mut first_seen) = (Vec::new(), Vec::new(), Vec::new());
    for rule in &report.rules {
        reported.insert(rule.rule.as_str());
        let status = rule.status().as_str();
        let apps = serde_json::to_string(&rule.apps).expect("apps serialize");
        let known = current.get(&rule.rule).map(String::as_str);
        if known != Some(status) {
            history.push(history_row(&rule.rule, status));
        }
        if known.is_none() {
            // A rule this device has a row for is already in `rules`.
            first_seen.push((rule.rule.clone(), now_i, policy_version));
        }
        states.push(vec![
            dev(),
            Val::Text(rule.rule.clone()),
            Val::Text(status.to_owned()),
            Val::Int(now_i),
            Val::Int(now_i),
            Val::Text(apps),
        ]);
    }
    if !states.is_empty() {
        insert_rows(
            tx,
            "INSERT INTO device_rules (device, rule, status, since, updated, apps)",
            "ON CONFLICT (device, rule) DO UPDATE SET updated = excluded.updated, apps = excluded.apps, \
             status = excluded.status, \
             since = CASE WHEN device_rules.status = excluded.status THEN device_rules.since ELSE excluded.since END",
            6,
            &states,
        )
        .await?;
    }
    // A rule no longer reported has nothing left on the device.
    let gone: Vec<&str> = current
        .iter()
        .filter(|(rule, status)| !reported.contains(rule.as_str()) && *status != RuleStatus::Compliant.as_str())
        .map(|(rule, _)| rule.as_str())
        .collect();
    if !gone.is_empty() {
        let list = (0..gone.len()).map(|i| format!("${}", i + 4)).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "UPDATE device_rules SET status = $1, since = $2, updated = $2, apps = '[]' WHERE device = $3 AND rule IN ({list})"
        );
        let mut q = sqlx::query(&sql).bind(RuleStatus::Compliant.as_str()).bind(now_i).bind(device);
        for rule in &gone {
            q = q.bind(*rule);
            history.push(history_row(rule, RuleStatus::Compliant.as_str()));
        }
        q.execute(&mut *tx).await?;
    }
    if !history.is_empty() {
        insert_rows(
            tx,
            "INSERT INTO rule_history (device, rule, sequence, at, status, policy_version)",
            "ON CONFLICT DO NOTHING",
            6,
            &history,
        )
        .await?;
    }
    if !report.events.is_empty() {
        let rows: Vec<Vec<Val>> = report
            .events
            .iter()
            .map(|e| {
                vec![
                    dev(),
                    Val::Int(e.seq as i64),
                    Val::Int(e.at as i64),
                    Val::Text(e.kind.clone()),
                    Val::OptText(e.rule.clone()),
                    Val::Text(e.detail.clone()),
                    Val::Int(now_i),
                ]
            })
            .collect();
        insert_rows(
            tx,
            "INSERT INTO events (device, seq, at, kind, rule, detail, received)",
            "ON CONFLICT DO NOTHING",
            7,
            &rows,
        )
        .await?;
    }
    Ok((Ingested { acked: report.sequence, stored: true }, first_seen))
}

/// Records when rules were first reported, for a whole batch in one statement, sorted by rule id.
/// `rules` is the one table reports of different devices share: inserting its rows report by
/// report in several concurrent PostgreSQL batches could take its row locks in different
/// orders (and deadlock); one sorted statement per batch takes them in one order.
async fn insert_first_seen(tx: &mut AnyConnection, mut rows: Vec<FirstSeen>) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    // The earliest time and lowest policy version of a rule first seen twice in the batch.
    rows.sort();
    rows.dedup_by(|b, a| a.0 == b.0);
    let rows: Vec<Vec<Val>> =
        rows.into_iter().map(|(rule, at, v)| vec![Val::Text(rule), Val::Int(at), Val::OptInt(v)]).collect();
    insert_rows(tx, "INSERT INTO rules (rule, first_seen, first_policy_version)", "ON CONFLICT DO NOTHING", 3, &rows)
        .await
}

/// Reports queued for the writers; a sender waits when it is full.
const QUEUE: usize = 4096;
/// Reports per transaction at most.
const BATCH: usize = 64;
/// Writers (connections writing at once) on PostgreSQL, of the pool's 8.
const PG_WRITERS: usize = 4;

struct Job {
    device: String,
    report: Report,
    now: u64,
    reply: tokio::sync::oneshot::Sender<Result<Ingested, StoreError>>,
}

/// A writer: takes whatever reports are queued (up to `BATCH`) and stores them in one
/// transaction, each in its own savepoint so one failing report fails alone (a batch of one
/// needs none). One commit per batch instead of per report: under load the queue drains in
/// batches, idle it is one report. Several writers share the queue (PostgreSQL); the lock is
/// held only while a batch is taken.
async fn write_batches(pool: AnyPool, rx: std::sync::Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Job>>>) {
    loop {
        let jobs = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            let mut jobs = vec![first];
            while jobs.len() < BATCH {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            jobs
        };
        let outcome = async {
            let mut tx = pool.begin().await?;
            let mut results = Vec::with_capacity(jobs.len());
            if let [j] = jobs.as_slice() {
                let (r, first) = ingest_in(&mut tx, &j.device, &j.report, j.now).await?;
                insert_first_seen(&mut tx, first).await?;
                tx.commit().await?;
                return Ok::<_, StoreError>(vec![Ok(r)]);
            }
            let mut first_seen = Vec::new();
            for j in &jobs {
                let mut sp = sqlx::Connection::begin(&mut *tx).await?;
                match ingest_in(&mut sp, &j.device, &j.report, j.now).await {
                    Ok((r, first)) => {
                        sp.commit().await?;
                        first_seen.extend(first);
                        results.push(Ok(r));
                    }
                    Err(e) => {
                        sp.rollback().await?;
                        results.push(Err(e));
                    }
                }
            }
            insert_first_seen(&mut tx, first_seen).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(results)
        }
        .await;
        match outcome {
            Ok(results) => {
                for (j, r) in jobs.into_iter().zip(results) {
                    let _ = j.reply.send(r);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, reports = jobs.len(), "storing a batch of reports");
                for j in jobs {
                    let _ = j.reply.send(Err(StoreError::Batch(e.to_string())));
                }
            }
        }
    }
}

/// How long audit events are kept, and how many per device (`--event-retention`,
/// `--event-max-per-device`), checked every `--event-prune-interval`.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: std::time::Duration,
    pub max_per_device: u64,
    /// How often the upkeep task prunes (`--event-prune-interval`).
    pub every: std::time::Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: std::time::Duration::from_secs(90 * 86_400),
            max_per_device: 10_000,
            every: std::time::Duration::from_secs(600),
        }
    }
}

/// A signed policy's rule ids, as the server read them from its repository.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicyRules {
    pub sha256: String,
    pub fleet: String,
    pub version: u64,
    pub rules: Vec<String>,
}

/// A URL with any password replaced, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let cred = &url[s + 3..at];
            match cred.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &cred[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceRow {
    pub device: String,
    pub first_seen: u64,
    pub last_seen: u64,
    pub last_sequence: u64,
    pub agent_version: String,
    pub mode: String,
    pub policy_fleet: Option<String>,
    pub policy_version: Option<u64>,
    pub policy_sha256: Option<String>,
    pub degraded: bool,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceRuleRow {
    pub device: String,
    pub rule: String,
    pub status: RuleStatus,
    pub since: u64,
    pub updated: u64,
    pub apps: Vec<embargo_policy::report::AppState>,
}

/// Per-rule counts by status.
pub type Counts = BTreeMap<RuleStatus, u64>;

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(super::redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(super::redact("sqlite:///x/y.db"), "sqlite:///x/y.db");
    }
}
