//! A real nginx in front of edge nodes, configured by `pgpush nginx-config` (the same renderer
//! `pgpush up` uses).

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use tokio::process::{Child, Command};

use crate::edge::pgpush_binary;

/// The command that installs nginx for the tests.
pub const SETUP_COMMAND: &str =
    "scripts/test --install-only (or: apt-get install -y nginx libnginx-mod-stream)";

/// A running nginx; stopped when dropped.
#[derive(Debug)]
pub struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    address: SocketAddr,
    binary: PathBuf,
}

/// Where nginx is; panics naming the setup command when it is not installed.
pub fn nginx_binary() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("nginx is not installed; install it with: {SETUP_COMMAND}"))
}

impl Nginx {
    /// Renders a configuration for `nodes` in `mode` (`stream` or `http`), checks it with
    /// `nginx -t`, and starts nginx on a free port.
    pub async fn start(mode: &str, nodes: &[SocketAddr], proxy_protocol: bool) -> Nginx {
        let binary = nginx_binary();
        if mode == "stream" {
            assert!(
                std::path::Path::new("/usr/lib/nginx/modules/ngx_stream_module.so").exists(),
                "nginx's stream module is not installed; install it with: {SETUP_COMMAND}"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("pgpush-nginx-")
            .tempdir()
            .expect("temp dir");
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        // Workers run unprivileged when the master runs as root.
        let _ = std::process::Command::new("chmod")
            .args(["0777"])
            .arg(&tmp)
            .status();
        let _ = std::process::Command::new("chmod")
            .args(["0711"])
            .arg(dir.path())
            .status();
        let address = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut render = Command::new(pgpush_binary());
        render
            .args([
                "nginx-config",
                "--mode",
                mode,
                "--listen",
                &address.to_string(),
                "--prefix",
            ])
            .arg(dir.path());
        for node in nodes {
            render.args(["--node", &node.to_string()]);
        }
        if proxy_protocol {
            render.arg("--proxy-protocol");
        }
        let output = render.output().await.expect("pgpush nginx-config");
        assert!(
            output.status.success(),
            "nginx-config failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let config = dir.path().join("nginx.conf");
        std::fs::write(&config, &output.stdout).unwrap();
        let check = Command::new(&binary)
            .arg("-t")
            .arg("-c")
            .arg(&config)
            .arg("-p")
            .arg(dir.path())
            .output()
            .await
            .expect("nginx -t");
        assert!(
            check.status.success(),
            "nginx -t refused the configuration: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .arg("-p")
            .arg(dir.path())
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start nginx");
        let nginx = Nginx {
            child,
            dir,
            address,
            binary,
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(address).await.is_ok() {
                return nginx;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("nginx did not listen on {address}: {}", nginx.error_log());
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `ws://<address><path>`
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.address)
    }

    /// `nginx -s reload`: new workers with the configuration, old ones finish their connections.
    pub async fn reload(&self) {
        let status = Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.path().join("nginx.conf"))
            .arg("-p")
            .arg(self.dir.path())
            .args(["-s", "reload"])
            .status()
            .await
            .expect("nginx -s reload");
        assert!(status.success(), "nginx -s reload failed");
    }

    /// nginx's error log.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
}
