//! nginx configurations for a set of nodes, rendered from the templates in `nginx/`.

use std::{fmt::Write as _, net::SocketAddr, path::PathBuf};

/// How nginx proxies to the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NginxMode {
    /// The stream (TCP) module: an L4 proxy, optionally with the PROXY protocol.
    Stream,
    /// The HTTP proxy: WebSocket upgrade, unbuffered streams, `X-Forwarded-For`.
    Http,
}

/// What to render.
#[derive(Debug, Clone)]
pub struct NginxConfig {
    /// Proxy mode.
    pub mode: NginxMode,
    /// Where nginx accepts clients.
    pub listen: SocketAddr,
    /// The nodes, as `host:port`.
    pub nodes: Vec<String>,
    /// nginx's prefix directory (pid file, logs, temp files).
    pub prefix: PathBuf,
    /// Send a PROXY protocol header to the nodes (stream mode).
    pub proxy_protocol: bool,
    /// The nodes' Hippie prefix (http mode routes it by client_id).
    pub hippie_prefix: String,
    /// Worker processes.
    pub workers: usize,
}

const STREAM_TEMPLATE: &str = include_str!("../../../nginx/stream.conf.template");
const HTTP_TEMPLATE: &str = include_str!("../../../nginx/http.conf.template");

/// Where Debian's libnginx-mod-stream (and the official nginx images) put the stream module.
pub const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

impl NginxConfig {
    /// The configuration file's text.
    pub fn render(&self) -> String {
        let mut servers = String::new();
        for node in &self.nodes {
            let _ = writeln!(
                servers,
                "        server {node} max_fails=1 fail_timeout=5s;"
            );
        }
        let servers = servers.trim_end().to_owned();
        let (template, load_module) = match self.mode {
            NginxMode::Stream => (STREAM_TEMPLATE, format!("load_module {STREAM_MODULE};")),
            NginxMode::Http => (HTTP_TEMPLATE, String::new()),
        };
        let proxy_protocol = if self.proxy_protocol {
            "        proxy_protocol on;"
        } else {
            ""
        };
        template
            .replace("{{load_module}}", &load_module)
            .replace("{{workers}}", &self.workers.max(1).to_string())
            .replace("{{prefix}}", &self.prefix.display().to_string())
            .replace("{{listen}}", &self.listen.to_string())
            .replace("{{servers}}", &servers)
            .replace("{{proxy_protocol}}", proxy_protocol)
            .replace("{{hippie_prefix}}", &self.hippie_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mode: NginxMode) -> NginxConfig {
        NginxConfig {
            mode,
            listen: "127.0.0.1:8080".parse().unwrap(),
            nodes: vec!["127.0.0.1:9001".into(), "127.0.0.1:9002".into()],
            prefix: "/tmp/x".into(),
            proxy_protocol: true,
            hippie_prefix: "/_hippie".into(),
            workers: 2,
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        for mode in [NginxMode::Stream, NginxMode::Http] {
            let text = config(mode).render();
            assert!(!text.contains("{{"), "{text}");
            assert!(text.contains("server 127.0.0.1:9001 max_fails=1 fail_timeout=5s;"));
            assert!(text.contains("server 127.0.0.1:9002 max_fails=1 fail_timeout=5s;"));
            assert!(text.contains("listen 127.0.0.1:8080"));
            assert!(text.contains("pid /tmp/x/nginx.pid;"));
        }
        assert!(
            config(NginxMode::Stream)
                .render()
                .contains("proxy_protocol on;")
        );
        let http = config(NginxMode::Http).render();
        assert!(http.contains("location /_hippie/ {"));
        assert!(http.contains("hash $arg_client_id consistent;"));
    }
}
