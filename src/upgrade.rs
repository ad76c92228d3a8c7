//! Zero-downtime binary upgrade by listener hand-over.
//!
//! On SIGUSR2 the running (old) process starts the binary installed at its
//! own path, with its own arguments, and passes it the listening sockets
//! (the proxy's and the admin API's) over a Unix socket (`SCM_RIGHTS`;
//! the new process finds it by [`SOCKET_ENV`], and only the pid the old
//! one started may take them, checked with `SO_PEERCRED`). Both processes
//! then hold the *same* sockets: a connection waiting in the kernel's
//! backlog is never lost, whichever process accepts it.
//!
//! The store passes without a window where a unit could be assigned
//! twice: the new process says it is ready (its config loaded, the
//! sockets adopted) *before* it opens the store; the old one then stops
//! accepting, drains its requests in flight (as on SIGTERM), syncs the
//! store and releases the embedded journal's lock (its WebSocket tunnels,
//! which never assign, may still run until they close); the new
//! one waits for that lock ([`crate::run`]) and only then accepts. So at
//! no moment do two processes assign, and new connections wait in the
//! backlog for the length of the old one's drain. A new process that
//! fails before it is ready (a bad binary, a config that does not
//! validate) leaves the old one serving, and the failure is logged.
//!
//! Nothing here needs `unsafe`: the sockets arrive as `OwnedFd`s
//! (rustix's `recvmsg`), which std turns into listeners.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::signal::unix::Signal;

/// The environment variable naming the old process's hand-over socket.
pub const SOCKET_ENV: &str = "COHORT_UPGRADE_SOCKET";

/// How long the old process waits for the new one to be ready.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// The byte the new process sends when it is ready to take over.
const READY: u8 = b'R';

/// Why a hand-over failed (the old process keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// A socket or process call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The new process exited or went quiet before it was ready.
    #[error("the new process {0}")]
    NotReady(String),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> UpgradeError {
    move |source| UpgradeError::Io { what, source }
}

/// The listening sockets a process serves on, kept (as duplicates) so a
/// SIGUSR2 can hand them on.
pub(crate) struct Listeners {
    pub proxy: OwnedFd,
    pub admin: Option<OwnedFd>,
}

/// The old side: waits for SIGUSR2 and hands over; returns once a new
/// process is ready to take over (the caller then stops accepting and
/// drains). A failed attempt is logged and the next SIGUSR2 tries again.
pub(crate) async fn on_sigusr2(mut usr2: Signal, listeners: Listeners) {
    while usr2.recv().await.is_some() {
        tracing::info!("SIGUSR2: starting the new binary to hand the listeners to");
        let fds = (|| {
            Ok::<_, std::io::Error>((
                listeners.proxy.try_clone()?,
                listeners
                    .admin
                    .as_ref()
                    .map(OwnedFd::try_clone)
                    .transpose()?,
            ))
        })();
        let result = match fds {
            Ok((proxy, admin)) => tokio::task::spawn_blocking(move || hand_over(proxy, admin))
                .await
                .unwrap_or_else(|e| {
                    Err(UpgradeError::NotReady(format!(
                        "hand-over task failed: {e}"
                    )))
                }),
            Err(e) => Err(io("duplicating the listeners")(e)),
        };
        match result {
            Ok(pid) => {
                tracing::info!(new_pid = pid, "binary upgrade: the new process is ready; this one stops accepting, drains and exits");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "binary upgrade failed; this process keeps serving")
            }
        }
    }
    std::future::pending::<()>().await;
}

/// Removes the hand-over socket's path when the hand-over ends.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Starts the new process, passes it the sockets and waits until it says
/// it is ready; returns its pid.
fn hand_over(proxy: OwnedFd, admin: Option<OwnedFd>) -> Result<u32, UpgradeError> {
    let path = std::env::temp_dir().join(format!(
        "cohort-upgrade-{}-{}.sock",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    ));
    let server = UnixListener::bind(&path).map_err(io("binding the hand-over socket"))?;
    let _cleanup = Cleanup(path.clone());
    server
        .set_nonblocking(true)
        .map_err(io("setting up the hand-over socket"))?;
    let exe = own_binary().map_err(io("finding this process's binary"))?;
    let mut child = Command::new(&exe)
        .args(std::env::args_os().skip(1))
        .env(SOCKET_ENV, &path)
        .spawn()
        .map_err(io("starting the new binary"))?;
    let pid = child.id();
    let fail = |child: &mut std::process::Child, why: String| {
        let _ = child.kill();
        let _ = child.wait();
        UpgradeError::NotReady(why)
    };
    let deadline = Instant::now() + READY_WITHIN;
    let mut stream = loop {
        match server.accept() {
            // Only the process just started may take the sockets.
            Ok((s, _)) if peer_pid(&s) == Some(pid) => break s,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(fail(&mut child, format!("hand-over socket failed: {e}"))),
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(UpgradeError::NotReady(format!(
                "exited before taking over ({status})"
            )));
        }
        if Instant::now() > deadline {
            return Err(fail(
                &mut child,
                format!("was not ready within {READY_WITHIN:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let sent = (|| {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))?;
        send_fds(&stream, &proxy, admin.as_ref())?;
        let mut ready = [0u8];
        stream.read_exact(&mut ready)?;
        Ok::<_, std::io::Error>(ready[0] == READY)
    })();
    match sent {
        Ok(true) => {
            // Reaped by init once this process exits.
            drop(child);
            Ok(pid)
        }
        Ok(false) => Err(fail(
            &mut child,
            "answered something other than ready".into(),
        )),
        Err(e) => Err(fail(&mut child, format!("did not get ready: {e}"))),
    }
}

/// The binary this process was started from, at its path: after an
/// upgrade installed a new file there, `/proc/self/exe` names the old,
/// deleted one (` (deleted)`), and the new one is wanted.
fn own_binary() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let s = exe.to_string_lossy();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(p) => PathBuf::from(p),
        None => exe,
    })
}

fn peer_pid(s: &UnixStream) -> Option<u32> {
    let cred = rustix::net::sockopt::socket_peercred(s).ok()?;
    u32::try_from(cred.pid.as_raw_nonzero().get()).ok()
}

/// Sends the sockets: one byte (how many) with them attached.
fn send_fds(s: &UnixStream, proxy: &OwnedFd, admin: Option<&OwnedFd>) -> std::io::Result<()> {
    let mut fds = vec![proxy.as_fd()];
    fds.extend(admin.map(AsFd::as_fd));
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    let count = [fds.len() as u8];
    rustix::net::sendmsg(s, &[IoSlice::new(&count)], &mut control, SendFlags::empty())?;
    Ok(())
}

/// The new side: the sockets handed over by the old process, and the line
/// back to it.
pub(crate) struct Inherited {
    pub proxy: std::net::TcpListener,
    pub admin: Option<std::net::TcpListener>,
    pub ready: Ready,
}

/// The line back to the old process.
pub(crate) struct Ready(UnixStream);

impl Inherited {
    /// When this process was started by a hand-over ([`SOCKET_ENV`]
    /// set), takes the old process's sockets.
    pub(crate) fn take() -> Result<Option<Inherited>, UpgradeError> {
        let Some(path) = std::env::var_os(SOCKET_ENV) else {
            return Ok(None);
        };
        let line = UnixStream::connect(Path::new(&path)).map_err(io("reaching the old process"))?;
        line.set_read_timeout(Some(READY_WITHIN))
            .map_err(io("reaching the old process"))?;
        let mut count = [0u8];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        rustix::net::recvmsg(
            &line,
            &mut [IoSliceMut::new(&mut count)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| io("receiving the listeners")(e.into()))?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = msg {
                fds.extend(rights);
            }
        }
        if fds.is_empty() || fds.len() != usize::from(count[0]) {
            return Err(UpgradeError::NotReady(format!(
                "handed {} sockets where {} were announced",
                fds.len(),
                count[0]
            )));
        }
        let mut fds = fds.into_iter().map(std::net::TcpListener::from);
        Ok(Some(Inherited {
            proxy: fds.next().expect("at least one"),
            admin: fds.next(),
            ready: Ready(line),
        }))
    }
}

impl Ready {
    /// Tells the old process to stop accepting and drain: this one is
    /// about to wait for the store and serve.
    pub(crate) fn send(mut self) -> Result<(), UpgradeError> {
        self.0
            .write_all(&[READY])
            .map_err(io("telling the old process"))
    }
}
