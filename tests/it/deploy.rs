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

#[test]
fn the_compose_nginx_configuration_is_rendered_from_the_template() {
    let output = std::process::Command::new(pgpush_binary())
        .args([
            "nginx-config",
            "--mode",
            "stream",
            "--listen",
            "0.0.0.0:8080",
            "--node",
            "edge:8080",
            "--prefix",
            "/tmp",
            "--proxy-protocol",
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    let committed = std::fs::read_to_string(workspace().join("deploy/nginx-compose.conf")).unwrap();
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        committed,
        "deploy/nginx-compose.conf is stale: render it again (see docker-compose.yml)"
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
