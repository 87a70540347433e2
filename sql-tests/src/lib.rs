//! Test machinery for Eddy's end-to-end tests: start the real `eddy` binary on a free port
//! with its own data directory, connect to it over pgwire, run sqllogictest files against it.
//!
//! Tests find the binary next to their own executable (`target/<profile>/eddy`), which
//! `cargo test --workspace` builds, or at `$EDDY_BIN`.

pub mod kafka;
pub mod slt;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio_postgres::{Client, NoTls};

/// The `eddy` binary under test.
pub fn eddy_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("EDDY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    for _ in 0..3 {
        let candidate = dir.join("eddy");
        if candidate.is_file() {
            return Ok(candidate);
        }
        match dir.parent() {
            Some(p) => dir = p.to_path_buf(),
            None => break,
        }
    }
    bail!("cannot find the eddy binary next to {}; run `cargo build -p eddy-server` or set EDDY_BIN", exe.display())
}

/// A free TCP port on loopback.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A running `eddy` process with its own data directory.
pub struct TestServer {
    child: Option<Child>,
    pub port: u16,
    data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    extra_args: Vec<String>,
}

impl TestServer {
    /// Starts a server on a fresh data directory.
    ///
    /// # Errors
    /// When the binary is missing or the server does not accept connections in time.
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// Starts a server with extra command-line arguments.
    ///
    /// # Errors
    /// When the binary is missing or the server does not come up.
    pub fn start_with(args: &[&str]) -> Result<Self> {
        let temp = tempfile::tempdir()?;
        let data_dir = temp.path().join("data");
        let mut server = Self {
            child: None,
            port: 0,
            data_dir,
            _temp: Some(temp),
            extra_args: args.iter().map(|s| s.to_string()).collect(),
        };
        server.launch()?;
        Ok(server)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn launch(&mut self) -> Result<()> {
        let port = free_port()?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.data_dir.with_extension("log"))?;
        let child = Command::new(eddy_binary()?)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--log-level")
            .arg(std::env::var("EDDY_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting eddy")?;
        self.child = Some(child);
        self.port = port;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("eddy exited during startup with {status}; log: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("eddy did not accept connections within 60 s; log: {}", self.log())
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    /// A libpq-style connection string.
    pub fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=root dbname=dev", self.port)
    }

    /// Connects with tokio-postgres.
    ///
    /// # Errors
    /// When the connection fails.
    pub async fn connect(&self) -> Result<Client> {
        let (client, connection) = tokio_postgres::connect(&self.url(), NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Stops the server gracefully (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            #[cfg(unix)]
            {
                let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
                let deadline = Instant::now() + Duration::from_secs(20);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server without warning (`kill -9`).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data directory.
    ///
    /// # Errors
    /// When it does not come back up.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.launch()
    }

    /// Starts the server again on the same data directory with extra arguments (for this and
    /// later restarts).
    ///
    /// # Errors
    /// When it does not come back up.
    pub fn restart_with(&mut self, args: &[&str]) -> Result<()> {
        self.stop();
        self.extra_args.extend(args.iter().map(|s| s.to_string()));
        self.launch()
    }

    /// The process id, for memory measurements.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Renders a result row value as text the way the tests compare them.
pub fn cell_text(v: Option<&str>) -> String {
    v.map(str::to_string).unwrap_or_else(|| "NULL".to_string())
}

/// Runs `sql` and returns its rows as text (`NULL` for nulls), in the order the server sent them.
pub async fn rows(client: &Client, sql: &str) -> Result<Vec<Vec<String>>> {
    let mut out = Vec::new();
    for m in client.simple_query(sql).await.with_context(|| sql.to_string())? {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            out.push((0..r.len()).map(|i| cell_text(r.get(i))).collect());
        }
    }
    Ok(out)
}

/// Waits until `sql` returns `want`, or fails with what it returned last.
pub async fn wait_for(client: &Client, sql: &str, want: &[Vec<String>], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = rows(client, sql).await?;
        if got == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{sql}: expected {want:?}, got {got:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
