//! A TCP proxy between one `cairn serve` process and PostgreSQL that can partition that
//! process: stop forwarding while keeping every socket open (a half-open session: the
//! server still sees a live peer and keeps its locks), then cut the server's side only
//! (what the server's TCP keepalive does to a dead peer) while the process still believes
//! its sessions alive, then heal.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Copies bytes both ways (new connections reach the server).
    Forward,
    /// Copies nothing; sockets stay open; new connections are accepted and held silent.
    Hole,
    /// The server's side of every connection is closed; the process's side stays open
    /// and silent.
    CutServerSide,
    /// Every connection is closed (the process sees its sessions end).
    CloseAll,
}

/// A proxy listening on a loopback port, forwarding to `127.0.0.1:<upstream>`.
pub struct Proxy {
    /// Where the process connects.
    pub port: u16,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mode, _) = watch::channel(Mode::Forward);
        let modes = mode.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let rx = modes.subscribe();
                tokio::spawn(pipe(client, upstream, rx));
            }
        });
        Self { port, mode, task }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.mode.send_replace(Mode::CloseAll);
    }
}

async fn pipe(mut client: TcpStream, upstream: u16, mut mode: watch::Receiver<Mode>) {
    let _ = client.set_nodelay(true);
    // A partitioned process cannot reach the server with a new connection either.
    let mut server = if *mode.borrow_and_update() == Mode::Forward {
        match TcpStream::connect(("127.0.0.1", upstream)).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                Some(s)
            }
            Err(_) => return,
        }
    } else {
        None
    };
    let (mut a, mut b) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::CloseAll => return,
            Mode::Hole | Mode::CutServerSide => {
                if current == Mode::CutServerSide {
                    server = None;
                }
                if mode.changed().await.is_err() {
                    return;
                }
            }
            Mode::Forward => {
                // Held silent through a partition: the process sees it end at the heal.
                let Some(up) = server.as_mut() else { return };
                tokio::select! {
                    r = client.read(&mut a) => {
                        let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                        if up.write_all(&a[..n]).await.is_err() { return; }
                    }
                    r = up.read(&mut b) => {
                        let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                        if client.write_all(&b[..n]).await.is_err() { return; }
                    }
                    r = mode.changed() => if r.is_err() { return; },
                }
            }
        }
    }
}
