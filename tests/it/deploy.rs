//! What `deploy/` ships, checked: hot reload through a Kubernetes
//! ConfigMap's atomic `..data` symlink swap (the exact layout and steps of
//! the kubelet's atomic writer), the Kubernetes manifests, the Dockerfile,
//! the systemd unit and the Vector config.
//!
//! Tools that are not required (`systemd-analyze`, `vector`, `docker`) are
//! used when installed and skipped otherwise; what needs no tool (YAML and
//! Dockerfile structure, `cohort check` on the shipped configs) always runs.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

/// A ConfigMap volume as the kubelet lays it out: the data in a
/// timestamped folder, `..data` a symlink to it, and each key a symlink
/// through `..data`.
struct ConfigMapVolume {
    dir: PathBuf,
    /// The timestamped folder `..data` points at now.
    current: String,
    swaps: u32,
}

impl ConfigMapVolume {
    fn create(dir: &Path, yaml: &str) -> ConfigMapVolume {
        std::fs::create_dir_all(dir).unwrap();
        let mut v = ConfigMapVolume {
            dir: dir.to_path_buf(),
            current: String::new(),
            swaps: 0,
        };
        v.current = v.write_timestamped(yaml);
        symlink(&v.current, dir.join("..data")).unwrap();
        symlink("..data/cohort.yaml", dir.join("cohort.yaml")).unwrap();
        v
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("cohort.yaml")
    }

    fn write_timestamped(&self, yaml: &str) -> String {
        let name = format!("..2026_12_04_18_{:02}_00.{}", self.swaps, 1000 + self.swaps);
        std::fs::create_dir(self.dir.join(&name)).unwrap();
        std::fs::write(self.dir.join(&name).join("cohort.yaml"), yaml).unwrap();
        name
    }

    /// The kubelet's update: a new timestamped folder, `..data_tmp`
    /// pointing at it, renamed over `..data` (the one atomic step), then
    /// the old folder deleted.
    fn update(&mut self, yaml: &str) {
        self.swaps += 1;
        let new = self.write_timestamped(yaml);
        let tmp = self.dir.join("..data_tmp");
        symlink(&new, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        std::fs::remove_dir_all(self.dir.join(&self.current)).unwrap();
        self.current = new;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_hot_reloads_twice() {
    let (old, new) = (Backend::spawn("old").await, Backend::spawn("new").await);
    let dir = TestDir::new();
    // The ConfigMap volume is read-only in a pod: the store and the log
    // live elsewhere, by absolute path.
    let state = dir.path().join("state");
    let yaml = |control: &str, treatment: &str| {
        config(&[("old", &old), ("new", &new)], &ranker(control, treatment))
            .replace(
                "path: ./data",
                &format!("path: {}", state.join("data").display()),
            )
            .replace(
                "path: ./logs/access.jsonl",
                &format!("path: {}", state.join("access.jsonl").display()),
            )
    };
    let mut volume = ConfigMapVolume::create(&dir.path().join("config"), &yaml("100", "0"));
    let config = volume.config_path();
    let cohort = Cohort::start_args(&["--config".as_ref(), config.as_os_str()], dir.path())
        .unwrap_or_else(|(code, log)| panic!("cohort did not start ({code:?}):\n{log}"));
    let client = TestClient::new();
    let first = client.post(cohort.addr, "/predict", Some("u-before")).await;
    assert_eq!((first.variant(), first.epoch()), ("control", 1));

    volume.update(&yaml("0", "100"));
    cohort.wait_reloads(1);
    let r = client
        .post(cohort.addr, "/predict", Some("u-after-1"))
        .await;
    assert_eq!(
        (r.variant(), r.epoch()),
        ("treatment", 2),
        "the new weights serve"
    );
    let r = client.post(cohort.addr, "/predict", Some("u-before")).await;
    assert_eq!(
        (r.variant(), r.epoch()),
        ("control", 1),
        "assigned units stay"
    );

    volume.update(&yaml("50", "50"));
    cohort.wait_reloads(2);
    let r = client
        .post(cohort.addr, "/predict", Some("u-after-2"))
        .await;
    assert_eq!(r.epoch(), 3, "the second swap applied too");
    let want = if bucket("ranker-salt", "u-after-2") < 5000 {
        "control"
    } else {
        "treatment"
    };
    assert_eq!(r.variant(), want);
    // Only the newest timestamped folder is left, as in a pod.
    let folders: Vec<_> = std::fs::read_dir(&volume.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("..2026"))
        .collect();
    assert_eq!(folders, vec![volume.current.clone()]);
    assert_eq!(
        cohort.count_log("config reloaded"),
        2,
        "{}",
        cohort.stderr()
    );
    assert!(cohort.terminate().success());
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Whether `tool` runs (`tool --version`); these tools are optional.
fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("{tool} not installed: its check is skipped");
    }
    ok
}

/// Every document of a multi-document YAML file.
fn documents(path: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(&read(path))
        .map(|d| serde_yaml::Value::deserialize(d).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

fn kind<'a>(docs: &'a [serde_yaml::Value], kind: &str) -> Vec<&'a serde_yaml::Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// `cohort check` on a config taken from a manifest, its secret files
/// (under /etc/cohort/secrets/) written into a temp folder.
fn cohort_check(yaml: &str) {
    let dir = tempfile::tempdir().unwrap();
    for f in ["admin.token", "redis.password"] {
        std::fs::write(dir.path().join(f), "s3cret\n").unwrap();
    }
    let yaml = yaml.replace(
        "/etc/cohort/secrets/",
        &format!("{}/", dir.path().display()),
    );
    let file = dir.path().join("cohort.yaml");
    std::fs::write(&file, yaml).unwrap();
    let (code, out, err) = cohort_cmd(&["check", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn the_kubernetes_manifests_mount_the_configmap_as_a_folder_and_their_configs_check() {
    for file in [
        "deploy/kubernetes/cohort-sidecar.yaml",
        "deploy/kubernetes/cohort-replicas.yaml",
    ] {
        let docs = documents(file);
        let maps = kind(&docs, "ConfigMap");
        let config_maps: Vec<String> = maps
            .iter()
            .filter(|m| m["data"]["cohort.yaml"].is_string())
            .map(|m| m["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            config_maps.len(),
            1,
            "{file}: one ConfigMap holds cohort.yaml"
        );
        for m in &maps {
            if let Some(yaml) = m["data"]["cohort.yaml"].as_str() {
                cohort_check(yaml);
            }
        }
        let deployment = kind(&docs, "Deployment")[0];
        let spec = &deployment["spec"]["template"]["spec"];
        let volume = spec["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["configMap"]["name"].as_str() == Some(&config_maps[0]))
            .unwrap_or_else(|| panic!("{file}: the ConfigMap is a volume"));
        let cohort = spec["containers"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "cohort")
            .unwrap_or_else(|| panic!("{file}: a container named cohort"));
        let mount = cohort["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| m["name"] == volume["name"])
            .unwrap();
        assert!(
            mount.get("subPath").is_none(),
            "{file}: a subPath mount never sees a ConfigMap update"
        );
        let args: Vec<&str> = cohort["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let folder = mount["mountPath"].as_str().unwrap();
        assert_eq!(
            args,
            ["--config", &format!("{folder}/cohort.yaml")],
            "{file}: cohort reads the file inside the mounted folder"
        );
    }
    // The sidecar: the model containers are cohort's upstreams, on localhost.
    let docs = documents("deploy/kubernetes/cohort-sidecar.yaml");
    let spec = &kind(&docs, "Deployment")[0]["spec"]["template"]["spec"];
    let yaml = kind(&docs, "ConfigMap")[0]["data"]["cohort.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    for c in spec["containers"].as_sequence().unwrap() {
        if let Some(port) = c["ports"][0]["containerPort"].as_u64() {
            if c["name"] != "cohort" {
                assert!(
                    yaml.contains(&format!("http://127.0.0.1:{port}")),
                    "container {:?} is an upstream on localhost",
                    c["name"]
                );
            }
        }
    }
}

#[test]
fn the_vector_config_ships_the_rotated_log_into_the_warehouse_table() {
    let vector: serde_yaml::Value = serde_yaml::from_str(&read("deploy/vector.yaml")).unwrap();
    // The sidecar's copy is the same pipeline.
    let docs = documents("deploy/kubernetes/cohort-sidecar.yaml");
    let embedded = kind(&docs, "ConfigMap")
        .into_iter()
        .find_map(|m| m["data"]["vector.yaml"].as_str())
        .expect("the sidecar ships a Vector config");
    let embedded: serde_yaml::Value = serde_yaml::from_str(embedded).unwrap();
    assert_eq!(
        embedded, vector,
        "deploy/vector.yaml and the sidecar's differ"
    );

    let source = &vector["sources"]["cohort_access_log"];
    assert_eq!(source["type"], "file");
    let include: Vec<&str> = source["include"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // The live file and the closed ones (`<path>.<stamp>Z`), never the
    // gzip copies of lines already read.
    assert_eq!(
        include,
        [
            "/var/log/cohort/access.jsonl",
            "/var/log/cohort/access.jsonl.*Z"
        ]
    );
    let exclude = format!("{:?}", source["exclude"]);
    assert!(exclude.contains("*.gz") && exclude.contains("*.partial"));
    let sink = &vector["sinks"]["clickhouse"];
    assert_eq!(sink["type"], "clickhouse");
    let table = sink["table"].as_str().unwrap();
    assert!(
        read("deploy/warehouse/clickhouse.sql")
            .contains(&format!("CREATE TABLE IF NOT EXISTS {table} (")),
        "the sink writes the DDL's table"
    );
    assert_eq!(sink["acknowledgements"]["enabled"], true);

    // The log Vector ships in the sidecar: rotated but not gzipped (cohort
    // would gzip and remove a closed file at once, and a lagging or
    // restarted Vector, which skips the .gz copies, would lose its unread
    // rest), with the closed files expired by age beside it.
    let cohort: serde_yaml::Value = serde_yaml::from_str(
        kind(&docs, "ConfigMap")
            .into_iter()
            .find_map(|m| m["data"]["cohort.yaml"].as_str())
            .unwrap(),
    )
    .unwrap();
    let log = &cohort["access_log"];
    assert!(log["rotate"].is_mapping(), "the sidecar rotates its log");
    assert!(
        log.get("compress").is_none(),
        "with Vector, closed files stay uncompressed until Vector has read them"
    );
    let spec = &kind(&docs, "Deployment")[0]["spec"]["template"]["spec"];
    let expiry = spec["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|c| c["command"].as_sequence())
        .map(|cmd| format!("{cmd:?}"))
        .find(|cmd| cmd.contains("find /var/log/cohort -name 'access.jsonl.*Z'"))
        .expect("a container expires the closed files");
    assert!(
        expiry.contains("-mmin +") && expiry.contains("-delete"),
        "{expiry}"
    );
    if have("vector") {
        let out = Command::new("vector")
            .args(["validate", "--no-environment"])
            .arg(repo("deploy/vector.yaml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// The Dockerfile's instructions: (keyword, arguments), continuation lines
/// joined, comments and parser directives dropped.
fn dockerfile(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if t.starts_with('#') {
            continue;
        }
        current.push_str(t.trim_end_matches('\\'));
        current.push(' ');
        if !t.ends_with('\\') {
            let (k, rest) = current
                .trim()
                .split_once(' ')
                .unwrap_or((current.trim(), ""));
            out.push((k.to_uppercase(), rest.trim().to_string()));
            current.clear();
        }
    }
    assert!(current.is_empty(), "a continuation runs off the end");
    out
}

#[test]
fn the_dockerfile_is_a_multi_stage_build_with_a_small_non_root_runtime() {
    const KEYWORDS: &[&str] = &[
        "FROM",
        "RUN",
        "CMD",
        "LABEL",
        "EXPOSE",
        "ENV",
        "ADD",
        "COPY",
        "ENTRYPOINT",
        "VOLUME",
        "USER",
        "WORKDIR",
        "ARG",
        "ONBUILD",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "SHELL",
    ];
    let text = read("deploy/Dockerfile");
    let steps = dockerfile(&text);
    for (k, args) in &steps {
        assert!(
            KEYWORDS.contains(&k.as_str()),
            "unknown instruction {k} {args}"
        );
        assert!(!args.is_empty(), "{k} without arguments");
    }
    let froms: Vec<&str> = steps
        .iter()
        .filter(|(k, _)| k == "FROM")
        .map(|(_, a)| a.as_str())
        .collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(steps[0].0 == "FROM" || steps[0].0 == "ARG");
    let builder = froms[0]
        .split_once(" AS ")
        .or_else(|| froms[0].split_once(" as "))
        .map(|(_, name)| name.trim())
        .expect("the first stage is named");
    let runtime = froms.last().unwrap();
    assert!(
        runtime.contains("-slim") || runtime.contains("distroless"),
        "small runtime image: {runtime}"
    );
    let last_from = steps.iter().rposition(|(k, _)| k == "FROM").unwrap();
    let final_stage = &steps[last_from..];
    assert!(
        final_stage
            .iter()
            .any(|(k, a)| k == "COPY" && a.starts_with(&format!("--from={builder} "))),
        "the runtime copies the binary from the builder"
    );
    assert!(
        !final_stage
            .iter()
            .any(|(k, a)| k == "RUN" && a.contains("cargo")),
        "no toolchain in the runtime stage"
    );
    let user = final_stage
        .iter()
        .rfind(|(k, _)| k == "USER")
        .map(|(_, a)| a.as_str())
        .expect("a USER in the runtime stage");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "{user}"
    );
    let entry = final_stage
        .iter()
        .find(|(k, _)| k == "ENTRYPOINT")
        .expect("an ENTRYPOINT");
    let argv: Vec<String> = serde_json::from_str(&entry.1).expect("ENTRYPOINT in exec form");
    assert_eq!(argv[0], "cohort");
    // The build reads the lock file and leaves target/ out of the context.
    assert!(steps
        .iter()
        .any(|(k, a)| k == "RUN" && a.contains("--locked")));
    assert!(read(".dockerignore")
        .lines()
        .any(|l| l.trim() == "target" || l.trim() == "/target" || l.trim() == "target/"));
    if have("hadolint") {
        let out = Command::new("hadolint")
            .arg(repo("deploy/Dockerfile"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn the_dockerfile_checker_can_fail() {
    let single = "FROM debian:bookworm-slim\nCOPY x /x\n";
    let froms = dockerfile(single)
        .iter()
        .filter(|(k, _)| k == "FROM")
        .count();
    assert_eq!(froms, 1);
    let joined = dockerfile("RUN a \\\n  && b\n# c\nUSER x\n");
    assert_eq!(
        joined,
        [
            ("RUN".into(), "a  && b".into()),
            ("USER".into(), "x".into())
        ]
    );
}

#[test]
fn the_systemd_unit_verifies_and_runs_the_documented_command() {
    let unit = read("deploy/cohort.service");
    assert!(unit.contains("\nExecStart=/usr/local/bin/cohort --config /etc/cohort/cohort.yaml\n"));
    assert!(unit.contains("\nExecReload=/bin/kill -HUP $MAINPID\n"));
    assert!(unit.contains("\nRestartPreventExitStatus=2\n"));
    if !have("systemd-analyze") {
        return;
    }
    // `verify` checks the binary exists: point it at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cohort.service");
    std::fs::write(
        &file,
        unit.replace("/usr/local/bin/cohort", env!("CARGO_BIN_EXE_cohort")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains("cohort.service:"),
        "a warning about the unit: {err}"
    );
}
