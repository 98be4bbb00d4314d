//! Credentials and TLS to NATS through [`cairn_nats::connect`], each against a private
//! `nats-server` configured for it (token, nkey, mutual TLS): what is right connects and
//! publishes to JetStream, what is missing or wrong is refused quickly and says why.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cairn_core::readmodel::ReadModelStore;
use cairn_core::{Append, EventStore, ExpectedVersion, NewEvent};
use cairn_nats::{NatsConnectOptions, Relay, RelayConfig, connect};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::value::RawValue;
use tokio::sync::watch;

/// Longest a refused connection may take: a refusal must not look like a hang.
const REFUSAL_WITHIN: Duration = Duration::from_secs(15);

/// A private `nats-server` with a configuration file; killed on drop.
struct PrivateNats {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl PrivateNats {
    /// `None` (after a notice) when there is no `nats-server`.
    fn start(config: impl FnOnce(&Path) -> String) -> Option<Self> {
        if Command::new("nats-server").arg("--version").output().is_err() {
            eprintln!("*** SKIPPED: no nats-server on PATH ***");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("server.conf");
        std::fs::write(&conf, config(dir.path())).unwrap();
        let port = cairn_nats::testing::free_port();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&conf)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
            .arg("-sd")
            .arg(dir.path().join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs");
        let server = Self { child, port, dir };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nats-server did not listen on {port}");
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects, bounded: a refusal must come back, not hang.
async fn try_connect(
    url: &str,
    options: &NatsConnectOptions,
) -> Result<async_nats::Client, String> {
    tokio::time::timeout(REFUSAL_WITHIN, connect(url, options))
        .await
        .expect("connect neither succeeded nor failed within REFUSAL_WITHIN")
        .map_err(|e| {
            eprintln!("refused: {e}");
            e.to_string()
        })
}

/// Creates a stream and publishes one message to it, waiting for JetStream's ack.
async fn publish_one(client: async_nats::Client) {
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "AUTH_TEST".into(),
            subjects: vec!["auth.test".into()],
            ..Default::default()
        })
        .await
        .expect("create the stream");
    js.publish("auth.test", "hello".into()).await.unwrap().await.expect("JetStream acks");
    assert_eq!(stream.info().await.unwrap().state.messages, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_a_file_or_the_url_is_sent_and_a_missing_one_is_refused() {
    let Some(server) = PrivateNats::start(|_| "authorization { token: \"s3cret\" }\n".into())
    else {
        return;
    };
    let token = server.file("token", "s3cret\n");
    let options = NatsConnectOptions { token_file: Some(token), ..NatsConnectOptions::default() };

    // The relay, the real user of the connection, publishes through it.
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(
        cairn_sqlite::SqliteEventStore::open(dir.path(), &cairn_sqlite::SqliteOptions::default())
            .unwrap(),
    );
    let readmodels: Arc<dyn ReadModelStore> =
        Arc::new(cairn_sqlite::SqliteReadModels::open(dir.path()).unwrap());
    let mut head = 0;
    for i in 0..3 {
        let append = Append {
            aggregate_id: format!("acct-{i}"),
            aggregate_type: "Account".into(),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent::new("Credited", RawValue::from_string("{}".into()).unwrap())],
            idempotency: None,
        };
        head = store.append(append).await.unwrap().position;
    }
    let config = RelayConfig { stream: "AUTH_RELAY".into(), ..RelayConfig::default() };
    let relay = Arc::new(
        Relay::with_options(
            &server.url(),
            &options,
            store,
            readmodels,
            config,
            cairn_nats::all_events(),
        )
        .await
        .expect("the relay connects with the token"),
    );
    let (stop, stop_rx) = watch::channel(false);
    let mut progress = relay.progress();
    let task = tokio::spawn(Arc::clone(&relay).run(stop_rx));
    tokio::time::timeout(Duration::from_secs(30), progress.wait_for(|p| p.position >= head))
        .await
        .expect("the relay publishes every event")
        .unwrap();
    let _ = stop.send(true);
    task.await.unwrap();
    let js = async_nats::jetstream::new(try_connect(&server.url(), &options).await.unwrap());
    let mut stream = js.get_stream("AUTH_RELAY").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 3);

    // The token in the URL, as NATS clients read it.
    let in_url = format!("nats://s3cret@127.0.0.1:{}", server.port);
    publish_one(try_connect(&in_url, &NatsConnectOptions::default()).await.unwrap()).await;

    // No token, or a wrong one: refused, saying so.
    let err = try_connect(&server.url(), &NatsConnectOptions::default()).await.err().unwrap();
    assert!(err.contains("authorization violation"), "{err}");
    let wrong = NatsConnectOptions {
        token_file: Some(server.file("wrong", "guess")),
        ..NatsConnectOptions::default()
    };
    let err = try_connect(&server.url(), &wrong).await.err().unwrap();
    assert!(err.contains("authorization violation"), "{err}");
}

/// A CA and certificates it signed for the server and a client.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "cairn test CA");
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names).unwrap().signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
    let (client_cert, client_key) = leaf(vec!["cairn".into()]);
    Pki { ca: ca_pem, server_cert, server_key, client_cert, client_key }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_right_ca_and_a_client_certificate() {
    let pki = pki();
    let Some(server) = PrivateNats::start(|dir| {
        for (name, pem) in
            [("ca.pem", &pki.ca), ("server.pem", &pki.server_cert), ("server.key", &pki.server_key)]
        {
            std::fs::write(dir.join(name), pem).unwrap();
        }
        let d = dir.display();
        format!(
            "tls {{\n  cert_file: \"{d}/server.pem\"\n  key_file: \"{d}/server.key\"\n  \
             ca_file: \"{d}/ca.pem\"\n  verify: true\n  timeout: 2\n}}\n"
        )
    }) else {
        return;
    };
    let ca = server.file("client-ca.pem", &pki.ca);
    let tls = NatsConnectOptions {
        ca_file: Some(ca.clone()),
        tls_cert: Some(server.file("client.pem", &pki.client_cert)),
        tls_key: Some(server.file("client.key", &pki.client_key)),
        ..NatsConnectOptions::default()
    };
    publish_one(try_connect(&server.url(), &tls).await.expect("mutual TLS")).await;

    // No client certificate: the server refuses the handshake.
    let no_cert = NatsConnectOptions { ca_file: Some(ca), ..NatsConnectOptions::default() };
    let err = try_connect(&server.url(), &no_cert).await.expect_err("a client cert is needed");
    assert!(err.contains("cannot connect to NATS"), "{err}");

    // A CA that did not sign the server's certificate: we refuse the server.
    let other = self::pki();
    let wrong_ca =
        NatsConnectOptions { ca_file: Some(server.file("other-ca.pem", &other.ca)), ..tls.clone() };
    let err = try_connect(&server.url(), &wrong_ca).await.expect_err("the wrong CA is refused");
    assert!(err.contains("invalid peer certificate"), "{err}");

    // TLS asked for, a plain server: refused rather than sent in the clear.
    let Some(plain) = PrivateNats::start(|_| String::new()) else { return };
    let err = try_connect(&plain.url(), &tls).await.expect_err("TLS is required");
    assert!(err.contains("cannot connect to NATS"), "{err}");
}

/// NATS's key encoding (base32 of prefix, key, CRC-16/XMODEM little-endian), written out
/// here because the `nkeys` crate is not re-exported by async-nats.
fn nkey_encode(prefix: &[u8], key: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut raw = prefix.to_vec();
    raw.extend_from_slice(key);
    let mut crc = 0_u16;
    for &b in &raw {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    raw.extend_from_slice(&crc.to_le_bytes());
    let (mut out, mut buffer, mut bits) = (String::new(), 0_u32, 0);
    for &b in &raw {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// A user nkey pair: (seed `SU…`, public key `U…`), from an Ed25519 key made by rcgen.
fn user_nkey() -> (String, String) {
    const USER: u8 = 20 << 3;
    const SEED: u8 = 18 << 3;
    // A PKCS#8 document of an Ed25519 key: its length, this header, the 32-byte seed.
    const PKCS8_HEADER: [u8; 14] =
        [0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let der = key.serialize_der();
    assert_eq!(der[2..16], PKCS8_HEADER, "an Ed25519 PKCS#8 document");
    let seed = nkey_encode(&[SEED | USER >> 5, (USER & 31) << 3], &der[16..48]);
    (seed, nkey_encode(&[USER], key.public_key_raw()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nkey_seed_file_signs_the_servers_nonce() {
    let (seed, public) = user_nkey();
    assert!(seed.starts_with("SU") && public.starts_with('U'), "{seed:.2} {public}");
    let Some(server) = PrivateNats::start(|_| {
        format!("authorization {{ users: [ {{ nkey: \"{public}\" }} ] }}\n")
    }) else {
        return;
    };
    let options = NatsConnectOptions {
        nkey_file: Some(server.file("user.nk", &format!("{seed}\n"))),
        ..NatsConnectOptions::default()
    };
    publish_one(try_connect(&server.url(), &options).await.expect("the nkey is accepted")).await;
    let (other, _) = user_nkey();
    let wrong = NatsConnectOptions {
        nkey_file: Some(server.file("other.nk", &other)),
        ..NatsConnectOptions::default()
    };
    let err = try_connect(&server.url(), &wrong).await.expect_err("another key is refused");
    assert!(err.contains("authorization violation"), "{err}");
}
