//! `pgpush up`: a whole local deployment — N edge nodes behind nginx on one database — started
//! with one command and stopped cleanly with Ctrl-C.

use std::{net::SocketAddr, path::Path, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tokio_util::sync::CancellationToken;

use crate::{
    args::UpArgs,
    nginx::{NginxConfig, NginxMode},
};

/// Why `up` could not bring the deployment up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpError {
    /// A process could not be started or did not come up.
    #[error("{0}")]
    Start(String),
    /// Filesystem trouble.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A child process `up` owns; stopped by [`stop_all`], or by its parent-death signal.
struct Owned {
    name: String,
    child: Child,
}

/// Runs the deployment until `shutdown`, then stops it: nginx first (no new connections), then
/// the nodes (they drain: clients are told to reconnect), then returns so the caller removes the
/// database it started.
pub(crate) async fn up(
    args: UpArgs,
    database_url: String,
    shutdown: CancellationToken,
) -> Result<(), UpError> {
    let options = pgpush_pg::ConnectOptions::parse(&database_url)
        .map_err(|e| UpError::Start(e.to_string()))?;
    // The one address clients use must be ours: fail now, before anything is started.
    std::net::TcpListener::bind(args.listen)
        .map_err(|e| UpError::Start(format!("cannot listen on {}: {e}", args.listen)))?;
    pgpush_edge::migrate(&options)
        .await
        .map_err(|e| UpError::Start(format!("migration failed: {e}")))?;
    if args.demo {
        crate::demo::demo_setup(&options, pgpush_demo::Trigger::Durable)
            .await
            .map_err(|e| UpError::Start(format!("the location demo: {e}")))?;
    }
    let workdir = tempfile::Builder::new().prefix("pgpush-up-").tempdir()?;
    let nginx = crate::nginx::find_nginx(&args.nginx);
    let nodes_wanted = if nginx.is_some() {
        usize::from(args.nodes)
    } else {
        1
    };
    if nginx.is_none() {
        eprintln!(
            "pgpush up: nginx not found ({}); starting one node on {} instead of {} behind nginx.\n  \
             Install it with: apt-get install -y nginx libnginx-mod-stream",
            args.nginx.display(),
            args.listen,
            args.nodes
        );
    }
    let mut owned: Vec<Owned> = Vec::new();
    let result = start_all(
        &args,
        &database_url,
        workdir.path(),
        nginx.as_deref(),
        nodes_wanted,
        &mut owned,
    )
    .await;
    match result {
        Ok(summary) => {
            println!("{summary}");
            if args.demo {
                let simulate = args.simulate.clone();
                let stop = shutdown.clone();
                tokio::spawn(async move {
                    if let Err(error) = crate::demo::demo_simulate(&options, &simulate, stop).await
                    {
                        eprintln!("pgpush up: the people simulator stopped: {error}");
                    }
                });
            }
            println!("Press Ctrl-C to stop (everything started here is removed).");
            let served = wait_for_stop(&mut owned, &shutdown).await;
            stop_all(&mut owned).await;
            drop(workdir);
            served?;
            println!("pgpush up: stopped");
            Ok(())
        }
        Err(error) => {
            stop_all(&mut owned).await;
            Err(error)
        }
    }
}

async fn start_all(
    args: &UpArgs,
    database_url: &str,
    workdir: &Path,
    nginx: Option<&Path>,
    nodes_wanted: usize,
    owned: &mut Vec<Owned>,
) -> Result<String, UpError> {
    let exe = std::env::current_exe()?;
    let proxy_protocol = args.mode == NginxMode::Stream;
    let mut addresses = Vec::new();
    for index in 0..nodes_wanted {
        let listen = if nginx.is_some() {
            "127.0.0.1:0".to_owned()
        } else {
            args.listen.to_string()
        };
        let name = format!("node-{}", index + 1);
        let log = std::fs::File::create(workdir.join(format!("{name}.log")))?;
        let mut command = guarded(&exe);
        command
            .args(["serve", "--listen", &listen, "--database-url", database_url])
            .args(["--node-id", &format!("{name}@{}", std::process::id())]);
        if args.demo {
            command.arg("--demo");
        }
        if nginx.is_some() {
            command.args(["--trusted-proxy", "127.0.0.1"]);
            if proxy_protocol {
                command.arg("--proxy-protocol");
            }
        }
        command
            .args(&args.node_args)
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = command
            .spawn()
            .map_err(|e| UpError::Start(format!("starting {name}: {e}")))?;
        let stdout = child.stdout.take().expect("piped stdout");
        owned.push(Owned {
            name: name.clone(),
            child,
        });
        let address = read_address(stdout).await.ok_or_else(|| {
            let log = workdir.join(format!("{name}.log"));
            UpError::Start(format!("{name} did not start: {}", last_lines(&log)))
        })?;
        addresses.push(address);
    }
    let mut lines = Vec::new();
    if let Some(nginx) = nginx {
        std::fs::create_dir_all(workdir.join("tmp"))?;
        make_world_writable(&workdir.join("tmp"))?;
        let config = NginxConfig {
            mode: args.mode,
            listen: args.listen,
            nodes: addresses.iter().map(ToString::to_string).collect(),
            prefix: workdir.to_path_buf(),
            proxy_protocol,
            hippie_prefix: "/_hippie".into(),
            workers: args.nginx_workers,
            stream_module: crate::nginx::StreamModule::of(nginx),
        };
        let file = workdir.join("nginx.conf");
        std::fs::write(&file, config.render())?;
        let mut command = guarded(nginx);
        command
            .arg("-c")
            .arg(&file)
            .arg("-p")
            .arg(workdir)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(workdir.join("nginx.stderr"))?);
        let child = command
            .spawn()
            .map_err(|e| UpError::Start(format!("starting nginx: {e}")))?;
        owned.push(Owned {
            name: "nginx".into(),
            child,
        });
        let nginx = owned.last_mut().expect("just pushed");
        if !nginx_listens(&mut nginx.child, args.listen).await {
            let said = [workdir.join("nginx.stderr"), workdir.join("error.log")]
                .iter()
                .map(|path| last_lines(path))
                .filter(|text| !text.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(UpError::Start(format!(
                "nginx did not listen on {}: {said}",
                args.listen
            )));
        }
        lines.push(format!(
            "pgpush is up: {} behind nginx ({} mode) on http://{}",
            match addresses.len() {
                1 => "1 node".to_owned(),
                n => format!("{n} nodes"),
            },
            match args.mode {
                NginxMode::Stream => "stream",
                NginxMode::Http => "http",
            },
            args.listen
        ));
        for (index, address) in addresses.iter().enumerate() {
            lines.push(format!(
                "  node-{}      http://{address}  (metrics: http://{address}/metrics)",
                index + 1
            ));
        }
    } else {
        lines.push(format!("pgpush is up: one node on http://{}", args.listen));
    }
    let base = format!("http://{}", args.listen);
    let ws = format!("ws://{}", args.listen);
    lines.push(format!("  WebSocket   {ws}/v1/ws?channel=<name>"));
    lines.push(format!("  SSE         {base}/v1/sse?channel=<name>"));
    lines.push(format!(
        "  publish     curl -X POST {base}/v1/publish/<name> -d '{{\"hello\":\"world\"}}'"
    ));
    lines.push(format!(
        "  pages       {base}/  {base}/stats  {base}/demo/chat"
    ));
    if args.demo {
        lines.push(format!(
            "  map         {base}/demo/map  ({} people, {} moves/s)",
            args.simulate.people, args.simulate.rate
        ));
    }
    lines.push(format!("  client      {base}/pgpush.js"));
    lines.push(format!("  stats       {base}/v1/stats"));
    if nginx.is_none() {
        lines.push(format!("  metrics     {base}/metrics"));
    }
    lines.push(format!("  Hippie      {base}/_hippie/stats"));
    lines.push(format!("  database    {database_url}"));
    lines.push(format!(
        "  shell       export DATABASE_URL='{database_url}'"
    ));
    lines.push(format!("  files       {}", workdir.display()));
    Ok(lines.join("\n"))
}

/// A command that gets SIGTERM when `up` dies (`setpriv --pdeathsig`), so nothing outlives it.
/// Not SIGKILL: an nginx master killed outright leaves its workers running.
fn guarded(program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    command.args(["--pdeathsig", "TERM", "--"]).arg(program);
    command
}

async fn read_address(stdout: tokio::process::ChildStdout) -> Option<SocketAddr> {
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(address) = line.strip_prefix("pgpush listening on http://") {
                return address.parse().ok();
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    // Keep reading so the node never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    found
}

/// True once nginx accepts connections on `address` (within 5 s), false if it exited first.
async fn nginx_listens(nginx: &mut Child, address: SocketAddr) -> bool {
    for _ in 0..100 {
        if !matches!(nginx.try_wait(), Ok(None)) {
            return false;
        }
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            // Still ours: nginx did not exit on a failed bind meanwhile.
            return matches!(nginx.try_wait(), Ok(None));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The last lines of a log file, joined, for an error message (its folder is removed after).
fn last_lines(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

/// Serves until `shutdown`. A node that exits is reported once (the others keep serving); if
/// nginx, the only way in, exits, or every node did, the deployment is over: an error.
async fn wait_for_stop(owned: &mut [Owned], shutdown: &CancellationToken) -> Result<(), UpError> {
    let mut check = tokio::time::interval(Duration::from_secs(1));
    let mut reported = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = check.tick() => {
                for process in owned.iter_mut() {
                    let Ok(Some(status)) = process.child.try_wait() else { continue };
                    if process.name == "nginx" {
                        return Err(UpError::Start(format!("nginx exited ({status})")));
                    }
                    if reported.insert(process.name.clone()) {
                        eprintln!("pgpush up: {} exited ({status}); the others keep serving", process.name);
                    }
                }
                if reported.len() == owned.iter().filter(|p| p.name != "nginx").count() {
                    return Err(UpError::Start("every node exited".to_owned()));
                }
            }
        }
    }
}

/// nginx first (graceful quit), then the nodes (SIGTERM: they drain), each with a deadline.
async fn stop_all(owned: &mut Vec<Owned>) {
    owned.sort_by_key(|p| if p.name == "nginx" { 0 } else { 1 });
    for process in owned.iter_mut() {
        let signal = if process.name == "nginx" {
            "QUIT"
        } else {
            "TERM"
        };
        if let Some(pid) = process.child.id() {
            let _ = std::process::Command::new("kill")
                .args([format!("-{signal}"), pid.to_string()])
                .status();
        }
    }
    for process in owned.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(30), process.child.wait())
            .await
            .is_err()
        {
            let _ = process.child.kill().await;
        }
    }
    owned.clear();
}

fn make_world_writable(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // nginx workers run as an unprivileged user when started as root.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))?;
    if let Some(parent) = dir.parent() {
        let mode = std::fs::metadata(parent)?.permissions().mode() | 0o711;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}
