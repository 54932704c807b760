//! A TCP proxy a test owns, to cut a service off from Redis or RabbitMQ (and restore it), or
//! to hold back what the service sends, without touching the shared servers.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

#[derive(Debug, Clone)]
pub struct Proxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    /// Bumped on every cut: live connections watch it and close.
    cuts: watch::Sender<u64>,
    /// While true, nothing a client sends is passed on.
    stalled: watch::Sender<bool>,
}

impl Proxy {
    /// Forwards connections on a fresh local port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            open: Arc::new(AtomicBool::new(true)),
            cuts: watch::channel(0).0,
            stalled: watch::channel(false).0,
        };
        let accepting = proxy.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !accepting.open.load(Ordering::SeqCst) {
                    drop(client); // refused while cut
                    continue;
                }
                let mut cut = accepting.cuts.subscribe();
                let stalled = accepting.stalled.subscribe();
                let cut_while_stalled = accepting.cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = server.into_split();
                    let upstream = forward_unless_stalled(
                        &mut from_client,
                        &mut to_server,
                        stalled,
                        cut_while_stalled,
                    );
                    let downstream = tokio::io::copy(&mut from_server, &mut to_client);
                    tokio::select! {
                        _ = upstream => {}
                        _ = downstream => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        proxy
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every connection through the proxy and refuses new ones; what a stall held
    /// back is thrown away.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Holds back everything clients send from now on (the server hears nothing more, and
    /// what it sends still arrives), as a network that stops delivering one way would.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Accepts connections again, and passes on what was held back.
    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
        self.stalled.send_replace(false);
    }
}

/// Copies `from` to `to`, holding each read back while `stalled` says so; what is held when
/// `cut` changes is dropped, never written.
async fn forward_unless_stalled(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
    cut: watch::Receiver<u64>,
) -> std::io::Result<()> {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = from.read(&mut buffer).await?;
        if read == 0 {
            return to.shutdown().await;
        }
        // Read before the stall began or not, nothing is written while it lasts.
        if stalled.wait_for(|stalled| !stalled).await.is_err() || cut.has_changed().unwrap_or(true)
        {
            return Ok(());
        }
        to.write_all(&buffer[..read]).await?;
    }
}
