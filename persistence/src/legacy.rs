//! The one-time sealing pass: content stored in clear before schema version 9 is sealed with
//! its tenant's data key when a store first starts with a confirmed master key. SQL cannot
//! seal (the keys never reach the database), so the migration leaves those rows as they were
//! and this pass rewrites them, a page at a time, each update conditional on the row still
//! holding the clear value it read. The pass records that it finished in `content_sealing` and
//! is skipped from then on. Audit entries are not rewritten: the chain is append-only and each
//! entry's hash covers its stored text, so entries from before keep their clear bodies.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::content::{self, Column, SEALED_PREFIX};
use crate::crashes::crash_row;
use crate::runs::{last_error_row, step_row};
use crate::snapshots::snapshot_row;
use crate::timers::timer_row;
use crate::{Authenticator, Store, StoreError, TenantScope};

/// Rows read and rewritten per transaction.
const PAGE: i64 = 500;

/// One table's content columns and the columns that name a row.
struct Table {
    name: &'static str,
    /// (column, is BIGINT), read as text; they name the row in the associated data.
    keys: &'static [(&'static str, bool)],
    columns: &'static [(&'static str, Column)],
    /// The row name of `column` from the key values.
    row: fn(&[String], Column) -> String,
}

const TABLES: &[Table] = &[
    Table {
        name: "runs",
        keys: &[("id", false), ("steps", true)],
        columns: &[
            ("trigger_body", Column::RunTrigger),
            ("last_error", Column::RunLastError),
        ],
        row: |k, c| match c {
            Column::RunLastError => last_error_row(&k[0], k[1].parse().unwrap_or(0)),
            _ => k[0].clone(),
        },
    },
    Table {
        name: "run_steps",
        keys: &[("run_id", false), ("seq", true)],
        columns: &[("body", Column::StepBody)],
        row: |k, _| step_row(&k[0], k[1].parse().unwrap_or(0)),
    },
    Table {
        name: "run_snapshots",
        keys: &[("run_id", false), ("journal_offset", true)],
        columns: &[("state", Column::Snapshot)],
        row: |k, _| snapshot_row(&k[0], k[1].parse().unwrap_or(0)),
    },
    Table {
        name: "run_crashes",
        keys: &[("run_id", false), ("seq", true)],
        columns: &[
            ("message", Column::CrashMessage),
            ("error", Column::CrashError),
            ("state", Column::CrashState),
        ],
        row: |k, _| crash_row(&k[0], k[1].parse().unwrap_or(0)),
    },
    Table {
        name: "timers",
        keys: &[("run_id", false), ("kind", false), ("due_at", true)],
        columns: &[("payload", Column::TimerPayload)],
        row: |k, _| timer_row(&k[0], &k[1], k[2].parse().unwrap_or(0)),
    },
];

impl Store {
    /// Seals every content value of every live tenant still stored in clear, unless a previous
    /// pass finished. Returns how many rows it rewrote.
    pub(crate) async fn seal_legacy_content(&self) -> Result<u64, StoreError> {
        let done: Option<i64> = {
            let mut tx = self.read_platform().await?;
            sqlx::query_scalar("SELECT done_at FROM content_sealing WHERE id = 1")
                .fetch_optional(&mut *tx)
                .await?
        };
        if done.is_some() {
            return Ok(0);
        }
        let tenants: Vec<String> = {
            let mut tx = self.read_platform().await?;
            sqlx::query_scalar("SELECT id FROM tenants WHERE offboarded_at IS NULL ORDER BY id")
                .fetch_all(&mut *tx)
                .await?
        };
        let mut rewritten = 0;
        for tenant in tenants {
            let scope =
                TenantScope::assume(crate::codec::tenant_id(&tenant)?, Authenticator::Config);
            for table in TABLES {
                rewritten += self.seal_table(&scope, table).await?;
            }
        }
        let mut tx = self.begin_platform_write().await?;
        sqlx::query(
            "INSERT INTO content_sealing (id, done_at, rows_sealed) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(self.now())
        .bind(i64::try_from(rewritten).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if rewritten > 0 {
            tracing::info!(rows = rewritten, "sealed tenant content stored in clear");
        }
        Ok(rewritten)
    }

    /// Seals the clear values of one tenant's table, a page per transaction.
    async fn seal_table(&self, scope: &TenantScope, table: &Table) -> Result<u64, StoreError> {
        let keys: Vec<String> = table
            .keys
            .iter()
            .map(|(k, _)| format!("CAST({k} AS TEXT)"))
            .collect();
        let columns: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
        let clear: Vec<String> = columns
            .iter()
            .map(|c| format!("{c} NOT LIKE '{SEALED_PREFIX}%'"))
            .collect();
        let select = format!(
            "SELECT {}, {} FROM {} WHERE tenant_id = $1 AND ({}) LIMIT {PAGE}",
            keys.join(", "),
            columns.join(", "),
            table.name,
            clear.join(" OR ")
        );
        let sets: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = ${}", i + 1))
            .collect();
        let n = columns.len();
        let mut wheres = vec![format!("tenant_id = ${}", n + 1)];
        for (i, (k, _)) in table.keys.iter().enumerate() {
            wheres.push(format!("{k} = ${}", n + 2 + i));
        }
        for (i, c) in columns.iter().enumerate() {
            let p = n + 2 + table.keys.len() + i;
            wheres.push(format!("({c} = ${p} OR ({c} IS NULL AND ${p} IS NULL))"));
        }
        let update = format!(
            "UPDATE {} SET {} WHERE {}",
            table.name,
            sets.join(", "),
            wheres.join(" AND ")
        );

        let mut total = 0u64;
        let mut stalled = 0;
        loop {
            let rows: Vec<AnyRow> = {
                let mut tx = self.read_as(scope).await?;
                sqlx::query(&select)
                    .bind(scope.id())
                    .fetch_all(&mut *tx)
                    .await?
            };
            if rows.is_empty() {
                return Ok(total);
            }
            let key = self.content_key(scope).await?;
            let mut tx = self.begin_write_as(scope).await?;
            let mut changed = 0;
            for row in &rows {
                let key_values: Vec<String> = (0..table.keys.len())
                    .map(|i| row.try_get::<String, _>(i))
                    .collect::<Result<_, _>>()?;
                let old: Vec<Option<String>> = (0..n)
                    .map(|i| row.try_get::<Option<String>, _>(table.keys.len() + i))
                    .collect::<Result<_, _>>()?;
                let new: Vec<Option<String>> = old
                    .iter()
                    .zip(table.columns)
                    .map(|(value, (_, column))| {
                        value.as_deref().map(|v| {
                            if content::is_sealed(v) {
                                v.to_owned()
                            } else {
                                let at = (table.row)(&key_values, *column);
                                content::seal(&key, scope.id(), *column, &at, v)
                            }
                        })
                    })
                    .collect();
                let mut query = sqlx::query(&update);
                for value in &new {
                    query = query.bind(value.clone());
                }
                query = query.bind(scope.id());
                for (value, (_, int)) in key_values.iter().zip(table.keys) {
                    query = if *int {
                        query.bind(value.parse::<i64>().map_err(|_| {
                            StoreError::Corrupt(format!("{} key `{value}`", table.name))
                        })?)
                    } else {
                        query.bind(value.clone())
                    };
                }
                for value in &old {
                    query = query.bind(value.clone());
                }
                changed += query.execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
            if changed == 0 {
                // Another process sealed the rows meanwhile (they are not read again), or
                // they cannot be updated: a few rounds without progress are an error rather
                // than a loop.
                stalled += 1;
                if stalled >= 3 {
                    return Err(StoreError::Corrupt(format!(
                        "{} rows of {} of tenant {} stay in clear: they could not be rewritten",
                        rows.len(),
                        table.name,
                        scope.tenant()
                    )));
                }
            } else {
                stalled = 0;
            }
            total += changed;
        }
    }
}
