//! nginx configurations for a set of nodes, rendered from the templates in `nginx/`.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
};

/// How nginx proxies to the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum NginxMode {
    /// The stream (TCP) module: an L4 proxy, optionally with the PROXY protocol.
    Stream,
    /// The HTTP proxy: WebSocket upgrade, unbuffered streams, `X-Forwarded-For`.
    Http,
}

/// What to render.
#[derive(Debug, Clone)]
pub(crate) struct NginxConfig {
    /// Proxy mode.
    pub(crate) mode: NginxMode,
    /// Where nginx accepts clients.
    pub(crate) listen: SocketAddr,
    /// The nodes, as `host:port`.
    pub(crate) nodes: Vec<String>,
    /// nginx's prefix directory (pid file, logs, temp files).
    pub(crate) prefix: PathBuf,
    /// Send a PROXY protocol header to the nodes (stream mode).
    pub(crate) proxy_protocol: bool,
    /// The nodes' Hippie prefix (http mode routes it by client_id).
    pub(crate) hippie_prefix: String,
    /// Worker processes.
    pub(crate) workers: usize,
    /// How the stream module is there (stream mode).
    pub(crate) stream_module: StreamModule,
}

/// How an nginx build has its stream module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StreamModule {
    /// Compiled in (nginx.org's packages and the official `nginx` images): nothing to load.
    BuiltIn,
    /// A dynamic module to load first (Debian's `libnginx-mod-stream`).
    Load(PathBuf),
}

impl StreamModule {
    /// What the nginx binary at `nginx` needs, from its `nginx -V` configure arguments; when
    /// there is no such binary, what this machine's module files say.
    pub(crate) fn of(nginx: &Path) -> StreamModule {
        let configured = std::process::Command::new(nginx)
            .arg("-V")
            .output()
            .map(|out| String::from_utf8_lossy(&out.stderr).into_owned());
        match configured {
            Ok(text) if text.contains("--with-stream=dynamic") => {
                StreamModule::Load(STREAM_MODULE.into())
            }
            Ok(text) if text.contains("--with-stream") => StreamModule::BuiltIn,
            _ if Path::new(STREAM_MODULE).exists() => StreamModule::Load(STREAM_MODULE.into()),
            _ => StreamModule::BuiltIn,
        }
    }
}

const STREAM_TEMPLATE: &str = include_str!("../../../nginx/stream.conf.template");
const HTTP_TEMPLATE: &str = include_str!("../../../nginx/http.conf.template");

/// The nginx binary `configured` names: a path as given, or a name looked up on `PATH` and in
/// the sbin directories.
pub(crate) fn find_nginx(configured: &Path) -> Option<PathBuf> {
    if configured.components().count() > 1 {
        return configured.is_file().then(|| configured.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(configured))
        .find(|candidate| candidate.is_file())
}

/// Where Debian's libnginx-mod-stream puts the stream module.
pub(crate) const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

impl NginxConfig {
    /// The configuration file's text.
    pub(crate) fn render(&self) -> String {
        let mut servers = String::new();
        for node in &self.nodes {
            let _ = writeln!(
                servers,
                "        server {node} max_fails=1 fail_timeout=5s;"
            );
        }
        let servers = servers.trim_end().to_owned();
        let (template, load_module) = match (self.mode, &self.stream_module) {
            (NginxMode::Stream, StreamModule::Load(path)) => {
                (STREAM_TEMPLATE, format!("load_module {};", path.display()))
            }
            (NginxMode::Stream, StreamModule::BuiltIn) => (
                STREAM_TEMPLATE,
                "# The stream module is compiled into this nginx: nothing to load.".to_owned(),
            ),
            (NginxMode::Http, _) => (HTTP_TEMPLATE, String::new()),
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
            stream_module: StreamModule::Load(STREAM_MODULE.into()),
        }
    }

    #[test]
    fn the_stream_module_is_loaded_only_where_it_is_not_built_in() {
        let loaded = config(NginxMode::Stream).render();
        assert!(loaded.contains(&format!("load_module {STREAM_MODULE};")));
        let built_in = NginxConfig {
            stream_module: StreamModule::BuiltIn,
            ..config(NginxMode::Stream)
        };
        assert!(!built_in.render().contains("load_module"));
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
