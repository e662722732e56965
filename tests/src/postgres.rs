//! A throwaway PostgreSQL cluster per test, with async helpers to query and NOTIFY.

use std::time::Duration;

use pgpush_pg::throwaway::{ThrowawayError, ThrowawayOptions, ThrowawayPostgres};
use tokio_postgres::{Client, NoTls};

/// A cluster of the test's own, removed when dropped.
#[derive(Debug)]
pub struct TestPostgres {
    cluster: std::sync::Arc<ThrowawayPostgres>,
}

impl TestPostgres {
    /// Starts a cluster; panics with the setup command when PostgreSQL is not installed.
    pub fn start() -> TestPostgres {
        TestPostgres::start_with(ThrowawayOptions::default())
    }

    /// Starts a cluster with extra server settings.
    pub fn start_with(options: ThrowawayOptions) -> TestPostgres {
        match ThrowawayPostgres::start_with(options) {
            Ok(cluster) => TestPostgres {
                cluster: std::sync::Arc::new(cluster),
            },
            Err(error) => panic!("cannot start a throwaway PostgreSQL: {error}"),
        }
    }

    /// A streaming standby of this cluster (asynchronous until this cluster names it in
    /// `synchronous_standby_names`), on a port of its own.
    pub fn standby(&self) -> TestPostgres {
        match self.cluster.start_standby() {
            Ok(cluster) => TestPostgres {
                cluster: std::sync::Arc::new(cluster),
            },
            Err(error) => panic!("cannot start a standby: {error}"),
        }
    }

    /// Stops the server, copies its data directory and starts it again: a backup to restore.
    pub async fn cold_backup(&self) -> std::path::PathBuf {
        self.blocking("cold backup", |cluster| cluster.cold_backup())
            .await
    }

    /// Restores `backup` in place of the data directory (the server stops and starts again).
    pub async fn restore(&self, backup: std::path::PathBuf) {
        self.blocking("restore the backup", move |cluster| {
            cluster.restore(&backup)
        })
        .await
    }

    /// Promotes this standby (`pg_ctl promote -w`).
    pub async fn promote(&self) {
        self.blocking("promote the standby", |cluster| cluster.promote())
            .await
    }

    /// SIGKILLs the server and all its processes at once, as when its machine dies.
    pub async fn kill(&self) {
        self.blocking("SIGKILL PostgreSQL", |cluster| cluster.kill())
            .await
    }

    /// Runs `work` on the cluster off the runtime (it waits on processes); panics naming `what`
    /// when it fails.
    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        work: impl FnOnce(&ThrowawayPostgres) -> Result<T, ThrowawayError> + Send + 'static,
    ) -> T {
        let cluster = self.cluster.clone();
        tokio::task::spawn_blocking(move || work(&cluster))
            .await
            .expect("blocking task")
            .unwrap_or_else(|error| panic!("{what}: {error}"))
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.cluster.port()
    }

    /// The connection URL.
    pub fn url(&self) -> String {
        self.cluster.url()
    }

    /// Puts `line` first in `pg_hba.conf` (it decides before the test cluster's `trust` lines)
    /// and reloads the configuration.
    pub async fn hba_first(&self, line: &str) {
        let path = self.cluster.root().join("data/pg_hba.conf");
        let rest = std::fs::read_to_string(&path).expect("read pg_hba.conf");
        std::fs::write(&path, format!("{line}\n{rest}")).expect("write pg_hba.conf");
        self.client()
            .await
            .execute("SELECT pg_reload_conf()", &[])
            .await
            .expect("pg_reload_conf");
    }

    /// The server log file.
    pub fn log_path(&self) -> std::path::PathBuf {
        self.cluster.root().join("postgres.log")
    }

    /// A new session (its own connection), retrying for up to 10 s while the server starts.
    pub async fn client(&self) -> Client {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio_postgres::connect(&self.url(), NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    return client;
                }
                Err(error) if tokio::time::Instant::now() > deadline => {
                    panic!("cannot connect to the test cluster: {error}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// `SELECT pg_notify($1, $2)` from a fresh session.
    pub async fn notify(&self, channel: &str, payload: &str) {
        self.client()
            .await
            .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
            .await
            .expect("pg_notify");
    }

    /// `pg_ctl stop -m fast`, then start again on the same port (blocking work off the runtime).
    pub async fn restart_fast(&self) {
        self.blocking("restart PostgreSQL", |cluster| cluster.restart_fast())
            .await
    }

    /// Number of sessions with this `application_name`.
    pub async fn sessions_named(&self, application_name: &str) -> i64 {
        self.client()
            .await
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&application_name],
            )
            .await
            .expect("pg_stat_activity")
            .get(0)
    }

    /// Terminates the sessions with this `application_name`; returns how many.
    pub async fn terminate_sessions_named(&self, application_name: &str) -> i64 {
        self.client()
            .await
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                &[&application_name],
            )
            .await
            .expect("pg_terminate_backend")
            .get(0)
    }
}

/// The database error `sql` fails with; panics if it succeeds or fails some other way.
pub async fn db_error(client: &Client, sql: &str) -> tokio_postgres::error::DbError {
    let error = client.execute(sql, &[]).await.expect_err(sql);
    error
        .as_db_error()
        .unwrap_or_else(|| panic!("{sql}: {error:?}"))
        .clone()
}
