//! Throwaway PostgreSQL clusters run from the machine's installed binaries, for tests and for
//! `pgpush serve` without `DATABASE_URL`.
//!
//! `initdb` runs once per PostgreSQL version into a cached template; each cluster is a copy of it
//! on a free loopback port. As root (CI runs as root, and `initdb` refuses root) every command
//! runs as the `postgres` system user. The postmaster is started under `setpriv --pdeathsig`, so
//! it shuts down even when the process that started it is killed.

use std::{
    fs,
    io::{self, Read, Seek, SeekFrom},
    net::TcpListener,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

/// The command that installs what throwaway clusters need, named in every "not found" error.
pub const SETUP_COMMAND: &str = "scripts/test --install-only (or: apt-get install -y postgresql)";

/// Why a throwaway cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ThrowawayError {
    /// No PostgreSQL server binaries on this machine.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; install them with: {SETUP_COMMAND}"
    )]
    NotInstalled,
    /// A setup command failed.
    #[error("{command} failed: {detail}")]
    Command {
        /// What ran.
        command: String,
        /// Its output.
        detail: String,
    },
    /// The server did not come up.
    #[error("PostgreSQL did not become ready: {log_tail}")]
    NotReady {
        /// The end of the server log.
        log_tail: String,
    },
    /// Filesystem trouble.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Settings of a throwaway cluster.
#[derive(Debug, Clone, Default)]
pub struct ThrowawayOptions {
    /// Flush commits to disk. Off by default: tests don't survive power loss, and fsync on a
    /// shared CI disk makes commit times noise. Benchmarks of write throughput turn it on.
    pub fsync: bool,
    /// Extra `-c name=value` server settings.
    pub settings: Vec<(String, String)>,
}

/// A running throwaway cluster. Dropping it stops the server and removes its files.
#[derive(Debug)]
pub struct ThrowawayPostgres {
    root: PathBuf,
    data: PathBuf,
    port: u16,
    bin: PathBuf,
    options: ThrowawayOptions,
    postmaster: Mutex<Option<Postmaster>>,
}

#[derive(Debug)]
struct Postmaster {
    pid: u32,
    exited: mpsc::Receiver<()>,
}

impl ThrowawayPostgres {
    /// Creates and starts a cluster with default options.
    pub fn start() -> Result<ThrowawayPostgres, ThrowawayError> {
        ThrowawayPostgres::start_with(ThrowawayOptions::default())
    }

    /// Creates and starts a cluster.
    pub fn start_with(options: ThrowawayOptions) -> Result<ThrowawayPostgres, ThrowawayError> {
        let bin = find_bindir().ok_or(ThrowawayError::NotInstalled)?;
        let template = ensure_template(&bin)?;
        let root = make_owned_dir("pgpush-pg")?;
        let data = root.join("data");
        run(&mut as_postgres(
            Command::new("cp").arg("-a").arg(&template).arg(&data),
        ))?;
        ThrowawayPostgres {
            root,
            data,
            port: 0,
            bin,
            options,
            postmaster: Mutex::new(None),
        }
        .launch()
    }

    /// A streaming standby of this cluster: a base backup taken with `pg_basebackup -R`
    /// (which writes `primary_conninfo` and `standby.signal`), started on a port of its own with
    /// the same options. It follows this cluster asynchronously until it is promoted; set
    /// `synchronous_standby_names` on this cluster to make it synchronous.
    pub fn start_standby(&self) -> Result<ThrowawayPostgres, ThrowawayError> {
        let root = make_owned_dir("pgpush-pg")?;
        let data = root.join("data");
        let backup = run(&mut as_postgres(
            Command::new(self.bin.join("pg_basebackup"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "postgres", "-D"])
                .arg(&data)
                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]),
        ));
        if let Err(error) = backup {
            let _ = fs::remove_dir_all(&root);
            return Err(error);
        }
        ThrowawayPostgres {
            root,
            data,
            port: 0,
            bin: self.bin.clone(),
            options: self.options.clone(),
            postmaster: Mutex::new(None),
        }
        .launch()
    }

    /// Starts the postmaster on a free port. A free port can be taken between our probe and the
    /// server's bind: it tries a few.
    fn launch(mut self) -> Result<ThrowawayPostgres, ThrowawayError> {
        let mut last_error = None;
        for _ in 0..5 {
            self.port = free_port()?;
            match self.start_postmaster() {
                Ok(()) => return Ok(self),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or(ThrowawayError::NotReady {
            log_tail: String::new(),
        }))
    }

    /// A cold backup: stops the server, copies its data directory, starts it again. Returns the
    /// copy, which lives (and is removed) with the cluster.
    pub fn cold_backup(&self) -> Result<PathBuf, ThrowawayError> {
        let backup = self
            .root
            .join(format!("backup-{:08x}", rand::random::<u32>()));
        self.stop_fast()?;
        let copied = run(&mut as_postgres(
            Command::new("cp").arg("-a").arg(&self.data).arg(&backup),
        ));
        self.start_postmaster()?;
        copied.map(|_| backup)
    }

    /// Restores a [`Self::cold_backup`]: stops the server, replaces its data directory with the
    /// backup's, starts it. Everything after the backup is gone.
    pub fn restore(&self, backup: &Path) -> Result<(), ThrowawayError> {
        self.stop_fast()?;
        fs::remove_dir_all(&self.data)?;
        run(&mut as_postgres(
            Command::new("cp").arg("-a").arg(backup).arg(&self.data),
        ))?;
        self.start_postmaster()
    }

    /// `pg_ctl promote -w`: a standby stops following its primary and takes writes, on a new
    /// timeline.
    pub fn promote(&self) -> Result<(), ThrowawayError> {
        run(&mut as_postgres(
            Command::new(self.bin.join("pg_ctl"))
                .args(["promote", "-w", "-t", "60", "-D"])
                .arg(&self.data),
        ))
        .map(|_| ())
    }

    /// SIGKILL to the postmaster and to every process it started, all at once, as when its
    /// machine dies: nothing is flushed or sent, nobody is told.
    pub fn kill(&self) -> Result<(), ThrowawayError> {
        let Some(postmaster) = self.take_postmaster() else {
            return Ok(());
        };
        let children = children_of(postmaster.pid);
        run(Command::new("kill").args(["-KILL", &postmaster.pid.to_string()]))?;
        // A child may be exiting already (a session that just ended): that one is gone anyway.
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(children.iter().map(u32::to_string))
            .stderr(Stdio::null())
            .status();
        let _ = postmaster.exited.recv_timeout(Duration::from_secs(30));
        Ok(())
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the data directory and the server log.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stops the server with `pg_ctl stop -m fast` (clients are disconnected, the server
    /// checkpoints and exits), then starts it again on the same port: what `pg_ctl restart -m
    /// fast` does, keeping the parent-death guard on the new postmaster.
    pub fn restart_fast(&self) -> Result<(), ThrowawayError> {
        self.stop_fast()?;
        self.start_postmaster()
    }

    /// Stops the server with `pg_ctl stop -m fast`.
    pub fn stop_fast(&self) -> Result<(), ThrowawayError> {
        let Some(postmaster) = self.take_postmaster() else {
            return Ok(());
        };
        let result = run(&mut as_postgres(
            Command::new(self.bin.join("pg_ctl"))
                .args(["stop", "-m", "fast", "-w", "-t", "60", "-D"])
                .arg(&self.data),
        ));
        if result.is_err() {
            let _ = Command::new("kill")
                .args(["-KILL", &postmaster.pid.to_string()])
                .status();
        }
        let _ = postmaster.exited.recv_timeout(Duration::from_secs(30));
        result.map(|_| ())
    }

    /// Starts the postmaster (after [`Self::stop_fast`]) and waits until it accepts connections.
    pub fn start_postmaster(&self) -> Result<(), ThrowawayError> {
        let log_path = self.root.join("postgres.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let log_start = log.metadata()?.len();
        let mut command = Command::new("setpriv");
        if running_as_root() {
            command.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]);
        }
        command
            .args(["--pdeathsig", "INT", "--"])
            .arg(self.bin.join("postgres"))
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "unix_socket_directories="])
            .args(["-c", "max_connections=300"])
            .args([
                "-c",
                &format!("fsync={}", if self.options.fsync { "on" } else { "off" }),
            ])
            .args(["-c", "log_min_messages=warning"]);
        for (name, value) in &self.options.settings {
            command.arg("-c").arg(format!("{name}={value}"));
        }
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // The child is spawned from a thread that lives exactly as long as the postmaster:
        // `--pdeathsig` fires when the spawning *thread* ends, so it must not be a pool thread.
        let (spawned_tx, spawned) = mpsc::channel();
        let (exited_tx, exited) = mpsc::channel();
        thread::Builder::new()
            .name(format!("postmaster-{}", self.port))
            .spawn(move || match command.spawn() {
                Ok(mut child) => {
                    let _ = spawned_tx.send(Ok(child.id()));
                    let _ = child.wait();
                    let _ = exited_tx.send(());
                }
                Err(error) => {
                    let _ = spawned_tx.send(Err(error));
                }
            })?;
        let pid = spawned
            .recv()
            .map_err(|_| io::Error::other("postmaster thread ended"))??;
        let postmaster = Postmaster { pid, exited };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if postmaster.exited.try_recv().is_ok() {
                return Err(ThrowawayError::NotReady {
                    log_tail: log_tail(&log_path, log_start),
                });
            }
            if self.is_ready() {
                break;
            }
            if Instant::now() > deadline {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                return Err(ThrowawayError::NotReady {
                    log_tail: log_tail(&log_path, log_start),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
        *self.postmaster.lock().unwrap_or_else(|e| e.into_inner()) = Some(postmaster);
        Ok(())
    }

    /// The running postmaster, which the caller is about to stop.
    fn take_postmaster(&self) -> Option<Postmaster> {
        self.postmaster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// The postmaster writes "ready" (a hot standby: "standby") as line 8 of `postmaster.pid`
    /// once it accepts connections; `pg_ctl -w` waits on the same line.
    fn is_ready(&self) -> bool {
        fs::read_to_string(self.data.join("postmaster.pid"))
            .map(|pid_file| {
                matches!(
                    pid_file.lines().nth(7).map(str::trim),
                    Some("ready" | "standby")
                )
            })
            .unwrap_or(false)
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        let _ = self.stop_fast();
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// The processes whose parent is `pid` (a postmaster's: backends, walsenders, the checkpointer).
fn children_of(pid: u32) -> Vec<u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            // Fields after the parenthesised command name: state, then the parent's pid.
            let parent: u32 = stat.rsplit_once(") ")?.1.split(' ').nth(1)?.parse().ok()?;
            (parent == pid).then_some(child)
        })
        .collect()
}

fn running_as_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Wraps a command to run as the `postgres` user when we are root.
fn as_postgres(command: &mut Command) -> Command {
    if !running_as_root() {
        let mut copy = Command::new(command.get_program());
        copy.args(command.get_args());
        return copy;
    }
    let mut wrapped = Command::new("setpriv");
    wrapped
        .args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(command.get_program())
        .args(command.get_args());
    wrapped
}

fn run(command: &mut Command) -> Result<String, ThrowawayError> {
    let output =
        command
            .stdin(Stdio::null())
            .output()
            .map_err(|error| ThrowawayError::Command {
                command: format!("{command:?}"),
                detail: error.to_string(),
            })?;
    if !output.status.success() {
        return Err(ThrowawayError::Command {
            command: format!("{command:?}"),
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A new private directory under the temp dir, owned by `postgres` when we are root.
fn make_owned_dir(prefix: &str) -> io::Result<PathBuf> {
    let name = format!(
        "{prefix}-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    );
    let dir = std::env::temp_dir().join(name);
    fs::create_dir(&dir)?;
    if running_as_root() {
        let status = Command::new("chown")
            .arg("postgres:postgres")
            .arg(&dir)
            .status()?;
        if !status.success() {
            return Err(io::Error::other(
                "chown postgres failed (is there a postgres user?)",
            ));
        }
    }
    Ok(dir)
}

/// The cached `initdb` output for this PostgreSQL version, created on first use. Concurrent
/// creators each build their own copy and race on an atomic rename; the loser deletes its copy.
fn ensure_template(bin: &Path) -> Result<PathBuf, ThrowawayError> {
    let version = run(Command::new(bin.join("postgres")).arg("--version"))?;
    let version: String = version
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let owner = if running_as_root() {
        "postgres"
    } else {
        "user"
    };
    let template = std::env::temp_dir().join(format!("pgpush-pgtemplate-v1-{owner}-{version}"));
    if template.join("PG_VERSION").exists() {
        return Ok(template);
    }
    let staging = make_owned_dir("pgpush-pgtemplate-staging")?;
    let staged = staging.join("data");
    let initdb = run(&mut as_postgres(
        Command::new(bin.join("initdb"))
            .arg("-D")
            .arg(&staged)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ]),
    ));
    if let Err(error) = initdb {
        let _ = fs::remove_dir_all(&staging);
        return Err(error);
    }
    if fs::rename(&staged, &template).is_err() && !template.join("PG_VERSION").exists() {
        let _ = fs::remove_dir_all(&staging);
        return Err(ThrowawayError::Io(io::Error::other(format!(
            "could not create {}",
            template.display()
        ))));
    }
    let _ = fs::remove_dir_all(&staging);
    Ok(template)
}

/// Where `initdb`, `pg_ctl` and `postgres` live: `$PGPUSH_PG_BINDIR`, `pg_config --bindir`,
/// `initdb` on `PATH`, or the newest `/usr/lib/postgresql/<version>/bin`.
pub fn find_bindir() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("PGPUSH_PG_BINDIR") {
        candidates.push(dir.into());
    }
    if let Ok(output) = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
    {
        candidates.push(PathBuf::from(
            String::from_utf8_lossy(&output.stdout).trim(),
        ));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if let Ok(initdb) = fs::canonicalize(dir.join("initdb")) {
                candidates.extend(initdb.parent().map(Path::to_path_buf));
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort();
    candidates.extend(versions.into_iter().rev().map(|(_, dir)| dir));
    candidates.into_iter().find(|dir| complete(dir))
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = fs::File::open(path) {
        let _ = file.seek(SeekFrom::Start(from));
        let _ = file.read_to_string(&mut text);
    }
    let tail: Vec<&str> = text.lines().rev().take(20).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}
