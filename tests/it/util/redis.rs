//! Real Redis for the shared-store tests: [`RedisServer`] (one
//! `redis-server` on a free loopback port, data in its own temp dir, killed
//! on drop), [`RedisCluster`] (three masters joined by
//! `redis-cli --cluster create`), [`with_redis`] to turn a standard
//! test config into one on that store, and [`TestStore`]: the store a
//! test body runs on, picked by the test that calls it (the core suite
//! runs the same bodies on the embedded store, Redis and a cluster).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `redis-server` is installed (`.ci/run` installs it).
pub(crate) fn redis_available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True (after saying so) when redis-server is missing and the test
/// should return: skipped locally, but under CI (`CI` set, as .ci/run runs
/// there) a missing server fails the test instead, so a lost install step
/// cannot turn these tests into silent passes.
pub(crate) fn redis_missing() -> bool {
    if redis_available() {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "redis-server is not installed: .ci/run must install it"
    );
    eprintln!("redis-server not installed: skipped (.ci/run installs it)");
    true
}

/// A free loopback port whose cluster-bus twin (port + 10000) is free too.
pub(crate) fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port > 55_000 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// One `redis-server` process.
pub(crate) struct RedisServer {
    pub(crate) port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
    /// The ACL user `redis-cli` logs in as, when the default user is off.
    admin: Option<(String, String)>,
}

/// The ACL user [`RedisServer::start_with_acl`] adds for the test's own
/// `redis-cli` calls.
const ACL_ADMIN: (&str, &str) = ("test-admin", "test-admin-pw");

impl RedisServer {
    /// A standalone server with AOF on (`appendfsync always`).
    pub(crate) fn start() -> RedisServer {
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
    }

    /// A server with extra `redis-server` arguments.
    pub(crate) fn start_with(extra: &[&str]) -> RedisServer {
        let mut s = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            admin: None,
        };
        s.spawn();
        s
    }

    /// A standalone server whose users are `users` (ACL file lines), with
    /// the `default` user off. The test's own `redis-cli` calls log in as
    /// an extra all-powerful user.
    pub(crate) fn start_with_acl(users: &str) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let acl = dir.path().join("users.acl");
        let (who, pw) = ACL_ADMIN;
        std::fs::write(
            &acl,
            format!("user default off\nuser {who} on >{pw} ~* &* +@all\n{users}"),
        )
        .unwrap();
        let mut s = RedisServer {
            port: free_port(),
            dir,
            child: None,
            extra: vec!["--aclfile".into(), acl.to_str().unwrap().into()],
            admin: Some((who.into(), pw.into())),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:PORT/0`
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Runs `redis-cli` against this server (with its `--requirepass`,
    /// if any); returns its stdout.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let pass = self
            .extra
            .iter()
            .position(|a| a == "--requirepass")
            .map(|i| self.extra[i + 1].as_str());
        match &self.admin {
            Some((user, pw)) => {
                let mut with_user = vec!["--user", user.as_str()];
                with_user.extend_from_slice(args);
                cli(self.port, Some(pw), &with_user)
            }
            None => cli(self.port, pass, args),
        }
    }

    /// SIGKILL (no save on shutdown: only what AOF had is kept).
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and data directory.
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn cli(port: u16, password: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    if let Some(p) = password {
        cmd.env("REDISCLI_AUTH", p);
    }
    let out = cmd
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Three masters joined into one Redis Cluster (no replicas).
pub(crate) struct RedisCluster {
    pub(crate) nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub(crate) fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    "--appendonly",
                    "yes",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "cluster did not become ok");
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisCluster { nodes }
    }

    /// The seed URLs.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| n.url().replace("/0", ""))
            .collect()
    }

    /// Keys held by each node matching `pattern`.
    pub(crate) fn keys_per_node(&self, pattern: &str) -> Vec<usize> {
        self.nodes
            .iter()
            .map(|n| n.cli(&["--scan", "--pattern", pattern]).lines().count())
            .collect()
    }
}

/// The standard test config `yaml` with its `store:` line replaced by a
/// Redis store block (`store` is the YAML flow mapping's inside).
pub(crate) fn with_store(yaml: &str, store: &str) -> String {
    yaml.replace("store: { path: ./data }", &format!("store: {{ {store} }}"))
}

/// [`with_store`] on one Redis server. The timeout is generous: on a
/// loaded 2-core CI machine a 50 ms bound would send tests that are not
/// about degraded mode into it (the degraded tests set their own).
pub(crate) fn with_redis(yaml: &str, url: &str, prefix: &str) -> String {
    with_store(
        yaml,
        &format!("kind: redis, url: '{url}', key_prefix: {prefix}, timeout: 2s"),
    )
}

/// Where a test's proxies keep their assignments. A test body takes one
/// and builds its configs with [`TestStore::on`]; the test that calls it
/// picks the store, so the same body runs on each.
#[derive(Clone, Debug)]
pub(crate) enum TestStore {
    /// The standard test config's `store: { path: ./data }`.
    Embedded,
    /// The same with `durability: write` (answered once written, synced
    /// every second).
    EmbeddedWrite,
    /// A Redis store block (the inside of `store: { ... }`) and the
    /// prefix of its keys.
    Redis { block: String, prefix: String },
}

impl TestStore {
    /// One standalone Redis server.
    pub(crate) fn redis(server: &RedisServer) -> TestStore {
        TestStore::Redis {
            block: format!("kind: redis, url: '{}', timeout: 2s", server.url()),
            prefix: "core".into(),
        }
    }

    /// A Redis Cluster (its seed nodes).
    pub(crate) fn cluster(cluster: &RedisCluster) -> TestStore {
        let urls: Vec<String> = cluster.urls().iter().map(|u| format!("'{u}'")).collect();
        TestStore::Redis {
            block: format!("kind: redis, urls: [{}], timeout: 2s", urls.join(", ")),
            prefix: "core".into(),
        }
    }

    /// The standard test config `yaml` on this store.
    pub(crate) fn on(&self, yaml: &str) -> String {
        match self {
            TestStore::Embedded => yaml.to_string(),
            TestStore::EmbeddedWrite => with_store(yaml, "path: ./data, durability: write"),
            TestStore::Redis { block, prefix } => {
                with_store(yaml, &format!("{block}, key_prefix: {prefix}"))
            }
        }
    }

    /// This store with its keys under `prefix` (the embedded store's data
    /// is in each test's own directory already), so bodies run one after
    /// another on one server never meet.
    pub(crate) fn prefixed(&self, prefix: &str) -> TestStore {
        match self {
            TestStore::Embedded => TestStore::Embedded,
            TestStore::EmbeddedWrite => TestStore::EmbeddedWrite,
            TestStore::Redis { block, .. } => TestStore::Redis {
                block: block.clone(),
                prefix: prefix.into(),
            },
        }
    }
}
