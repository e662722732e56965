//! Headless Chromium (Debian's) driven through Playwright by `tests/browser/driver.mjs`: the
//! tests keep their logic in Rust and send the browser one request at a time.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

const SETUP: &str = "run `scripts/test --install-only` (apt-get install chromium nodejs npm; npm ci --prefix tests/browser)";

/// A browser tab, named by the driver.
#[derive(Debug, Clone)]
pub struct Page(String);

/// One Chromium with its driver process; closed when dropped.
#[derive(Debug)]
pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    next_id: u64,
}

/// `tests/browser`: the driver and its npm packages.
pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// Where tests write screenshots: `target/screenshots/`.
pub fn screenshot_path(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir.join(name)
}

impl Browser {
    /// Starts Chromium; panics with the setup command when it or Playwright is missing.
    pub async fn start() -> Browser {
        let chromium =
            std::env::var("PGPUSH_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            Path::new(&chromium).is_file(),
            "no Chromium at {chromium}: {SETUP}"
        );
        assert!(
            browser_dir().join("node_modules/playwright-core").is_dir(),
            "Playwright is not installed in tests/browser: {SETUP}"
        );
        let mut child = Command::new("node")
            .arg("driver.mjs")
            .current_dir(browser_dir())
            .env("PGPUSH_CHROMIUM", &chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run node: {error}: {SETUP}"));
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), stdout.next_line())
            .await
            .expect("Chromium did not start within 60 s")
            .expect("driver output")
            .unwrap_or_else(|| panic!("the browser driver exited: {SETUP}"));
        let hello: Value = serde_json::from_str(&first).expect("driver hello");
        assert_eq!(hello["ready"], true, "driver: {first}");
        Browser {
            child,
            stdin,
            stdout,
            next_id: 1,
        }
    }

    async fn call(&mut self, mut request: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        request["id"] = json!(id);
        let line = format!("{request}\n");
        self.stdin
            .write_all(line.as_bytes())
            .await
            .expect("driver stdin");
        loop {
            let line = tokio::time::timeout(Duration::from_secs(120), self.stdout.next_line())
                .await
                .expect("the browser driver did not answer within 120 s")
                .expect("driver output")
                .expect("the browser driver exited");
            let answer: Value = serde_json::from_str(&line).expect("driver answer");
            if answer["id"] != json!(id) {
                continue;
            }
            return if answer["ok"] == true {
                Ok(answer["result"].clone())
            } else {
                Err(answer["error"].as_str().unwrap_or_default().to_owned())
            };
        }
    }

    async fn must(&mut self, request: Value) -> Value {
        let what = request.to_string();
        match self.call(request).await {
            Ok(result) => result,
            Err(error) => panic!("browser: {what} failed: {error}"),
        }
    }

    /// A new tab; `init_script` runs in every document it loads, before the page's scripts.
    pub async fn new_page(&mut self, init_script: Option<&str>) -> Page {
        let name = self
            .must(json!({"op": "newPage", "initScript": init_script}))
            .await;
        Page(name.as_str().expect("page name").to_owned())
    }

    /// Loads `url` in `page` and waits for its load event.
    pub async fn goto(&mut self, page: &Page, url: &str) {
        self.must(json!({"op": "goto", "page": page.0, "url": url}))
            .await;
    }

    /// The JSON value of a JavaScript expression (awaited when it is a promise).
    pub async fn eval(&mut self, page: &Page, expression: &str) -> Value {
        self.must(json!({"op": "evaluate", "page": page.0, "expression": expression}))
            .await
    }

    /// Waits until `expression` is truthy and returns it; panics after `timeout` with the page's
    /// console output.
    pub async fn wait_for(&mut self, page: &Page, expression: &str, timeout: Duration) -> Value {
        let request = json!({
            "op": "waitFor", "page": page.0, "expression": expression,
            "timeoutMs": timeout.as_millis() as u64,
        });
        match self.call(request).await {
            Ok(value) => value,
            Err(error) => {
                let logs = self.logs(page).await;
                panic!(
                    "waiting for `{expression}`: {error}\npage console:\n{}",
                    logs.join("\n")
                )
            }
        }
    }

    /// Types `text` into the element at `selector`.
    pub async fn fill(&mut self, page: &Page, selector: &str, text: &str) {
        self.must(json!({"op": "fill", "page": page.0, "selector": selector, "text": text}))
            .await;
    }

    /// Presses `key` (e.g. `Enter`) in the element at `selector`.
    pub async fn press(&mut self, page: &Page, selector: &str, key: &str) {
        self.must(json!({"op": "press", "page": page.0, "selector": selector, "key": key}))
            .await;
    }

    /// Writes a PNG of the visible page.
    pub async fn screenshot(&mut self, page: &Page, path: &Path) {
        self.must(json!({"op": "screenshot", "page": page.0, "path": path}))
            .await;
    }

    /// The page's console messages and uncaught errors so far.
    pub async fn logs(&mut self, page: &Page) -> Vec<String> {
        match self.call(json!({"op": "logs", "page": page.0})).await {
            Ok(Value::Array(lines)) => lines
                .into_iter()
                .map(|line| line.as_str().unwrap_or_default().to_owned())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Closes a tab.
    pub async fn close(&mut self, page: &Page) {
        self.must(json!({"op": "close", "page": page.0})).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
