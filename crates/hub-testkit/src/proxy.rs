//! A TCP proxy a test can cut and bring back on the same port: a broker or a database "down"
//! (the port refuses, every connection through it gone) without stopping the real service.

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Forwards every connection made to `127.0.0.1:`[`TcpProxy::port`] to an upstream address.
///
/// ```no_run
/// # #[tokio::main] async fn main() {
/// let mut proxy = hub_testkit::TcpProxy::start("127.0.0.1:5432").await;
/// let url = format!("host=127.0.0.1 port={} user=postgres dbname=test", proxy.port());
/// proxy.cut().await; // refused from now on, open connections closed
/// proxy.up().await; // accepting again, on the same port
/// # }
/// ```
pub struct TcpProxy {
    port: u16,
    upstream: String,
    task: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// A proxy to `upstream` (`host:port`), accepting on a free port of 127.0.0.1.
    ///
    /// # Panics
    /// When no port can be bound (a test set-up failure).
    pub async fn start(upstream: impl Into<String>) -> Self {
        let mut proxy = Self {
            port: 0,
            upstream: upstream.into(),
            task: None,
        };
        proxy.up().await;
        proxy
    }

    /// The port it accepts on (the same across [`TcpProxy::cut`] and [`TcpProxy::up`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether it is accepting (not cut).
    pub fn is_up(&self) -> bool {
        self.task.is_some()
    }

    /// Accepts again, on the same port. Does nothing when already up.
    ///
    /// # Panics
    /// When the port cannot be bound again (another program took it meanwhile).
    pub async fn up(&mut self) {
        if self.task.is_some() {
            return;
        }
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap_or_else(|e| panic!("proxy: cannot listen on 127.0.0.1:{}: {e}", self.port));
        if let Ok(addr) = listener.local_addr() {
            self.port = addr.port();
        }
        let upstream = self.upstream.clone();
        self.task = Some(tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut down, _)) = listener.accept().await {
                let upstream = upstream.clone();
                conns.spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
            }
        }));
    }

    /// Closes the port and every connection through it (aborting the task drops the listener
    /// and, with its `JoinSet`, every connection).
    pub async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
