//! The bare TCP baseline: a pipelined request/response protocol over loopback with the same
//! message sizes as NVMe/TCP 4 KiB I/O, and no storage, parsing or protocol state behind it.
//!
//! - read: the client sends a [`REQUEST_LEN`]-byte request (the size of an NVMe/TCP command
//!   capsule: 8-byte PDU header + 64-byte SQE); the server answers with a [`RESPONSE_LEN`]-byte
//!   header (a C2HData PDU header) followed by `bs` bytes of data;
//! - write: the client sends the request followed by `bs` bytes (in-capsule data); the server
//!   answers with a [`RESPONSE_LEN`]-byte response (a response capsule).
//!
//! Both sides are built like their NVMe/TCP counterparts, minus the protocol: the client keeps
//! one reader and one writer task per connection (requests go to the writer through an
//! unbounded channel; the writer drains it before each flush; the reader wakes the waiting
//! worker by tag), and the server one reader and one writer task per connection (replies go
//! through a bounded channel; the writer batches whatever is ready into one `write`). Sockets
//! are tokio `TcpStream`s with `TCP_NODELAY`, as in the host and the target.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};

use crate::load::{Driver, Op};

/// Bytes of a request header (an NVMe/TCP command capsule without data).
pub const REQUEST_LEN: usize = 72;
/// Bytes of a response header (a C2HData PDU header, or a response capsule).
pub const RESPONSE_LEN: usize = 24;
/// Socket read/write buffer sizes (as in the host and the target).
const IO_BUFFER: usize = 64 * 1024;
/// Replies a server connection may have queued for its writer.
const WRITER_QUEUE: usize = 256;
/// The server writer stops batching replies past this many bytes.
const BATCH_LIMIT: usize = 64 * 1024;
const OP_READ: u8 = 1;
const OP_WRITE: u8 = 2;

fn op_code(op: Op) -> u8 {
    match op {
        Op::Read => OP_READ,
        Op::Write => OP_WRITE,
    }
}

/// A server plus connected clients: the baseline's whole loopback bed.
pub struct Baseline {
    pub client: Arc<Client>,
    server: Server,
}

impl Baseline {
    /// Starts a server on 127.0.0.1 and opens `connections` client connections to it.
    pub async fn start(connections: usize, bs: usize) -> Result<Baseline> {
        let server = Server::start(bs).await?;
        let client = Client::connect(server.addr, connections, bs).await?;
        Ok(Baseline {
            client: Arc::new(client),
            server,
        })
    }

    /// Closes the connections and stops the server.
    pub fn stop(self) {
        drop(self.client);
        self.server.stop();
    }
}

/// The baseline server: answers every request as soon as it has read it.
pub struct Server {
    addr: SocketAddr,
    acceptor: JoinHandle<()>,
}

impl Server {
    /// Listens on 127.0.0.1 (a free port) and serves requests for `bs`-byte I/O.
    pub async fn start(bs: usize) -> Result<Server> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding the baseline server")?;
        let addr = listener.local_addr().context("baseline server address")?;
        let acceptor = tokio::spawn(async move {
            // Owned here so that stopping the acceptor also ends every connection.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            conns.spawn(async move {
                                if let Err(e) = serve(stream, bs).await {
                                    eprintln!("baseline server connection failed: {e}");
                                }
                            });
                        }
                        Err(e) => {
                            eprintln!("baseline server: accept failed: {e}");
                            return;
                        }
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(Server { addr, acceptor })
    }

    /// Stops accepting and drops every connection.
    pub fn stop(self) {
        self.acceptor.abort();
    }
}

/// One reply for the server's writer: which request, and whether it carries data.
struct Reply {
    tag: u16,
    op: u8,
}

/// Serves one connection until the client closes it.
async fn serve(stream: TcpStream, bs: usize) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(IO_BUFFER, rd);
    let (tx, rx) = mpsc::channel(WRITER_QUEUE);
    let writer = tokio::spawn(write_replies(wr, rx, bs));
    let mut req = [0u8; REQUEST_LEN];
    let mut data = vec![0u8; bs];
    let result = loop {
        match rd.read_exact(&mut req).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break Ok(()),
            Err(e) => break Err(e),
        }
        let op = req[0];
        let tag = u16::from_le_bytes([req[2], req[3]]);
        match op {
            OP_READ => {}
            OP_WRITE => {
                if let Err(e) = rd.read_exact(&mut data).await {
                    break Err(e);
                }
            }
            other => {
                break Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unknown opcode {other}"),
                ));
            }
        }
        if tx.send(Reply { tag, op }).await.is_err() {
            break Ok(()); // the writer failed; its error is reported below
        }
    };
    drop(tx);
    let written = writer.await.map_err(io::Error::other).and_then(|r| r);
    result.and(written)
}

/// The server's writer: batches ready replies into one `write`.
async fn write_replies(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Reply>,
    bs: usize,
) -> io::Result<()> {
    let payload = vec![0xA5u8; bs];
    let mut batch = Vec::with_capacity(BATCH_LIMIT + RESPONSE_LEN + bs);
    let encode = |batch: &mut Vec<u8>, r: Reply| {
        let mut hdr = [0u8; RESPONSE_LEN];
        hdr[..2].copy_from_slice(&r.tag.to_le_bytes());
        hdr[2] = r.op;
        batch.extend_from_slice(&hdr);
        if r.op == OP_READ {
            batch.extend_from_slice(&payload);
        }
    };
    while let Some(first) = rx.recv().await {
        encode(&mut batch, first);
        while batch.len() < BATCH_LIMIT {
            let Ok(next) = rx.try_recv() else { break };
            encode(&mut batch, next);
        }
        wr.write_all(&batch).await?;
        batch.clear();
    }
    wr.shutdown().await
}

/// The baseline client: `connections` pipelined connections to a [`Server`].
pub struct Client {
    conns: Vec<Arc<Connection>>,
}

/// A request for a client connection's writer.
struct Request {
    tag: u16,
    op: u8,
}

/// One client connection.
struct Connection {
    tx: mpsc::UnboundedSender<Request>,
    shared: Arc<ConnShared>,
    reader: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The writer ends by itself when `tx` goes (it then shuts the socket down).
        self.reader.abort();
    }
}

/// What a connection's reader and its workers share: who waits for which tag.
#[derive(Default)]
struct ConnShared {
    state: Mutex<ConnState>,
}

#[derive(Default)]
struct ConnState {
    waiters: Vec<Option<oneshot::Sender<()>>>,
    failed: Option<String>,
}

impl ConnShared {
    fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails the connection: waiting workers see their channel close, later ones the error.
    fn fail(&self, why: String) {
        let mut st = self.lock();
        st.failed.get_or_insert(why);
        st.waiters.clear();
    }

    fn failure(&self) -> String {
        self.lock()
            .failed
            .clone()
            .unwrap_or_else(|| "connection closed".into())
    }
}

impl Client {
    /// Opens `connections` connections to `addr` for `bs`-byte I/O.
    pub async fn connect(addr: SocketAddr, connections: usize, bs: usize) -> Result<Client> {
        let mut conns = Vec::with_capacity(connections);
        for _ in 0..connections {
            let stream = TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to the baseline server {addr}"))?;
            stream.set_nodelay(true).context("TCP_NODELAY")?;
            let (rd, wr) = stream.into_split();
            let shared = Arc::new(ConnShared::default());
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_requests(wr, rx, bs, shared.clone()));
            let reader = tokio::spawn(read_replies(rd, bs, shared.clone()));
            conns.push(Arc::new(Connection { tx, shared, reader }));
        }
        Ok(Client { conns })
    }
}

/// A baseline worker: its connection and its own tag on it.
pub struct Worker {
    conn: Arc<Connection>,
    tag: u16,
    op: u8,
}

impl Driver for Client {
    type Worker = Worker;

    fn worker(&self, index: usize, _workers: usize, op: Op) -> Worker {
        let n = self.conns.len().max(1);
        Worker {
            conn: self.conns[index % n].clone(),
            // Worker counts are capped at 65536 by the CLI, so the tag fits.
            tag: u16::try_from(index / n).unwrap_or(u16::MAX),
            op: op_code(op),
        }
    }

    async fn issue(&self, w: &mut Worker) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = w.conn.shared.lock();
            if let Some(why) = &st.failed {
                bail!("baseline connection failed: {why}");
            }
            let slot = usize::from(w.tag);
            if st.waiters.len() <= slot {
                st.waiters.resize_with(slot + 1, || None);
            }
            st.waiters[slot] = Some(tx);
        }
        w.conn
            .tx
            .send(Request {
                tag: w.tag,
                op: w.op,
            })
            .map_err(|_| anyhow!("baseline connection failed: {}", w.conn.shared.failure()))?;
        rx.await
            .map_err(|_| anyhow!("baseline connection failed: {}", w.conn.shared.failure()))
    }
}

/// A client connection's writer: drains queued requests into the buffer, then flushes.
async fn write_requests(
    wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Request>,
    bs: usize,
    shared: Arc<ConnShared>,
) {
    let mut w = BufWriter::with_capacity(IO_BUFFER, wr);
    let payload = vec![0x5Au8; bs];
    let result: io::Result<()> = async {
        while let Some(first) = rx.recv().await {
            write_request(&mut w, first, &payload).await?;
            while let Ok(next) = rx.try_recv() {
                write_request(&mut w, next, &payload).await?;
            }
            w.flush().await?;
        }
        w.shutdown().await
    }
    .await;
    if let Err(e) = result {
        shared.fail(format!("write: {e}"));
    }
}

async fn write_request(
    w: &mut BufWriter<OwnedWriteHalf>,
    r: Request,
    payload: &[u8],
) -> io::Result<()> {
    let mut hdr = [0u8; REQUEST_LEN];
    hdr[0] = r.op;
    hdr[2..4].copy_from_slice(&r.tag.to_le_bytes());
    w.write_all(&hdr).await?;
    if r.op == OP_WRITE {
        w.write_all(payload).await?;
    }
    Ok(())
}

/// A client connection's reader: completes the worker waiting on each reply's tag.
async fn read_replies(rd: OwnedReadHalf, bs: usize, shared: Arc<ConnShared>) {
    let mut rd = BufReader::with_capacity(IO_BUFFER, rd);
    let mut hdr = [0u8; RESPONSE_LEN];
    let mut data = vec![0u8; bs];
    let err = loop {
        if let Err(e) = rd.read_exact(&mut hdr).await {
            break format!("read: {e}");
        }
        let tag = u16::from_le_bytes([hdr[0], hdr[1]]);
        if hdr[2] == OP_READ
            && let Err(e) = rd.read_exact(&mut data).await
        {
            break format!("read: {e}");
        }
        let waiter = shared
            .lock()
            .waiters
            .get_mut(usize::from(tag))
            .and_then(Option::take);
        match waiter {
            Some(w) => {
                let _ = w.send(());
            }
            None => break format!("reply for tag {tag}, which nobody waits for"),
        }
    };
    shared.fail(err);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::load::{Phase, run};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_and_writes_complete_over_loopback() {
        let b = Baseline::start(2, 4096).await.unwrap();
        for op in [Op::Read, Op::Write] {
            let phase = Phase::short(op);
            let s = run(&b.client, &phase).await.unwrap();
            assert!(
                s.recorder.ops() > 100,
                "{op:?}: only {} ops",
                s.recorder.ops()
            );
        }
        b.stop();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_server_fails_the_io() {
        let b = Baseline::start(1, 4096).await.unwrap();
        let client = b.client.clone();
        b.stop();
        let mut w = client.worker(0, 1, Op::Read);
        let r = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Err(e) = client.issue(&mut w).await {
                    return e;
                }
            }
        })
        .await
        .unwrap();
        assert!(r.to_string().contains("baseline connection failed"), "{r}");
    }
}
