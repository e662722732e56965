//! Installing the location demo's schema and reading its snapshot.

use tokio_postgres::{Client, error::SqlState};

/// What `pgpush demo setup` could not do.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The server has no PostGIS extension files.
    #[error(
        "PostGIS is not installed on this PostgreSQL server ({0}); install it \
         (Debian: apt-get install postgresql-15-postgis-3, which `scripts/test --install-only` does) \
         and run again"
    )]
    NoPostgis(String),
    /// The durable trigger needs the `pgpush` schema.
    #[error("the pgpush schema is missing: run `pgpush migrate` first")]
    NoSchema,
    /// The database refused or failed.
    #[error("{0}")]
    Database(#[from] tokio_postgres::Error),
}

/// How the `person` trigger publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `pgpush.publish`: a durable event with a cursor.
    Durable,
    /// `pg_notify`, as the original did: at most once.
    Notify,
}

/// Creates PostGIS, the `person` table and its message function (if missing), and (re)installs
/// the trigger. Safe to run again, also to switch between the two triggers.
pub async fn setup(client: &Client, trigger: Trigger) -> Result<(), DemoError> {
    client
        .batch_execute(include_str!("../sql/person.sql"))
        .await
        .map_err(|error| match error.code() {
            Some(code)
                if *code == SqlState::UNDEFINED_FILE
                    || *code == SqlState::FEATURE_NOT_SUPPORTED =>
            {
                DemoError::NoPostgis(
                    error
                        .as_db_error()
                        .map(|e| e.message().to_owned())
                        .unwrap_or_default(),
                )
            }
            _ => DemoError::Database(error),
        })?;
    let sql = match trigger {
        Trigger::Durable => {
            let has_schema: bool = client
                .query_one(
                    "SELECT to_regprocedure('pgpush.publish(text, json, text)') IS NOT NULL",
                    &[],
                )
                .await?
                .get(0);
            if !has_schema {
                return Err(DemoError::NoSchema);
            }
            include_str!("../sql/person_durable.sql")
        }
        Trigger::Notify => include_str!("../sql/person_notify.sql"),
    };
    client.batch_execute(sql).await?;
    client
        .batch_execute(include_str!("../sql/person_trigger.sql"))
        .await?;
    Ok(())
}

/// Every person as the trigger publishes them, as one JSON array (text).
pub async fn people(client: &Client) -> Result<String, DemoError> {
    Ok(client
        .query_one(
            "SELECT coalesce(json_agg(person_message(p) ORDER BY p.id), '[]')::text FROM person p",
            &[],
        )
        .await?
        .get(0))
}
