//! The files ops deploy with stay true to the code: the compose file validates, the rendered
//! nginx configuration is current, the env file lists every setting.

use std::path::PathBuf;

use pgpush_tests::edge::pgpush_binary;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn docker_compose_file_is_valid() {
    let output = std::process::Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config", "-q"])
        .current_dir(workspace())
        .output()
        .unwrap_or_else(|_| panic!("docker-compose not found; install it with: scripts/test --install-only (apt-get install -y docker-compose)"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `pgpush nginx-config` in stream mode for one upstream, as the deploy files render it.
fn render_stream_config(node: &str) -> String {
    let output = std::process::Command::new(pgpush_binary())
        .args([
            "nginx-config",
            "--mode",
            "stream",
            "--listen",
            "0.0.0.0:8080",
        ])
        .args(["--node", node, "--prefix", "/tmp", "--proxy-protocol"])
        .args(["--stream-module", "built-in"])
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_compose_nginx_configuration_is_rendered_from_the_template() {
    let committed = std::fs::read_to_string(workspace().join("deploy/nginx-compose.conf")).unwrap();
    assert_eq!(
        render_stream_config("edge:8080"),
        committed,
        "deploy/nginx-compose.conf is stale: render it again (see docker-compose.yml)"
    );
}

#[test]
fn the_compose_nginx_configuration_starts_on_the_nginx_build_the_compose_file_names() {
    // The official `nginx` image (nginx.org's build) has the stream module compiled in: the file
    // must not load it, or nginx stops at `load_module` on a file the image does not have.
    let compose = std::fs::read_to_string(workspace().join("docker-compose.yml")).unwrap();
    assert!(
        compose.contains("image: nginx:1."),
        "the compose file names the official image"
    );
    let committed = std::fs::read_to_string(workspace().join("deploy/nginx-compose.conf")).unwrap();
    assert_nginx_accepts_a_built_in_stream_config(&committed, "edge:8080");
}

/// Checks a configuration written for an nginx with the stream module compiled in with this
/// machine's nginx, as far as it can: Debian's has the module as a file, so it is loaded first,
/// and `upstream` (a container or Service name) is replaced by an address this machine resolves.
fn assert_nginx_accepts_a_built_in_stream_config(config: &str, upstream: &str) {
    assert!(!config.contains("load_module"), "{config}");
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .expect("nginx is not installed; install it with: scripts/test --install-only");
    let dir = tempfile::tempdir().unwrap();
    let here = format!(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n{}",
        config.replace(upstream, "127.0.0.1:8080")
    )
    .replace("/tmp/", &format!("{}/", dir.path().display()));
    let file = dir.path().join("nginx.conf");
    std::fs::write(&file, here).unwrap();
    let check = std::process::Command::new(nginx)
        .arg("-t")
        .arg("-c")
        .arg(&file)
        .arg("-p")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// A tool `scripts/test` installs from PyPI into `target/test-tools`.
fn test_tool(name: &str) -> PathBuf {
    let tool = workspace().join("target/test-tools/bin").join(name);
    assert!(
        tool.is_file(),
        "{name} is not installed; install it with: scripts/test --install-only"
    );
    tool
}

#[test]
fn the_kubernetes_manifests_pass_the_schemas_and_the_restricted_pod_security_checks() {
    let manifest = workspace().join("deploy/kubernetes/pgpush.yaml");
    let schemas = std::process::Command::new(test_tool("kubernetes-validate"))
        .arg("--strict")
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(
        schemas.status.success(),
        "kubernetes-validate: {}{}",
        String::from_utf8_lossy(&schemas.stdout),
        String::from_utf8_lossy(&schemas.stderr)
    );
    // Checkov's checks for what the restricted Pod Security Standard demands (no privileged or
    // host-namespace pods, no privilege escalation, non-root, dropped capabilities, a seccomp
    // profile), and the hygiene around it (requests and limits, a read-only root, no service
    // account token, not the default namespace, network policies).
    let checks = [
        "CKV_K8S_10",
        "CKV_K8S_11",
        "CKV_K8S_12",
        "CKV_K8S_13",
        "CKV_K8S_16",
        "CKV_K8S_17",
        "CKV_K8S_18",
        "CKV_K8S_19",
        "CKV_K8S_20",
        "CKV_K8S_21",
        "CKV_K8S_22",
        "CKV_K8S_23",
        "CKV_K8S_25",
        "CKV_K8S_26",
        "CKV_K8S_27",
        "CKV_K8S_28",
        "CKV_K8S_29",
        "CKV_K8S_30",
        "CKV_K8S_31",
        "CKV_K8S_37",
        "CKV_K8S_38",
        "CKV2_K8S_6",
    ];
    let security = std::process::Command::new(test_tool("checkov"))
        .args([
            "--framework",
            "kubernetes",
            "--compact",
            "--quiet",
            "--check",
        ])
        .arg(checks.join(","))
        .arg("-f")
        .arg(&manifest)
        .env("BC_SKIP_MAPPING", "TRUE")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    assert!(
        security.status.success() && report.contains("Failed checks: 0"),
        "checkov: {report}"
    );
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(
        text.contains("pod-security.kubernetes.io/enforce: restricted"),
        "the namespace enforces the profile"
    );
    assert!(
        !text.contains("kind: Job"),
        "migrations run in an init container, no racing Job"
    );
    assert!(
        text.contains("PGPUSH_PROXY_PROTOCOL"),
        "client addresses reach the nodes"
    );
    assert!(text.contains("topologySpreadConstraints"));
    // What its annotations point to exists.
    assert!(workspace().join("deploy/prometheus/README.md").is_file());
}

#[test]
fn the_kubernetes_nginx_configuration_is_rendered_from_the_template_and_starts() {
    let manifest =
        std::fs::read_to_string(workspace().join("deploy/kubernetes/pgpush.yaml")).unwrap();
    let (_, rest) = manifest
        .split_once("  nginx.conf: |\n")
        .expect("the nginx ConfigMap");
    let mut embedded = String::new();
    for line in rest.lines() {
        if !line.is_empty() && !line.starts_with("    ") {
            break;
        }
        embedded.push_str(line.strip_prefix("    ").unwrap_or(line));
        embedded.push('\n');
    }
    assert_eq!(
        render_stream_config("pgpush-edge:8080"),
        embedded,
        "the ConfigMap in deploy/kubernetes/pgpush.yaml is stale: render it again (see its comment)"
    );
    assert_nginx_accepts_a_built_in_stream_config(&embedded, "pgpush-edge:8080");
}

#[test]
fn the_systemd_unit_verifies_and_needs_no_user_made_beforehand() {
    let unit = std::fs::read_to_string(workspace().join("deploy/systemd/pgpush.service")).unwrap();
    assert!(unit.contains("DynamicUser=yes"), "{unit}");
    // Verified as installed: the binary and the settings where the unit expects them are this
    // build's and the repository's.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgpush.service");
    let env_file = workspace().join("deploy/pgpush.env");
    std::fs::write(
        &file,
        unit.replace(
            "/usr/local/bin/pgpush",
            &pgpush_binary().display().to_string(),
        )
        .replace("/etc/pgpush/pgpush.env", &env_file.display().to_string()),
    )
    .unwrap();
    let verify = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .output()
        .expect("systemd-analyze not found; install it with: scripts/test --install-only");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze: {said}"
    );
}

#[test]
fn the_env_file_lists_every_setting() {
    let help = std::process::Command::new(pgpush_binary())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let env_file = std::fs::read_to_string(workspace().join("deploy/pgpush.env")).unwrap();
    let variables: Vec<&str> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .collect();
    assert!(variables.len() > 30, "{variables:?}");
    for variable in variables {
        assert!(
            env_file.contains(&format!("{variable}=")),
            "deploy/pgpush.env lacks {variable}"
        );
    }
}
