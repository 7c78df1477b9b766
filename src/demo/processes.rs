//! The demo's child processes: started with their output in log files, stopped together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

pub struct Processes {
    logs: PathBuf,
    children: Vec<(String, Child)>,
}

impl Processes {
    pub fn new(logs: PathBuf) -> Self {
        Processes { logs, children: Vec::new() }
    }

    pub fn log_of(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// Starts `cmd` as `name`, stdout and stderr into `<logs>/<name>.log`, and says so with
    /// its pid and the addresses it listens on (`listens`).
    pub fn spawn(&mut self, name: &str, mut cmd: Command, listens: &[SocketAddr]) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.log_of(name))?;
        // A process group of its own: a Ctrl-C at the terminal reaches the demo alone, which
        // then stops its children in order (agents before the control plane).
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).process_group(0).kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let listens: Vec<String> = listens.iter().map(SocketAddr::to_string).collect();
        println!("  started {name} (pid {}; listens on {})", child.id().unwrap_or(0), listens.join(", "));
        self.children.push((name.to_owned(), child));
        Ok(())
    }

    /// Fails, naming the process and its log, when one has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                let log = self.logs.join(format!("{name}.log"));
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!("{name} exited ({status}); the end of {}:\n  {}", log.display(), tail.join("\n  "));
            }
        }
        Ok(())
    }

    /// The one-time login link `trellis serve` printed (its output goes to `<name>.log`).
    pub fn login_link(&self, name: &str) -> Option<String> {
        let log = std::fs::read_to_string(self.log_of(name)).ok()?;
        log.lines()
            .map(str::trim)
            .find(|l| l.starts_with("http") && l.contains("/auth/local"))
            .map(str::to_owned)
    }

    /// SIGTERM to every child, newest first (agents before the control plane), then SIGKILL to
    /// any still running after `grace`. Returns how many were running.
    pub async fn stop_all(&mut self, grace: Duration) -> usize {
        let mut running = 0;
        for (_, child) in self.children.iter_mut().rev() {
            if let (Ok(None), Some(pid)) = (child.try_wait(), child.id()) {
                running += 1;
                let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
            }
        }
        for (name, child) in self.children.iter_mut().rev() {
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                eprintln!("{name} did not stop within {grace:?}; killing it");
                let _ = child.kill().await;
            }
        }
        self.children.clear();
        running
    }
}
