//! Cairn on NATS JetStream: the event store is the outbox, and a relay publishes its
//! committed events, in `$all` order, to a JetStream stream.
//!
//! Command handlers never talk to the broker: an append is done when the store committed
//! it, and the relay catches up from its checkpoint (kept in the read-model store, like a
//! projection's). `Nats-Msg-Id` = event id, so a re-publish after a crash is dropped by
//! JetStream's duplicate window; the checkpoint only ever covers acknowledged events.

pub mod relay;
pub mod subject;

pub use relay::{Mapper, Outgoing, Relay, RelayConfig, RelayError, RelayProgress, all_events};
pub use subject::{encode_token, event_subject};

/// Test support: which NATS server the tests use.
pub mod testing {
    use std::io::Write as _;
    use std::sync::Once;

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
