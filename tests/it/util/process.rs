//! The cohort proxy as a process: [`TestDir`] (config, store and access
//! log in a temp dir), the standard test config builders, [`Cohort`] (the
//! real binary, started on that config, its stderr captured) and
//! [`cohort_cmd`] for one-shot subcommands.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Backend;

/// A test directory holding a config, the store and the access log.
pub(crate) struct TestDir {
    pub dir: tempfile::TempDir,
}

impl TestDir {
    pub(crate) fn new() -> TestDir {
        TestDir {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
    pub(crate) fn config_path(&self) -> PathBuf {
        self.path().join("cohort.yaml")
    }
    pub(crate) fn log_path(&self) -> PathBuf {
        self.path().join("logs/access.jsonl")
    }
    /// Writes the config atomically (as editors and config tools do).
    pub(crate) fn write_config(&self, yaml: &str) {
        let tmp = self.path().join(".cohort.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.config_path()).unwrap();
    }
    /// Every whole access-log line written so far, parsed. The writer
    /// appends in large writes, so a read can end inside a line: that
    /// last, unfinished line is left for the next read.
    pub(crate) fn access_log(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        whole
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l:?}: {e}")))
            .collect()
    }
}

/// The access log once `ready` says it holds what is awaited (the writer
/// flushes every 500 ms), or as it is after 10 s.
pub(crate) async fn log_when(
    dir: &TestDir,
    ready: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = dir.access_log();
        if ready(&log) || tokio::time::Instant::now() > deadline {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The standard test config: `listen` on port 0, store and log in the dir.
/// `experiments` is YAML for the `experiments:` list, indented by 2.
///
/// With `COHORT_TEST_DATA_PATH=hyper` in the environment every test runs
/// with `runtime.http1_fast_path: false`: `.ci/run` runs the suite both
/// ways, so each behaviour is proven on both data paths.
pub(crate) fn config(upstreams: &[(&str, &Backend)], experiments: &str) -> String {
    let urls: Vec<(&str, String)> = upstreams.iter().map(|(n, b)| (*n, b.url())).collect();
    config_urls(&urls, experiments)
}

/// [`config`] with upstreams given by URL.
pub(crate) fn config_urls(upstreams: &[(&str, String)], experiments: &str) -> String {
    config_on_path(upstreams, experiments, lean_path_wanted())
}

/// `yaml` (from [`config_urls`]) with every upstream speaking HTTP/2
/// (`protocol: h2`: h2c to an `http://` URL).
pub(crate) fn h2_upstreams(yaml: &str) -> String {
    yaml.replace(
        "connect_timeout: 1s }",
        "connect_timeout: 1s, protocol: h2 }",
    )
}

/// `yaml` (from [`config`]) with `runtime.worker_threads: n`, whatever
/// `COHORT_TEST_WORKERS` says.
pub(crate) fn with_workers(yaml: &str, n: usize) -> String {
    let at = yaml.find("worker_threads: ").unwrap() + "worker_threads: ".len();
    let end = at + yaml[at..].find(',').unwrap();
    format!("{}{n}{}", &yaml[..at], &yaml[end..])
}

/// Whether the tests run on the lean path (the default) or hyper's.
pub(crate) fn lean_path_wanted() -> bool {
    std::env::var("COHORT_TEST_DATA_PATH").as_deref() != Ok("hyper")
}

/// The proxy's `runtime.worker_threads` in tests: 2, or `COHORT_TEST_WORKERS`
/// (`.ci/run` also runs the suite with 1, which takes the current-thread
/// scheduler).
fn worker_threads() -> String {
    std::env::var("COHORT_TEST_WORKERS").unwrap_or_else(|_| "2".into())
}

/// [`worker_threads`] as a number.
pub(crate) fn test_workers() -> usize {
    worker_threads()
        .parse()
        .expect("COHORT_TEST_WORKERS is a number")
}

/// [`config`] on a given data path: `lean` sets `runtime.http1_fast_path`.
pub(crate) fn config_on_path(
    upstreams: &[(&str, String)],
    experiments: &str,
    lean: bool,
) -> String {
    let workers = worker_threads();
    let mut y = format!("listen: 127.0.0.1:0\nstore: {{ path: ./data }}\naccess_log: {{ path: ./logs/access.jsonl }}\nruntime: {{ worker_threads: {workers}, shutdown_timeout: 5s, http1_fast_path: {lean} }}\nupstreams:\n");
    for (name, url) in upstreams {
        y.push_str(&format!(
            "  {name}: {{ url: {url}, timeout: 2s, connect_timeout: 1s }}\n"
        ));
    }
    y.push_str("experiments:\n");
    y.push_str(experiments);
    y
}

/// The ranker experiment with the given weights for control and treatment.
pub(crate) fn ranker(control: &str, treatment: &str) -> String {
    format!(
        "  - name: ranker\n    routes: [/predict]\n    salt: ranker-salt\n    variants:\n      - {{ name: control, upstream: old, weight: {control} }}\n      - {{ name: treatment, upstream: new, weight: {treatment} }}\n"
    )
}

/// A running `cohort` process.
pub(crate) struct Cohort {
    pub addr: SocketAddr,
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Cohort {
    /// Writes `yaml` to `dir` and starts the proxy on it.
    pub(crate) fn start(dir: &TestDir, yaml: &str) -> Cohort {
        dir.write_config(yaml);
        Cohort::start_existing(dir)
            .unwrap_or_else(|(code, log)| panic!("cohort did not start ({code:?}):\n{log}"))
    }

    /// Starts on the config already in `dir`; on failure returns the exit
    /// status and stderr.
    pub(crate) fn start_existing(dir: &TestDir) -> Result<Cohort, (Option<ExitStatus>, String)> {
        let config = dir.config_path();
        Cohort::start_args(&["--config".as_ref(), config.as_os_str()], dir.path())
    }

    /// Runs `cohort ARGS` in `cwd` (`demo ...`, say) until it logs where it
    /// listens; on failure returns the exit status and stderr. Its stdout
    /// (the demo's access log) is kept too, see [`Cohort::stdout`].
    pub(crate) fn start_args(
        args: &[&std::ffi::OsStr],
        cwd: &Path,
    ) -> Result<Cohort, (Option<ExitStatus>, String)> {
        Cohort::start_via(env!("CARGO_BIN_EXE_cohort").as_ref(), args, cwd)
    }

    /// Starts on the config in `dir` from a shell that first runs
    /// `prelude` (`ulimit -f 32`, say), then execs cohort.
    pub(crate) fn start_in_shell(dir: &TestDir, prelude: &str) -> Cohort {
        let script = format!("{prelude}; exec \"$0\" --config \"$1\"");
        let config = dir.config_path();
        let args: [&std::ffi::OsStr; 4] = [
            "-c".as_ref(),
            script.as_ref(),
            env!("CARGO_BIN_EXE_cohort").as_ref(),
            config.as_os_str(),
        ];
        Cohort::start_via("bash".as_ref(), &args, dir.path())
            .unwrap_or_else(|(code, log)| panic!("cohort did not start ({code:?}):\n{log}"))
    }

    /// [`Cohort::start_args`] through another program that execs cohort
    /// (`sh -c 'ulimit -n 64 && exec "$0" "$@"' cohort ARGS`, say), so the
    /// process is still cohort's.
    pub(crate) fn start_via(
        program: &std::ffi::OsStr,
        args: &[&std::ffi::OsStr],
        cwd: &Path,
    ) -> Result<Cohort, (Option<ExitStatus>, String)> {
        let mut child = Command::new(program)
            .args(args)
            .current_dir(cwd)
            .env("COHORT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cohort");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let listening = ["listening on http://", "listening on https://"]
                    .iter()
                    .find_map(|l| line.split(l).nth(1));
                if let Some(addr) = listening {
                    let addr: SocketAddr = addr.split_whitespace().next().unwrap().parse().unwrap();
                    let _ = tx.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let out_pipe = child.stdout.take().unwrap();
        let out_lines = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out_pipe).lines().map_while(Result::ok) {
                out_lines.lock().unwrap().push(line);
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => Ok(Cohort {
                addr,
                child,
                stderr,
                stdout,
            }),
            Err(_) => {
                let status = child.try_wait().ok().flatten().or_else(|| {
                    let _ = child.kill();
                    child.wait().ok()
                });
                std::thread::sleep(Duration::from_millis(100));
                let log = stderr.lock().unwrap().join("\n");
                Err((status, log))
            }
        }
    }

    /// Every stdout line so far (the access log when it goes to stdout).
    pub(crate) fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub(crate) fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits until a stderr line contains `needle` (after `skip` lines).
    pub(crate) fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "no log line containing {needle:?} within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (up to 5 s) until `n` reloads have been applied.
    pub(crate) fn wait_reloads(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.count_log("config reloaded") < n {
            assert!(
                Instant::now() < deadline,
                "reload {n} not applied:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Number of stderr lines containing `needle`.
    pub(crate) fn count_log(&self, needle: &str) -> usize {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Sends a signal by name (`TERM`, `HUP`, `USR1`) with kill(1).
    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// SIGTERM and wait for the exit.
    pub(crate) fn terminate(mut self) -> ExitStatus {
        self.signal("TERM");
        wait_timeout(&mut self.child, Duration::from_secs(20))
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, once the process has exited.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// SIGKILL: no chance to flush or sync anything.
    pub(crate) fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Cohort {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_timeout(child: &mut Child, t: Duration) -> ExitStatus {
    let deadline = Instant::now() + t;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("cohort did not exit within {t:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Cohort {
    /// The admin API's address, from its start-up log line.
    pub(crate) fn admin_addr(&self) -> SocketAddr {
        let line = self.wait_for_log("admin API on http://", Duration::from_secs(5));
        let addr = line.split("admin API on http://").nth(1).unwrap();
        addr.split_whitespace().next().unwrap().parse().unwrap()
    }
}

/// Runs the `cohort` binary with `args`; returns (exit code, stdout, stderr).
pub(crate) fn cohort_cmd(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(args)
        .output()
        .expect("run cohort");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(crate) const ADMIN_TOKEN: &str = "t0ken-for-tests-only";

/// An `admin:` block on port 0 with a token file written into `dir`.
pub(crate) fn with_admin(dir: &TestDir, yaml: &str) -> String {
    std::fs::write(dir.path().join("admin.token"), format!("{ADMIN_TOKEN}\n")).unwrap();
    yaml.replace(
        "experiments:\n",
        "admin: { listen: 127.0.0.1:0, token_file: admin.token }\nexperiments:\n",
    )
}
