//! Fault injection for cluster tests: a userspace TCP proxy in front of every member's peer listener
//! (the member advertises the proxy's address, so all peer traffic it *receives* crosses it), which can
//! pass, delay or blackhole traffic, plus SIGKILL / SIGSTOP / SIGCONT of a member by pid. Mirrors what
//! etcd's robustness tests do with `pkg/proxy` and process signals (blackhole/delay peer network, pause).
//!
//! One proxy per member only sees connections *into* that member. A member's own outgoing peer
//! connections end at the other members' proxies, so to cut a member off in both directions each proxy
//! learns which member dialled an accepted connection: it maps the connection's source port to the
//! owning process through `/proc/net/tcp` and the members' `/proc/<pid>/fd` (protocol-independent, so
//! it works the same for etcd's HTTP peer transport and for Keel's gRPC one).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::server::{send_signal, HarnessError};

/// What the network does to traffic touching one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    /// Bytes are forwarded as they arrive.
    Pass,
    /// Every chunk is held back this long before it is forwarded (etcd's `delayPeerNetwork`).
    Delay(Duration),
    /// Bytes are read and thrown away, so peers see silence, not a reset (etcd's
    /// `blackholePeerNetwork`). Connections that lost bytes are closed once the fault heals, because
    /// the byte stream is corrupt from then on; the members reconnect as after a real outage.
    Blackhole,
}

impl LinkMode {
    /// The harsher of two modes: a connection between two members suffers the faults of both ends.
    fn worst(self, other: LinkMode) -> LinkMode {
        match (self, other) {
            (LinkMode::Blackhole, _) | (_, LinkMode::Blackhole) => LinkMode::Blackhole,
            (LinkMode::Delay(a), LinkMode::Delay(b)) => LinkMode::Delay(a.max(b)),
            (LinkMode::Delay(d), LinkMode::Pass) | (LinkMode::Pass, LinkMode::Delay(d)) => LinkMode::Delay(d),
            (LinkMode::Pass, LinkMode::Pass) => LinkMode::Pass,
        }
    }
}

/// The peer network of one cluster: a proxy per member and the fault mode of each member.
pub struct PeerNetwork {
    modes: watch::Sender<Vec<LinkMode>>,
    /// Pids of the member processes (index = member), used to tell who dialled a connection.
    pids: Arc<Mutex<Vec<Option<u32>>>>,
    proxies: Vec<JoinHandle<()>>,
    addrs: Vec<SocketAddr>,
    /// Connections accepted, and how many of them were traced to the member that dialled.
    accepted: Arc<Mutex<(usize, usize)>>,
}

impl PeerNetwork {
    /// A network for `members` members, all passing traffic, with no proxies yet.
    pub fn new(members: usize) -> PeerNetwork {
        let (modes, _) = watch::channel(vec![LinkMode::Pass; members]);
        PeerNetwork {
            modes,
            pids: Arc::new(Mutex::new(vec![None; members])),
            proxies: Vec::new(),
            addrs: Vec::new(),
            accepted: Arc::new(Mutex::new((0, 0))),
        }
    }

    /// Starts the proxy for the next member (in index order), forwarding to `target`; returns the
    /// address the member must advertise to its peers.
    pub async fn add_proxy(&mut self, target: SocketAddr) -> Result<SocketAddr, HarnessError> {
        let member = self.proxies.len();
        let listener =
            TcpListener::bind("127.0.0.1:0").await.map_err(|e| HarnessError::io("binding a peer proxy", e))?;
        let addr = listener.local_addr().map_err(|e| HarnessError::io("reading a proxy address", e))?;
        let modes = self.modes.subscribe();
        let pids = self.pids.clone();
        let accepted = self.accepted.clone();
        self.proxies.push(tokio::spawn(accept_loop(listener, member, target, modes, pids, accepted)));
        self.addrs.push(addr);
        Ok(addr)
    }

    /// Address of member `i`'s proxy.
    pub fn proxy_addr(&self, i: usize) -> SocketAddr {
        self.addrs[i]
    }

    /// (connections accepted, connections traced to the member that dialled them): a full partition
    /// needs the second to cover the member-to-member connections.
    pub fn accepted(&self) -> (usize, usize) {
        *self.accepted.lock().expect("connection counts")
    }

    /// Records the pid of member `i` (after every (re)start) so its outgoing connections are known.
    pub fn set_pid(&self, i: usize, pid: Option<u32>) {
        self.pids.lock().expect("pid table")[i] = pid;
    }

    /// Sets the fault mode of everything member `i` sends or receives over the peer network.
    pub fn set(&self, i: usize, mode: LinkMode) {
        self.modes.send_modify(|modes| modes[i] = mode);
    }

    /// Cuts member `i` off from all other members in both directions.
    pub fn isolate(&self, i: usize) {
        self.set(i, LinkMode::Blackhole);
    }

    /// Every member passes traffic again.
    pub fn heal(&self) {
        self.modes.send_modify(|modes| modes.iter_mut().for_each(|m| *m = LinkMode::Pass));
    }
}

impl Drop for PeerNetwork {
    fn drop(&mut self) {
        for proxy in &self.proxies {
            proxy.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    server: usize,
    target: SocketAddr,
    modes: watch::Receiver<Vec<LinkMode>>,
    pids: Arc<Mutex<Vec<Option<u32>>>>,
    accepted: Arc<Mutex<(usize, usize)>>,
) {
    // A JoinSet aborts its tasks when dropped, so aborting the proxy ends all its connections too.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((inbound, from)) = listener.accept().await else { continue };
        let known: Vec<Option<u32>> = pids.lock().expect("pid table").clone();
        let client = member_owning_port(from.port(), &known);
        {
            let mut counts = accepted.lock().expect("connection counts");
            counts.0 += 1;
            counts.1 += usize::from(client.is_some());
        }
        let modes = modes.clone();
        while conns.try_join_next().is_some() {}
        conns.spawn(async move {
            if let Ok(outbound) = TcpStream::connect(target).await {
                relay(inbound, outbound, server, client, modes).await;
            }
        });
    }
}

/// Mode of a connection from `client` (None: not a member, e.g. a test tool) into `server`.
fn effective(modes: &[LinkMode], server: usize, client: Option<usize>) -> LinkMode {
    let own = modes[server];
    match client {
        Some(c) => own.worst(modes[c]),
        None => own,
    }
}

/// Pumps bytes both ways under the current fault modes until either side closes, or until a
/// connection that lost bytes to a blackhole sees the fault heal.
async fn relay(
    inbound: TcpStream,
    outbound: TcpStream,
    server: usize,
    client: Option<usize>,
    mut modes: watch::Receiver<Vec<LinkMode>>,
) {
    let (mut in_r, mut in_w) = inbound.into_split();
    let (mut out_r, mut out_w) = outbound.into_split();
    let mut up = vec![0u8; 64 * 1024];
    let mut down = vec![0u8; 64 * 1024];
    let mut tainted = false;
    loop {
        let mode = effective(&modes.borrow(), server, client);
        if tainted && mode != LinkMode::Blackhole {
            return;
        }
        tokio::select! {
            r = in_r.read(&mut up) => {
                let Ok(n) = r else { return };
                if n == 0 || !forward(&mut out_w, &up[..n], mode, &mut tainted).await { return; }
            }
            r = out_r.read(&mut down) => {
                let Ok(n) = r else { return };
                if n == 0 || !forward(&mut in_w, &down[..n], mode, &mut tainted).await { return; }
            }
            changed = modes.changed() => { if changed.is_err() { return; } }
        }
    }
}

/// Forwards (or drops, or delays) one chunk; false when the connection should end.
async fn forward<W: AsyncWriteExt + Unpin>(w: &mut W, chunk: &[u8], mode: LinkMode, tainted: &mut bool) -> bool {
    match mode {
        LinkMode::Pass => w.write_all(chunk).await.is_ok(),
        LinkMode::Delay(d) => {
            tokio::time::sleep(d).await;
            w.write_all(chunk).await.is_ok()
        }
        LinkMode::Blackhole => {
            *tainted = true;
            true
        }
    }
}

/// Which member (index into `pids`) owns the local TCP socket on loopback port `port`, if any.
pub fn member_owning_port(port: u16, pids: &[Option<u32>]) -> Option<usize> {
    let inodes = socket_inodes_for_local_port(port);
    if inodes.is_empty() {
        return None;
    }
    for (i, pid) in pids.iter().enumerate() {
        let Some(pid) = pid else { continue };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                let link = link.to_string_lossy();
                if let Some(inode) = link.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    if inodes.iter().any(|i| i == inode) {
                        return Some(i);
                    }
                }
            }
        }
    }
    None
}

/// Inodes of the TCP sockets (v4 and v6) whose local port is `port`, from `/proc/net/tcp{,6}`.
fn socket_inodes_for_local_port(port: u16) -> Vec<String> {
    let wanted = format!("{port:04X}");
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // Columns: sl, local_address (ADDR:PORT in hex), rem_address, st, queues, tr, retrnsmt, uid,
            // timeout, inode.
            if cols.len() > 9 && cols[1].rsplit(':').next() == Some(wanted.as_str()) {
                found.push(cols[9].to_string());
            }
        }
    }
    found
}

/// Freezes a process (SIGSTOP): it keeps its sockets but answers nothing, like a long GC pause.
pub fn pause(pid: u32) -> Result<(), HarnessError> {
    send_signal(pid, "STOP")
}

/// Lets a paused process run again (SIGCONT).
pub fn resume(pid: u32) -> Result<(), HarnessError> {
    send_signal(pid, "CONT")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server behind a one-member network: pass works, blackhole stalls, heal closes the
    /// connection that lost bytes, and a new connection passes again.
    #[tokio::test]
    async fn proxy_passes_blackholes_and_heals() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let mut net = PeerNetwork::new(1);
        let addr = net.add_proxy(echo_addr).await.unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 5];
        c.write_all(b"hello").await.unwrap();
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");

        net.isolate(0);
        tokio::task::yield_now().await;
        c.write_all(b"lost!").await.unwrap();
        let stalled = tokio::time::timeout(Duration::from_millis(300), c.read(&mut buf)).await;
        assert!(stalled.is_err(), "a blackholed connection answered");

        net.heal();
        let closed = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf)).await.expect("not closed");
        assert!(matches!(closed, Ok(0) | Err(_)), "a connection that lost bytes stayed open after heal");

        net.set(0, LinkMode::Delay(Duration::from_millis(200)));
        let mut c = TcpStream::connect(addr).await.unwrap();
        let start = std::time::Instant::now();
        c.write_all(b"again").await.unwrap();
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"again");
        assert!(start.elapsed() >= Duration::from_millis(200), "delay not applied");
    }

    /// A connection suffers the faults of both ends: isolating the dialler blocks its connections
    /// into healthy members too, which is what makes a partition two-way.
    #[test]
    fn connection_mode_combines_both_ends() {
        let d = |ms| LinkMode::Delay(Duration::from_millis(ms));
        let modes = [LinkMode::Pass, LinkMode::Blackhole, d(50), d(80)];
        assert_eq!(effective(&modes, 0, Some(1)), LinkMode::Blackhole);
        assert_eq!(effective(&modes, 1, Some(0)), LinkMode::Blackhole);
        assert_eq!(effective(&modes, 0, None), LinkMode::Pass);
        assert_eq!(effective(&modes, 0, Some(2)), d(50));
        assert_eq!(effective(&modes, 2, Some(3)), d(80));
        assert_eq!(effective(&modes, 2, Some(1)), LinkMode::Blackhole);
    }

    /// The proxy can tell which process dialled: our own test process owns its client socket.
    #[tokio::test]
    async fn source_port_maps_to_owning_process() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let port = c.local_addr().unwrap().port();
        let me = std::process::id();
        assert_eq!(member_owning_port(port, &[None, Some(me)]), Some(1));
        assert_eq!(member_owning_port(port, &[Some(1)]), None);
    }
}
