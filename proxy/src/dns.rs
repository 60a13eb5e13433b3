//! Cluster DNS: the node agent answers pods' queries for `cluster.local` names on the node's
//! gateway address, over UDP and TCP.
//!
//! Names follow Kubernetes: `NAME.NS.svc.cluster.local` for services (the cluster IP, or the ready
//! endpoints of a headless service) and `A-B-C-D.NS.pod.cluster.local` for pods. The table is built
//! from a model snapshot by a pure function and swapped in through a watch channel; the answer to
//! one query is another pure function, so sockets only move bytes.

use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{Instrument, debug, debug_span};

use crate::model::{ClusterState, Endpoint, Model, NamespacedName, ObjectKey, Service};

/// The zone this server is authoritative for.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// TTL of every answer: short, so pods see service changes within seconds.
pub const TTL: u32 = 5;
/// Largest UDP answer without EDNS (RFC 1035).
const UDP_PLAIN_MAX: usize = 512;
/// Largest UDP answer we send with EDNS, the DNS flag day 2020 value that avoids fragmentation.
const UDP_EDNS_MAX: u16 = 1232;
/// A TCP client idle this long between queries is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(30);
/// Attempts to find an ephemeral port free for both UDP and TCP.
const EPHEMERAL_ATTEMPTS: usize = 32;

/// Why the DNS server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("binding DNS {transport} socket on {addr}")]
    Bind {
        transport: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("reading the local address of the DNS {transport} socket bound for {addr}")]
    LocalAddr {
        transport: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

// === impl DnsTable ===

/// Every cluster name this node answers, lowercased without the trailing dot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsTable {
    names: imbl::HashMap<String, Vec<Ipv4Addr>>,
    /// Model revision the table was built from; used as the SOA serial.
    revision: u64,
}

fn service_name(svc: &Service) -> String {
    format!("{}.{}.svc.{CLUSTER_DOMAIN}", svc.name, svc.namespace).to_ascii_lowercase()
}

fn pod_name(ep: &Endpoint) -> String {
    let dashed = ep.ip.to_string().replace('.', "-");
    format!("{dashed}.{}.pod.{CLUSTER_DOMAIN}", ep.namespace).to_ascii_lowercase()
}

/// What the table knows about one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The name exists; the list is empty for a headless service without ready endpoints.
    Found(Vec<Ipv4Addr>),
    /// Inside `cluster.local` but not a known service or pod.
    NoSuchName,
    /// Outside `cluster.local`.
    NotOurs,
}

impl DnsTable {
    /// Builds the service and pod records of `state`.
    pub fn from_cluster(state: &ClusterState) -> DnsTable {
        Self::from_model(&Model::from_state(state.clone()))
    }

    /// Builds the service and pod records of `model`.
    pub fn from_model(model: &Model) -> DnsTable {
        let mut t = DnsTable {
            names: imbl::HashMap::new(),
            revision: model.source_revision,
        };
        for svc in model.services.values() {
            t.set_service(model, svc);
        }
        for ep in model.endpoints.values() {
            t.names.insert(pod_name(ep), vec![ep.ip]);
        }
        t
    }

    /// The table of `model`, given that this one was built from `prev` and `changes` are the
    /// keys that differ: only the names they touch are recomputed.
    pub fn updated(&self, prev: &Model, model: &Model, changes: &BTreeSet<ObjectKey>) -> DnsTable {
        let mut t = self.clone();
        t.revision = model.source_revision;
        let mut services: BTreeSet<&NamespacedName> = BTreeSet::new();
        // Old names go first: within one batch a pod may take an address another gave up.
        for key in changes {
            match key {
                ObjectKey::Endpoint(k) => {
                    if let Some(e) = prev.endpoints.get(k) {
                        t.names.remove(&pod_name(e));
                    }
                }
                ObjectKey::Service(k) => {
                    if let Some(old) = prev.services.get(k) {
                        t.names.remove(&service_name(old));
                    }
                }
                _ => {}
            }
        }
        for key in changes {
            match key {
                ObjectKey::Endpoint(k) => {
                    let old = prev.endpoints.get(k);
                    let new = model.endpoints.get(k);
                    if let Some(e) = new {
                        t.names.insert(pod_name(e), vec![e.ip]);
                    }
                    // Headless services list their ready pods.
                    let lo = (k.0.clone(), String::new());
                    for (sk, svc) in model.services.range(lo..) {
                        if sk.0 != k.0 {
                            break;
                        }
                        let selects = |e: Option<&Arc<Endpoint>>| e.is_some_and(|e| svc.selects(e));
                        if svc.cluster_ip.is_unspecified() && (selects(old) || selects(new)) {
                            services.insert(sk);
                        }
                    }
                }
                ObjectKey::Service(k) => {
                    services.insert(k);
                }
                _ => {}
            }
        }
        for k in services {
            if let Some(svc) = model.services.get(k) {
                t.set_service(model, svc);
            }
        }
        t
    }

    fn set_service(&mut self, model: &Model, svc: &Service) {
        let ips = if svc.cluster_ip.is_unspecified() {
            // Headless (`clusterIP: None`): answer with the ready pods behind it.
            let lo = (svc.namespace.clone(), String::new());
            let mut ips: Vec<Ipv4Addr> = model
                .endpoints
                .range(lo..)
                .take_while(|(k, _)| k.0 == svc.namespace)
                .map(|(_, e)| e)
                .filter(|ep| ep.ready && svc.selects(ep))
                .map(|ep| ep.ip)
                .collect();
            ips.sort_unstable();
            ips.dedup();
            ips
        } else {
            vec![svc.cluster_ip]
        };
        self.names.insert(service_name(svc), ips);
    }

    /// Looks `name` up, ignoring case and an optional trailing dot.
    pub fn lookup(&self, name: &str) -> Lookup {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let ours = name == CLUSTER_DOMAIN
            || name
                .strip_suffix(CLUSTER_DOMAIN)
                .is_some_and(|head| head.ends_with('.'));
        if !ours {
            return Lookup::NotOurs;
        }
        match self.names.get(&name) {
            Some(ips) => Lookup::Found(ips.clone()),
            None => Lookup::NoSuchName,
        }
    }
}

// === answering ===

/// Answers one query message; `None` for messages that get no reply (responses, garbage).
fn answer(table: &DnsTable, req: &Message) -> Option<Message> {
    if req.metadata.message_type != MessageType::Query {
        // Never answer a response: two servers could bounce messages forever.
        return None;
    }
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata = Metadata::response_from_request(&req.metadata);
    if req.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_EDNS_MAX);
        resp.set_edns(edns);
    }
    if req.metadata.op_code != OpCode::Query {
        resp.metadata.response_code = ResponseCode::NotImp;
        return Some(resp);
    }
    let [query] = req.queries.as_slice() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return Some(resp);
    };
    resp.add_query(query.clone());
    if query.query_class() != DNSClass::IN {
        resp.metadata.response_code = ResponseCode::NotImp;
        return Some(resp);
    }
    let name = query.name();
    match table.lookup(&name.to_ascii()) {
        Lookup::NotOurs => {
            // The lab has no upstream resolver to forward to, so outside names are refused
            // rather than left to time out.
            resp.metadata.response_code = ResponseCode::Refused;
        }
        Lookup::NoSuchName => {
            resp.metadata.authoritative = true;
            resp.metadata.response_code = ResponseCode::NXDomain;
            resp.add_authority(soa(table)?);
        }
        Lookup::Found(ips) => {
            resp.metadata.authoritative = true;
            let wants_a = matches!(query.query_type(), RecordType::A | RecordType::ANY);
            if wants_a && !ips.is_empty() {
                for ip in ips {
                    resp.add_answer(Record::from_rdata(name.clone(), TTL, RData::A(A(ip))));
                }
            } else {
                // NOERROR with no data (e.g. AAAA): the SOA lets resolvers cache the absence.
                resp.add_authority(soa(table)?);
            }
        }
    }
    Some(resp)
}

/// The zone's SOA, sent with negative answers so resolvers cache them for [`TTL`] seconds.
fn soa(table: &DnsTable) -> Option<Record> {
    let zone = Name::from_ascii(format!("{CLUSTER_DOMAIN}.")).ok()?;
    let mname = Name::from_ascii(format!("ns.dns.{CLUSTER_DOMAIN}.")).ok()?;
    let rname = Name::from_ascii(format!("hostmaster.{CLUSTER_DOMAIN}.")).ok()?;
    // Serial arithmetic wraps at 2^32 anyway (RFC 1982), so truncating the revision is fine.
    let serial = table.revision as u32;
    let soa = SOA::new(mname, rname, serial, 7200, 1800, 86400, TTL);
    Some(Record::from_rdata(zone, TTL, RData::SOA(soa)))
}

/// Decodes `request`, answers it and encodes the reply; over UDP a reply larger than the client
/// accepts is cut to its question with the TC bit, so the client retries over TCP.
fn respond(table: &DnsTable, request: &[u8], over_udp: bool) -> Option<Vec<u8>> {
    let req = Message::from_vec(request).ok()?;
    let resp = answer(table, &req)?;
    let bytes = resp.to_vec().ok()?;
    let limit = match &req.edns {
        _ if !over_udp => usize::MAX,
        Some(edns) => usize::from(edns.max_payload().min(UDP_EDNS_MAX)).max(UDP_PLAIN_MAX),
        None => UDP_PLAIN_MAX,
    };
    if bytes.len() <= limit {
        return Some(bytes);
    }
    resp.truncate().to_vec().ok()
}

// === impl DnsServer ===

/// A bound DNS server: one UDP socket and one TCP listener on the same address.
#[derive(Debug)]
pub struct DnsServer {
    udp: UdpSocket,
    tcp: TcpListener,
    addr: SocketAddr,
}

impl DnsServer {
    /// Binds UDP and TCP on `addr`; port 0 picks one ephemeral port free for both.
    pub async fn bind(addr: SocketAddr) -> Result<Self, DnsError> {
        let bind_err = |transport, addr| {
            move |source| DnsError::Bind {
                transport,
                addr,
                source,
            }
        };
        if addr.port() != 0 {
            let udp = UdpSocket::bind(addr).await.map_err(bind_err("UDP", addr))?;
            let tcp = TcpListener::bind(addr)
                .await
                .map_err(bind_err("TCP", addr))?;
            return Ok(Self { udp, tcp, addr });
        }
        let mut last = None;
        for _ in 0..EPHEMERAL_ATTEMPTS {
            let udp = UdpSocket::bind(addr).await.map_err(bind_err("UDP", addr))?;
            let bound = udp.local_addr().map_err(|source| DnsError::LocalAddr {
                transport: "UDP",
                addr,
                source,
            })?;
            match TcpListener::bind(bound).await {
                Ok(tcp) => {
                    return Ok(Self {
                        udp,
                        tcp,
                        addr: bound,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
                Err(e) => return Err(bind_err("TCP", bound)(e)),
            }
        }
        let source = last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse));
        Err(bind_err("TCP", addr)(source))
    }

    /// The address both sockets are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers queries from the latest table until the future is dropped.
    pub async fn serve(self, table: watch::Receiver<Arc<DnsTable>>) {
        let Self { udp, tcp, addr } = self;
        let span = debug_span!("dns", %addr);
        futures::future::join(serve_udp(udp, table.clone()), serve_tcp(tcp, table))
            .instrument(span)
            .await;
    }
}

async fn serve_udp(socket: UdpSocket, table: watch::Receiver<Arc<DnsTable>>) {
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(error) => {
                debug!(%error, "udp recv failed");
                continue;
            }
        };
        let current = table.borrow().clone();
        let Some(reply) = buf.get(..n).and_then(|q| respond(&current, q, true)) else {
            debug!(%peer, bytes = n, "ignored undecodable udp message");
            continue;
        };
        if let Err(error) = socket.send_to(&reply, peer).await {
            debug!(%error, %peer, "udp send failed");
        }
    }
}

async fn serve_tcp(listener: TcpListener, table: watch::Receiver<Arc<DnsTable>>) {
    // Owning the connection tasks here stops them when `serve` is dropped.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, peer)) => {
                let span = debug_span!("dns_tcp", %peer);
                conns.spawn(serve_tcp_conn(stream, table.clone()).instrument(span));
            }
            Err(error) => {
                // Usually EMFILE: back off instead of spinning.
                debug!(%error, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Serves length-prefixed queries (RFC 1035 §4.2.2) until EOF, error or [`TCP_IDLE`].
async fn serve_tcp_conn(mut stream: TcpStream, table: watch::Receiver<Arc<DnsTable>>) {
    let mut buf = Vec::new();
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else {
            return;
        };
        buf.resize(usize::from(len), 0);
        if stream.read_exact(&mut buf).await.is_err() {
            return;
        }
        let current = table.borrow().clone();
        let Some(reply) = respond(&current, &buf, false) else {
            debug!(bytes = len, "ignored undecodable tcp message");
            continue;
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&reply_len.to_be_bytes());
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClusterInfo, Endpoint, Labels, Service};
    use hickory_proto::op::Query;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn labels(app: &str) -> Labels {
        Labels::from([("app".to_owned(), app.to_owned())])
    }

    fn endpoint(name: &str, ip: [u8; 4], app: &str, ready: bool) -> Endpoint {
        Endpoint {
            namespace: "demo".into(),
            name: name.into(),
            node: "node-1".into(),
            ip: ip.into(),
            labels: labels(app),
            identity: 0x0001_0100,
            workload: None,
            ports: vec![],
            ready,
            cgroup_id: None,
            host_ifname: None,
        }
    }

    fn service(name: &str, ip: [u8; 4], app: &str) -> Service {
        Service {
            namespace: "demo".into(),
            name: name.into(),
            cluster_ip: ip.into(),
            ports: vec![],
            selector: labels(app),
            annotations: Default::default(),
        }
    }

    fn state() -> ClusterState {
        ClusterState {
            revision: 7,
            cluster: ClusterInfo {
                name: "lab".into(),
                id: 1,
            },
            nodes: vec![],
            namespaces: vec![],
            endpoints: vec![
                endpoint("web-1", [10, 1, 0, 5], "web", true),
                endpoint("db-1", [10, 1, 0, 6], "db", true),
                endpoint("db-2", [10, 1, 0, 7], "db", false),
            ],
            services: vec![
                service("web", [10, 96, 0, 10], "web"),
                service("db", [0, 0, 0, 0], "db"),
            ],
            policies: vec![],
        }
    }

    fn query(name: &str, rtype: RecordType) -> Message {
        let mut msg = Message::query();
        msg.add_query(Query::query(Name::from_ascii(name).expect("name"), rtype));
        msg.metadata.recursion_desired = true;
        msg
    }

    fn a_answers(msg: &Message) -> Vec<Ipv4Addr> {
        msg.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn lookup_services_and_pods() {
        let t = DnsTable::from_cluster(&state());
        let web = Lookup::Found(vec![Ipv4Addr::new(10, 96, 0, 10)]);
        assert_eq!(t.lookup("web.demo.svc.cluster.local"), web);
        assert_eq!(t.lookup("WEB.Demo.svc.cluster.local."), web);
        assert_eq!(
            t.lookup("10-1-0-5.demo.pod.cluster.local"),
            Lookup::Found(vec![Ipv4Addr::new(10, 1, 0, 5)])
        );
        // Headless: only the ready endpoint.
        assert_eq!(
            t.lookup("db.demo.svc.cluster.local"),
            Lookup::Found(vec![Ipv4Addr::new(10, 1, 0, 6)])
        );
    }

    #[test]
    fn lookup_misses() {
        let t = DnsTable::from_cluster(&state());
        for name in [
            "nope.demo.svc.cluster.local",
            "web.other.svc.cluster.local",
            "cluster.local.",
        ] {
            assert_eq!(t.lookup(name), Lookup::NoSuchName, "{name}");
        }
        for name in ["example.com", "example.com.", "notcluster.local", "web", ""] {
            assert_eq!(t.lookup(name), Lookup::NotOurs, "{name}");
        }
    }

    #[test]
    fn answer_ignores_responses_and_garbage() {
        let t = DnsTable::from_cluster(&state());
        let mut resp = query("web.demo.svc.cluster.local.", RecordType::A);
        resp.metadata.message_type = MessageType::Response;
        assert!(answer(&t, &resp).is_none());
        assert!(respond(&t, b"\x00\x01garbage", true).is_none());
        assert!(respond(&t, &[], true).is_none());
    }

    #[test]
    fn large_udp_answers_are_truncated() {
        let mut s = state();
        for i in 0..100u8 {
            s.endpoints
                .push(endpoint(&format!("db-x{i}"), [10, 2, 0, i], "db", true));
        }
        let t = DnsTable::from_cluster(&s);
        let q = query("db.demo.svc.cluster.local.", RecordType::A)
            .to_vec()
            .expect("encode");
        let udp = Message::from_vec(&respond(&t, &q, true).expect("udp reply")).expect("decode");
        assert!(udp.metadata.truncation);
        assert!(udp.answers.is_empty());
        let tcp = Message::from_vec(&respond(&t, &q, false).expect("tcp reply")).expect("decode");
        assert!(!tcp.metadata.truncation);
        assert_eq!(tcp.answers.len(), 101);
    }

    // === round trips over real sockets ===

    async fn start(t: DnsTable) -> (SocketAddr, watch::Sender<Arc<DnsTable>>) {
        let server = DnsServer::bind((Ipv4Addr::LOCALHOST, 0).into())
            .await
            .expect("bind dns");
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let (tx, rx) = watch::channel(Arc::new(t));
        tokio::spawn(server.serve(rx));
        (addr, tx)
    }

    async fn udp_query(addr: SocketAddr, msg: &Message) -> Message {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        sock.send_to(&msg.to_vec().expect("encode"), addr)
            .await
            .expect("send");
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(TIMEOUT, sock.recv_from(&mut buf))
            .await
            .expect("answer in time")
            .expect("recv");
        Message::from_vec(&buf[..n]).expect("decode answer")
    }

    async fn tcp_query(stream: &mut TcpStream, msg: &Message) -> Message {
        let bytes = msg.to_vec().expect("encode");
        stream
            .write_u16(u16::try_from(bytes.len()).expect("fits"))
            .await
            .expect("write len");
        stream.write_all(&bytes).await.expect("write");
        let len = tokio::time::timeout(TIMEOUT, stream.read_u16())
            .await
            .expect("answer in time")
            .expect("read len");
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await.expect("read");
        Message::from_vec(&buf).expect("decode answer")
    }

    #[tokio::test]
    async fn udp_answers_a_nxdomain_aaaa_refused() {
        let (addr, _tx) = start(DnsTable::from_cluster(&state())).await;

        let q = query("web.demo.svc.cluster.local.", RecordType::A);
        let a = udp_query(addr, &q).await;
        assert_eq!(a.metadata.id, q.metadata.id);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert!(a.metadata.authoritative);
        assert_eq!(a_answers(&a), [Ipv4Addr::new(10, 96, 0, 10)]);
        assert_eq!(a.answers[0].ttl, TTL);

        let nx = udp_query(addr, &query("nope.demo.svc.cluster.local.", RecordType::A)).await;
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert!(nx.metadata.authoritative);
        assert!(nx.answers.is_empty());

        let aaaa = udp_query(
            addr,
            &query("web.demo.svc.cluster.local.", RecordType::AAAA),
        )
        .await;
        assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
        assert!(aaaa.answers.is_empty());
        assert_eq!(
            aaaa.authorities.first().map(|r| r.record_type()),
            Some(RecordType::SOA)
        );

        let out = udp_query(addr, &query("example.com.", RecordType::A)).await;
        assert_eq!(out.metadata.response_code, ResponseCode::Refused);

        // dig and glibc (with `options edns0`) send an OPT record; the answer must carry one too.
        let mut q = query("web.demo.svc.cluster.local.", RecordType::A);
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        q.set_edns(edns);
        let a = udp_query(addr, &q).await;
        assert_eq!(a_answers(&a), [Ipv4Addr::new(10, 96, 0, 10)]);
        assert_eq!(a.edns.as_ref().map(Edns::max_payload), Some(UDP_EDNS_MAX));
    }

    #[tokio::test]
    async fn garbage_is_ignored_and_server_keeps_answering() {
        let (addr, _tx) = start(DnsTable::from_cluster(&state())).await;
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind");
        for junk in [
            &b""[..],
            b"\x12",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        ] {
            sock.send_to(junk, addr).await.expect("send");
        }
        let a = udp_query(
            addr,
            &query("10-1-0-5.demo.pod.cluster.local.", RecordType::A),
        )
        .await;
        assert_eq!(a_answers(&a), [Ipv4Addr::new(10, 1, 0, 5)]);
    }

    #[tokio::test]
    async fn tcp_answers_with_length_framing() {
        let (addr, _tx) = start(DnsTable::from_cluster(&state())).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let a = tcp_query(
            &mut stream,
            &query("web.demo.svc.cluster.local.", RecordType::A),
        )
        .await;
        assert_eq!(a_answers(&a), [Ipv4Addr::new(10, 96, 0, 10)]);
        // Same connection, second query.
        let nx = tcp_query(
            &mut stream,
            &query("nope.demo.svc.cluster.local.", RecordType::A),
        )
        .await;
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    }

    #[tokio::test]
    async fn table_updates_are_served() {
        let (addr, tx) = start(DnsTable::from_cluster(&state())).await;
        let mut s = state();
        s.services.push(service("api", [10, 96, 0, 20], "api"));
        tx.send(Arc::new(DnsTable::from_cluster(&s)))
            .expect("server alive");
        let a = udp_query(addr, &query("api.demo.svc.cluster.local.", RecordType::A)).await;
        assert_eq!(a_answers(&a), [Ipv4Addr::new(10, 96, 0, 20)]);
    }

    #[tokio::test]
    async fn bind_error_names_the_address() {
        let taken = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = DnsServer::bind(addr).await.expect_err("address is taken");
        assert!(
            matches!(&err, DnsError::Bind { addr: a, .. } if *a == addr),
            "{err:?}"
        );
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        assert!(std::error::Error::source(&err).is_some());
    }

    /// A client that shares no code with the server: Python's socket module and a query built
    /// byte by byte.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn python_client_resolves_a_service() {
        const SCRIPT: &str = r#"
import socket, struct, sys
host, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
q += struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(q, (host, port))
r, _ = s.recvfrom(4096)
ident, flags, qd, an = struct.unpack(">HHHH", r[:8])
print(hex(ident), flags & 0xF, (flags >> 10) & 1, an, socket.inet_ntoa(r[-4:]) if an else "-")
"#;
        let (addr, _tx) = start(DnsTable::from_cluster(&state())).await;
        let out = tokio::process::Command::new("python3")
            .args([
                "-c",
                SCRIPT,
                &addr.ip().to_string(),
                &addr.port().to_string(),
            ])
            .arg("web.demo.svc.cluster.local")
            .output()
            .await
            .expect("run python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // id, rcode NOERROR, AA set, one answer, the cluster IP.
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "0x4242 0 1 1 10.96.0.10"
        );
    }
}
