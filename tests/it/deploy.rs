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
