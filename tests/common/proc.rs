//! The real `reflexd run` binary as a child process, for tests that need
//! what only a process shows: its stderr (log volume), its exit status and
//! its systemd notifications (a test-owned `NOTIFY_SOCKET`). The child is
//! killed by its pid if a test fails early.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// A fresh scratch directory for one test.
pub fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("reflexd-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `[zenoh]` section: listen on loopback `port`, scouting off.
pub fn zenoh_header(port: u16) -> String {
    format!("[zenoh]\nlisten = [\"tcp/127.0.0.1:{port}\"]\nscouting = false\n")
}

/// A fake systemd's notify socket: every datagram, as text, in order.
pub struct NotifySocket {
    pub path: PathBuf,
    pub rx: UnboundedReceiver<String>,
}

impl NotifySocket {
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let (tx, rx) = unbounded_channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                if tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
                {
                    break;
                }
            }
        });
        NotifySocket { path, rx }
    }

    /// The next datagram, `None` after `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<String> {
        tokio::time::timeout(wait, self.rx.recv()).await.ok()?
    }
}

pub fn has_line(msg: &str, line: &str) -> bool {
    msg.lines().any(|l| l == line)
}

/// How to start the child.
#[derive(Default)]
pub struct Spawn<'a> {
    /// `NOTIFY_SOCKET` and `WATCHDOG_USEC` (µs).
    pub notify: Option<(&'a Path, u64)>,
    /// `REFLEXD_LOG`; `None` leaves it unset (the binary's default level).
    pub log: Option<&'a str>,
}

/// The daemon child process and the file its stderr goes to.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(dir: &Path, config: &str, how: Spawn) -> Proc {
        let cfg = dir.join("reflexd.toml");
        std::fs::write(&cfg, config).unwrap();
        let log = dir.join("stderr.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_reflexd"));
        cmd.args(["run", "-c"])
            .arg(&cfg)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("JOURNAL_STREAM")
            .env_remove("REFLEXD_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some((sock, usec)) = how.notify {
            cmd.env("NOTIFY_SOCKET", sock)
                .env("WATCHDOG_USEC", usec.to_string());
        }
        if let Some(filter) = how.log {
            cmd.env("REFLEXD_LOG", filter);
        }
        Proc {
            child: cmd.spawn().expect("spawn reflexd"),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sends a signal to our own child, by its pid.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status if the child has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits up to `wait` for the exit.
    pub async fn wait_exit(&mut self, wait: Duration) -> Option<ExitStatus> {
        let end = tokio::time::Instant::now() + wait;
        loop {
            if let Some(st) = self.exited() {
                return Some(st);
            }
            if tokio::time::Instant::now() >= end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
