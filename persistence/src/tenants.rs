//! Tenants: platform-level records, read back through the tenant's own scope.

use sqlx::FromRow;
use steward_core::TenantId;

use crate::codec::{self, MAX_DOCUMENT_BYTES};
use crate::{Store, StoreError, TenantScope};

/// A tenant as the platform knows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TenantRecord {
    pub id: TenantId,
    /// Display name.
    pub name: String,
    /// Tenant settings as a JSON document; the store does not interpret them.
    pub settings: serde_json::Value,
    /// When the tenant was first registered (Unix ms). Ignored by `upsert_tenant` once the
    /// tenant exists: the first registration time is kept.
    pub created_at: i64,
}

#[derive(FromRow)]
struct TenantRow {
    id: String,
    name: String,
    settings: String,
    created_at: i64,
}

impl TryFrom<TenantRow> for TenantRecord {
    type Error = StoreError;
    fn try_from(row: TenantRow) -> Result<Self, StoreError> {
        Ok(TenantRecord {
            id: codec::tenant_id(&row.id)?,
            name: row.name,
            settings: codec::from_json(&row.settings, "tenant settings")?,
            created_at: row.created_at,
        })
    }
}

impl Store {
    /// Registers a tenant or updates its name and settings. The region column is derived from
    /// the id. Platform level: callers are configuration load and operator commands.
    pub async fn upsert_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError> {
        codec::check_text(&tenant.name, "tenant name", 200)?;
        let settings = codec::json_text(&tenant.settings, "tenant settings", MAX_DOCUMENT_BYTES)?;
        let mut tx = self.begin_write().await?;
        self.set_tenant(&mut tx, tenant.id.as_str()).await?;
        sqlx::query(
            "INSERT INTO tenants (id, region, name, settings, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, settings = excluded.settings, \
             updated_at = excluded.updated_at",
        )
        .bind(tenant.id.as_str())
        .bind(tenant.id.region().as_str())
        .bind(&tenant.name)
        .bind(settings)
        .bind(tenant.created_at)
        .bind(self.now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The scope's own tenant record.
    pub async fn tenant(&self, scope: &TenantScope) -> Result<Option<TenantRecord>, StoreError> {
        let mut tx = self.read_as(scope).await?;
        let row: Option<TenantRow> =
            sqlx::query_as("SELECT id, name, settings, created_at FROM tenants WHERE id = $1")
                .bind(scope.id())
                .fetch_optional(&mut *tx)
                .await?;
        row.map(TenantRecord::try_from).transpose()
    }

    /// Whether a tenant is registered. Platform level: authentication paths ask this before
    /// they vouch for a tenant.
    pub async fn tenant_exists(&self, tenant: &TenantId) -> Result<bool, StoreError> {
        let mut tx = self.read_as_tenant(tenant.as_str()).await?;
        let row = sqlx::query("SELECT id FROM tenants WHERE id = $1")
            .bind(tenant.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        Ok(row.is_some())
    }
}
