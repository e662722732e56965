//! Edge nodes as real `pgpush serve` processes on `127.0.0.1:0`, killable with real signals.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::OnceLock,
    time::{Duration, SystemTime},
};

use pgpush_protocol::StatsSnapshot;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, Command},
};

/// Extra arguments and environment for a node.
#[derive(Debug, Clone, Default)]
pub struct EdgeOptions {
    /// Arguments after `pgpush serve --listen 127.0.0.1:0 --database-url <url> --migrate`.
    pub args: Vec<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// A fixed listen address (default: a free port), so a restarted node comes back on it.
    pub listen: Option<SocketAddr>,
    /// Start without `--migrate` (on a database that may lack the pgpush schema).
    pub without_migrate: bool,
}

impl EdgeOptions {
    /// Options with these extra arguments.
    pub fn args(args: &[&str]) -> EdgeOptions {
        EdgeOptions {
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            listen: None,
            without_migrate: false,
        }
    }
}

/// Waits (up to 10 s) until exactly one of `nodes` is the sequencer; returns its index.
pub async fn the_sequencer(nodes: &[Edge]) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut leaders = Vec::new();
        for (index, node) in nodes.iter().enumerate() {
            if node.stats().await.sequencer {
                leaders.push(index);
            }
        }
        if let [leader] = leaders[..] {
            return leader;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no single sequencer among the nodes: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running `pgpush serve` process. Dropping it kills the process.
#[derive(Debug)]
pub struct Edge {
    child: Child,
    address: SocketAddr,
    metrics_address: Option<SocketAddr>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Edge {
    /// Starts a node against `database_url` with default settings.
    pub async fn start(database_url: &str) -> Edge {
        Edge::start_with(database_url, EdgeOptions::default()).await
    }

    /// Starts a node and waits until it printed its address.
    pub async fn start_with(database_url: &str, options: EdgeOptions) -> Edge {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("pgpush.log");
        let log_file = fs::File::create(&log).expect("log file");
        let mut command = Command::new(pgpush_binary());
        let listen = options
            .listen
            .map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
        command
            .args(["serve", "--listen", &listen, "--database-url", database_url])
            .args((!options.without_migrate).then_some("--migrate"))
            .args(&options.args)
            .env("RUST_LOG", "info,pgpush_edge=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .kill_on_drop(true);
        for (name, value) in &options.env {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("spawn pgpush");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut metrics_address = None;
        let wait_for_address = async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(address) = line.strip_prefix("pgpush metrics on http://") {
                    metrics_address = address.parse::<SocketAddr>().ok();
                }
                if let Some(address) = line.strip_prefix("pgpush listening on http://") {
                    return address.parse::<SocketAddr>().ok();
                }
            }
            None
        };
        let address = match tokio::time::timeout(Duration::from_secs(30), wait_for_address).await {
            Ok(Some(address)) => address,
            _ => panic!(
                "pgpush did not start; its log:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            ),
        };
        // Keep draining stdout into the log so the pipe never fills.
        let log_for_stdout = log.clone();
        tokio::spawn(async move {
            let mut file = tokio::fs::OpenOptions::new()
                .append(true)
                .open(log_for_stdout)
                .await
                .ok();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(file) = file.as_mut() {
                    let _ = file.write_all(format!("stdout: {line}\n").as_bytes()).await;
                }
            }
        });
        Edge {
            child,
            address,
            metrics_address,
            log,
            _dir: dir,
        }
    }

    /// `/metrics`, from the metrics address when the node has one (`--metrics-listen`).
    pub async fn metrics(&self) -> crate::Metrics {
        crate::Metrics::scrape(self.metrics_address.unwrap_or(self.address)).await
    }

    /// The metrics address (`--metrics-listen`), if any.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_address
    }

    /// The address clients connect to.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("process running")
    }

    /// `ws://<address><path_and_query>`
    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.address, path_and_query)
    }

    /// What the node logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /v1/stats`.
    pub async fn stats(&self) -> StatsSnapshot {
        let response = crate::http::get(self.address, "/v1/stats").await;
        serde_json::from_slice(&response.body).expect("stats JSON")
    }

    /// Status of `GET /readyz`.
    pub async fn ready_status(&self) -> u16 {
        crate::http::get(self.address, "/readyz")
            .await
            .status
            .as_u16()
    }

    /// Sends a signal by name (`TERM`, `INT`, `KILL`).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// SIGKILL, and reap the process.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "pgpush did not exit within {timeout:?}; log:\n{}",
                    self.log()
                )
            })
            .expect("wait")
    }

    /// Resident memory of the process in bytes (VmRSS).
    pub fn rss_bytes(&self) -> u64 {
        let status =
            fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .expect("VmRSS")
            * 1024
    }
}

/// The `pgpush` binary of this build, rebuilt first when a source file is newer than it.
pub fn pgpush_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| workspace_binary("pgpush", "pgpush"))
        .clone()
}

/// The `pgpush-loadgen` binary of this build, rebuilt first when a source file is newer.
pub fn loadgen_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| workspace_binary("pgpush-loadgen", "pgpush-loadgen"))
        .clone()
}

/// A binary of the workspace, built for this test profile when missing or older than the sources.
fn workspace_binary(package: &str, name: &str) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf();
    // The test executable lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("profile dir")
        .to_path_buf();
    let binary = profile_dir.join(name);
    let built = fs::metadata(&binary).and_then(|m| m.modified()).ok();
    let newest_source = ["crates", "loadtest", "clients"]
        .iter()
        .filter_map(|dir| newest_mtime(&workspace.join(dir)))
        .max();
    if built.is_none_or(|built| newest_source.is_some_and(|source| source > built)) {
        let mut build =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build
            .current_dir(&workspace)
            .args(["build", "-p", package, "--bin", name]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build of {name} failed");
    }
    binary
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(time);
    }
    newest
}
