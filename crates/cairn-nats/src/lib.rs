//! Cairn on NATS JetStream: the event store is the outbox, and a relay publishes its
//! committed events, in `$all` order, to a JetStream stream.
//!
//! Command handlers never talk to the broker: an append is done when the store committed
//! it, and the relay catches up from its checkpoint (kept in the read-model store, like a
//! projection's). The checkpoint only ever covers acknowledged events, and records a
//! stream sequence beside them; on resume the relay reads the stream after it and does
//! not publish again what is already there, so a crash never duplicates an event, however
//! long the relay stays down (`docs/design/relay.md`). `Nats-Msg-Id` = event id, so
//! JetStream's duplicate window is a second line of defence.

pub mod connect;
pub mod consumer;
pub mod redact;
pub mod relay;
pub mod subject;

pub use connect::{NatsConnectError, NatsConnectOptions, connect};
pub use consumer::{BusConsumer, BusHandler, BusMessage, ConsumerOptions};
pub use redact::redact_url;
pub use relay::{
    Mapper, Outgoing, Relay, RelayConfig, RelayError, RelayProgress, SequenceMark, Tail, all_events,
};
pub use subject::{encode_token, event_subject};

/// Test support: which NATS server the tests use, and private `nats-server`s for tests
/// that stop, kill or cluster them (never the shared one).
pub mod testing {
    use std::io::Write as _;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::Once;
    use std::time::Duration;

    /// Ports [`free_port`] handed out in this process (as `cairn_testkit`'s: a just-closed
    /// port may be given to the next caller, and two servers must not share one).
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

    /// A free loopback port, never one this process was given before (closed before the
    /// server binds it).
    ///
    /// # Panics
    /// When no port can be bound.
    #[must_use]
    pub fn free_port() -> u16 {
        let mut given = HANDED_OUT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            let port =
                std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            if !given.contains(&port) {
                given.push(port);
                return port;
            }
        }
    }

    /// A `nats-server -js` child process on loopback ports.
    pub struct NatsServer {
        child: Option<Child>,
        /// Client port.
        pub port: u16,
        /// Cluster (route) port, when clustered.
        pub cluster_port: Option<u16>,
        name: String,
        store: PathBuf,
        routes: Vec<u16>,
    }

    impl NatsServer {
        /// Starts a single server with its JetStream data in `store`.
        #[must_use]
        pub fn start(name: &str, store: &Path) -> Self {
            Self::spawn(name, store, free_port(), None, Vec::new())
        }

        /// Starts one node of a cluster: `cluster_port` for routes, `routes` the others'.
        #[must_use]
        pub fn start_clustered(
            name: &str,
            store: &Path,
            cluster_port: u16,
            routes: Vec<u16>,
        ) -> Self {
            Self::spawn(name, store, free_port(), Some(cluster_port), routes)
        }

        fn spawn(
            name: &str,
            store: &Path,
            port: u16,
            cluster_port: Option<u16>,
            routes: Vec<u16>,
        ) -> Self {
            let mut s = Self {
                child: None,
                port,
                cluster_port,
                name: name.to_owned(),
                store: store.to_owned(),
                routes,
            };
            s.restart();
            s
        }

        /// The client URL.
        #[must_use]
        pub fn url(&self) -> String {
            format!("nats://127.0.0.1:{}", self.port)
        }

        /// (Re)starts the process with the same ports and data.
        ///
        /// # Panics
        /// When `nats-server` cannot be run or does not listen within 10 s.
        pub fn restart(&mut self) {
            let mut command = Command::new("nats-server");
            command
                .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-n", &self.name])
                .arg("-sd")
                .arg(&self.store)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(cp) = self.cluster_port {
                let routes: Vec<String> =
                    self.routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
                command.args([
                    "--cluster_name",
                    "cairn-test",
                    "--cluster",
                    &format!("nats://127.0.0.1:{cp}"),
                    "--routes",
                    &routes.join(","),
                ]);
            }
            self.child = Some(command.spawn().expect("nats-server runs"));
            for _ in 0..200 {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            panic!("nats-server did not listen on {}", self.port);
        }

        /// `kill -9`.
        pub fn kill(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    impl Drop for NatsServer {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// The variable naming the NATS server the tests use.
    pub const URL_VAR: &str = "CAIRN_TEST_NATS_URL";

    static SKIP_NOTICE: Once = Once::new();

    /// The NATS URL, or `None` (after a loud notice on the terminal) when NATS tests are off.
    #[must_use]
    pub fn nats_url() -> Option<String> {
        match std::env::var(URL_VAR) {
            Ok(url) if !url.is_empty() => Some(url),
            _ => {
                SKIP_NOTICE.call_once(|| {
                    let binary = std::env::args().next().unwrap_or_default();
                    let _ = writeln!(
                        std::io::stderr(),
                        "\n*** SKIPPED: the NATS tests of {binary} did not run. Set {URL_VAR}=nats://127.0.0.1:4222 to run them (.ci/run does). ***\n"
                    );
                });
                None
            }
        }
    }
}
