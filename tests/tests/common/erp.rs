//! The reference server `examples/erp_backend` as a process (built once per test run with
//! cargo, or taken from `ERP_BACKEND_BIN`), and HTTP/1.1 over a raw socket to drive it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cache_sdk_tests::free_port;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every request must be answered within this, or the test fails as a hang.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

// ---------------------------------------------------------------------------------------
// The server process

/// The example binary, built once per test run.
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(build_binary)
}

fn build_binary() -> PathBuf {
    if let Ok(bin) = std::env::var("ERP_BACKEND_BIN") {
        return bin.into();
    }
    // This test runs from <target>/<profile>/deps; the example goes to
    // <target>/<profile>/examples.
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("<target>/<profile>");
    let target_dir = profile_dir.parent().expect("<target>");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The whole workspace with all features, as `cargo test --workspace --all-features`
    // selects it: then the example built by that run is reused as it is, instead of being
    // rebuilt with another set of dependency features.
    let out = Command::new(cargo)
        .args(["build", "--quiet", "--workspace", "--all-features"])
        .args(["--example", "erp_backend", "--profile", profile])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "building examples/erp_backend failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    profile_dir
        .join("examples")
        .join(format!("erp_backend{}", std::env::consts::EXE_SUFFIX))
}

/// Variables of the test's own environment that would configure the server: removed, so
/// that a server only ever sees the Redis its test started.
fn is_config_var(name: &str) -> bool {
    [
        "REDIS_", "SESSION_", "CACHE_", "HTTP_", "LOGIN_", "WS_", "ERP_DB_",
    ]
    .iter()
    .any(|p| name.starts_with(p))
        || [
            "APP_ENV",
            "NODE_ENV",
            "PORT",
            "HOST",
            "RUST_LOG",
            "DATABASE_URL",
            "CORS_ORIGINS",
            "ALLOWED_ORIGINS",
            "TRUST_PROXY_HOPS",
        ]
        .contains(&name)
}

/// A command that runs the server without any configuration variable of the test's own
/// environment, logging at `info` into `log`, in `dir` (so that no `.env` file is read).
pub fn server_command(dir: &Path, log: File) -> Command {
    let mut cmd = Command::new(binary());
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_config_var) {
            cmd.env_remove(name);
        }
    }
    cmd.env("RUST_LOG", "info")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log);
    cmd
}

/// A running `erp_backend`, killed on drop.
#[derive(Debug)]
pub struct Backend {
    /// The loopback port it listens on.
    pub port: u16,
    /// Its working directory (where its log and a relative database file go).
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Backend {
    /// Starts the server on a free port with exactly these configuration variables (in an
    /// empty working directory, so no `.env` file is read) and waits until it answers.
    pub async fn start(env: &[(&str, &str)]) -> Backend {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "cache-sdk-{}-{}-{port}",
            env!("CARGO_CRATE_NAME"),
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let log = File::create(dir.join("server.log")).expect("log file");
        let child = server_command(&dir, log)
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .envs(env.iter().copied())
            .spawn()
            .expect("start erp_backend");
        let mut backend = Backend {
            port,
            dir,
            child: Some(child),
        };
        backend.wait_ready().await;
        backend
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("erp_backend exited with {status}:\n{}", self.logs());
            }
            if let Ok(Ok(r)) = tokio::time::timeout(
                REQUEST_TIMEOUT,
                request(self.port, "GET", "/healthz", &[], b""),
            )
            .await
            {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "erp_backend did not answer:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// What the server logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Sends a signal and waits (at most 5 s) for the process to exit.
    pub async fn stop_with(&mut self, signal: &str) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "erp_backend still running 5 s after SIG{signal}:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 over a raw socket

/// An answer, its body de-chunked.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    /// The first header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn set_cookies(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// `name=value` of the first cookie it sets.
    pub fn cookie(&self) -> Option<String> {
        self.header("set-cookie")
            .and_then(|v| v.split(';').next())
            .map(|c| c.trim().to_owned())
    }

    /// Asserts the status and returns the JSON body.
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        self.json()
    }
}

/// One request on its own connection (`Connection: close`), read to the end.
pub async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    parse_response(&raw)
}

/// A request that must be answered within [`REQUEST_TIMEOUT`].
pub async fn send(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    tokio::time::timeout(REQUEST_TIMEOUT, request(port, method, path, headers, body))
        .await
        .unwrap_or_else(|_| panic!("{method} {path} did not answer within {REQUEST_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("chunk size"))?;
            let size = std::str::from_utf8(&rest[..eol])
                .ok()
                .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
                .ok_or_else(|| bad("chunk size"))?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size).ok_or_else(|| bad("short chunk"))?);
            rest = rest.get(size + 2..).ok_or_else(|| bad("short chunk"))?;
        }
        body = out;
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}
