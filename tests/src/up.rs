//! `pgpush up` as a real process: a whole local deployment on a free address, its printed
//! summary, and a Ctrl-C to stop it.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::edge::pgpush_binary;

/// A running `pgpush up` on its own throwaway database.
#[derive(Debug)]
pub struct Up {
    /// The process (killed when dropped).
    pub process: Child,
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The summary it printed, up to "Press Ctrl-C".
    pub printed: Vec<String>,
}

impl Up {
    /// Runs `pgpush up --listen <a free address> <args>` without `DATABASE_URL` and waits (60 s
    /// at most) until it says it is up.
    pub async fn start(args: &[&str]) -> Up {
        let listen = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut process = Command::new(pgpush_binary())
            .args(["up", "--listen", &listen.to_string()])
            .args(args)
            .env_remove("DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
        let mut printed = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                let done = line.starts_with("Press Ctrl-C");
                printed.push(line);
                if done {
                    break;
                }
            }
        })
        .await
        .expect("pgpush up came up within 60 s");
        // Keep reading so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Up {
            process,
            listen,
            printed,
        }
    }

    /// The value of the summary line that starts with `name` (`files`, `database`, ...).
    pub fn field(&self, name: &str) -> String {
        self.printed
            .iter()
            .find_map(|line| {
                line.trim_start()
                    .strip_prefix(name)
                    .map(|value| value.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no {name} line in {:#?}", self.printed))
    }
}
