//! Test harness: real `redis-server` processes on free loopback ports, started, killed,
//! paused and restarted by the tests themselves; a Redis Cluster of such processes
//! ([`RedisCluster`]); a master with a replica under three sentinels ([`RedisSentinels`]);
//! servers that speak TLS only, with certificates made at test time ([`TestCerts`]).
//! Nothing here ever connects to a Redis it did not start.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process on `127.0.0.1:<port>`, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: PathBuf,
    extra: Vec<String>,
    /// The port speaks TLS only (`--port 0 --tls-port <port>`), with the certificates in
    /// this folder.
    tls: Option<PathBuf>,
}

/// Runs one command on a plain redis-rs connection (for checking what the SDK wrote).
async fn raw_query<T: redis::FromRedisValue>(
    mut conn: impl redis::aio::ConnectionLike + Send,
    cmd: &redis::Cmd,
) -> T {
    cmd.query_async(&mut conn)
        .await
        .expect("command on the test redis")
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// The options of a TLS-only server with the certificates of `certs`.
fn tls_args(certs: &TestCerts, client_auth: bool) -> Vec<String> {
    vec![
        "--tls-cert-file".into(),
        certs.path("server.pem"),
        "--tls-key-file".into(),
        certs.path("server.key"),
        "--tls-ca-cert-file".into(),
        certs.path("ca.pem"),
        "--tls-auth-clients".into(),
        if client_auth { "yes" } else { "no" }.into(),
    ]
}

fn redis_server_binary() -> String {
    std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into())
}

impl RedisServer {
    /// Starts a server with no persistence.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra command-line options (`["--requirepass", "x"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_inner(extra, None)
    }

    /// Starts a server that accepts TLS only, on its port, with the server certificate of
    /// `certs`; `client_auth` makes it require a client certificate signed by the CA.
    pub fn start_tls(certs: &TestCerts, client_auth: bool, extra: &[&str]) -> Self {
        let mut args = tls_args(certs, client_auth);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start_inner(&args, Some(certs.dir.clone()))
    }

    fn start_inner(extra: &[&str], tls: Option<PathBuf>) -> Self {
        Self::try_start_inner(extra, tls.clone())
            .or_else(|| Self::try_start_inner(extra, tls.clone()))
            .or_else(|| Self::try_start_inner(extra, tls))
            .expect("redis-server did not start on three free ports")
    }

    /// Starts a server on a free port; `None` when it exits before it is ready (another
    /// process took the port between the check and the bind).
    fn try_start_inner(extra: &[&str], tls: Option<PathBuf>) -> Option<Self> {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("cache-sdk-redis-{}-{}", std::process::id(), port));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut server = RedisServer {
            port,
            child: None,
            dir,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            tls,
        };
        server.try_spawn().then_some(server)
    }

    /// As [`RedisServer::start_with`], but `None` when the server exits before it is ready
    /// (for example when a port given in `extra` is taken).
    pub fn try_start_with(extra: &[&str]) -> Option<Self> {
        Self::try_start_inner(extra, None)
    }

    /// As [`RedisServer::start_tls`], but `None` when the server exits before it is ready.
    pub fn try_start_tls(certs: &TestCerts, client_auth: bool, extra: &[&str]) -> Option<Self> {
        let mut args = tls_args(certs, client_auth);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::try_start_inner(&args, Some(certs.dir.clone()))
    }

    fn spawn(&mut self) {
        assert!(
            self.try_spawn(),
            "redis-server on port {} did not start{}",
            self.port,
            if self.tls.is_some() {
                " (TLS needs a redis-server built with TLS, as Debian's is)"
            } else {
                ""
            }
        );
    }

    fn try_spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let mut cmd = Command::new(redis_server_binary());
        if self.tls.is_some() {
            cmd.args(["--port", "0", "--tls-port", &port]);
        } else {
            cmd.args(["--port", &port]);
        }
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &self.dir.to_string_lossy()])
            .args(["--loglevel", "warning"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "could not start redis-server ({e}); install it (Debian: apt-get install -y redis-server) \
                     or run scripts/test.sh, which does"
                )
            });
        self.child = Some(child);
        let ready = self.wait_ready();
        if !ready {
            self.kill();
        }
        ready
    }

    /// Waits until the server answers; `false` when it exits first or takes over 10 s.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if !matches!(child.try_wait(), Ok(None)) {
                    return false;
                }
            }
            if self.tls.is_some() {
                // Listening is enough: the port is opened once the server is ready.
                if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return true;
                }
            } else if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = [0u8; 64];
                if s.write_all(b"PING\r\n").is_ok() {
                    if let Ok(n) = s.read(&mut buf) {
                        // +PONG, or -NOAUTH when a password is required: either way it is up.
                        if n > 0 && (buf[0] == b'+' || buf[0] == b'-') {
                            return true;
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, as a crash: everything in memory is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty, no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP: the server keeps its sockets but answers nothing.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args([&format!("-{sig}"), &pid.to_string()])
                .status();
        }
    }

    /// Runs `redis-cli -p <port> <args>` and returns its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(dir) = &self.tls {
            let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
            cmd.args(["--tls", "--cacert", &file("ca.pem")]).args([
                "--cert",
                &file("client.pem"),
                "--key",
                &file("client.key"),
            ]);
        }
        let out = cmd.args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A plain redis-rs connection, for checking what the SDK wrote.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis")
    }

    /// Raw bytes under `key`.
    pub async fn get_raw(&self, key: &str) -> Option<Vec<u8>> {
        raw_query(self.conn().await, redis::cmd("GET").arg(key)).await
    }

    /// Writes raw bytes under `key`.
    pub async fn set_raw(&self, key: &str, value: &[u8]) {
        raw_query::<()>(self.conn().await, redis::cmd("SET").arg(key).arg(value)).await;
    }

    /// `PTTL key` in milliseconds (-2: no key, -1: no expiry).
    pub async fn pttl(&self, key: &str) -> i64 {
        raw_query(self.conn().await, redis::cmd("PTTL").arg(key)).await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until `cond` holds, polling every 10 ms, for at most `timeout`. Returns how long it
/// took, or `None` on timeout.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond().then(|| start.elapsed())
}

/// Installs a tracing subscriber for test output (once).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A Redis Cluster of `redis-server` processes on 127.0.0.1, formed with
/// `redis-cli --cluster create`; every node is killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` masters with `replicas` replicas each and waits until the cluster
    /// is formed (`cluster_state:ok` everywhere, replicas in sync). Failure detection is
    /// fast (`--cluster-node-timeout 1000`) so failover tests stay short.
    pub fn start(masters: usize, replicas: usize) -> Self {
        Self::start_inner(masters, replicas, None)
    }

    /// As [`RedisCluster::start`], with nodes that speak TLS only, to clients and to each
    /// other (`--tls-cluster yes --tls-replication yes`), and require client certificates.
    pub fn start_tls(certs: &TestCerts, masters: usize, replicas: usize) -> Self {
        Self::start_inner(masters, replicas, Some(certs))
    }

    fn start_inner(masters: usize, replicas: usize, certs: Option<&TestCerts>) -> Self {
        let total = masters * (1 + replicas);
        let nodes: Vec<RedisServer> = (0..total)
            .map(|_| {
                (0..3)
                    .find_map(|_| start_node(certs))
                    .expect("a cluster node did not start on three free ports")
            })
            .collect();
        let cluster = RedisCluster { nodes };
        let mut create = Command::new("redis-cli");
        if let Some(certs) = certs {
            create
                .args(["--tls", "--cacert", &certs.path("ca.pem")])
                .args(["--cert", &certs.path("client.pem")])
                .args(["--key", &certs.path("client.key")]);
        }
        create
            .args(["--cluster", "create"])
            .args(cluster.seeds())
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        let (ok, output) = run_bounded(create, Duration::from_secs(30));
        assert!(ok, "redis-cli --cluster create failed: {output}");
        cluster.wait_formed(total, Duration::from_secs(30));
        cluster
    }

    fn wait_formed(&self, expected_nodes: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = self.live().all(|n| {
                let info = n.cli(&["CLUSTER", "INFO"]);
                let role = n.cli(&["ROLE"]);
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{expected_nodes}"))
                    && (role.starts_with("master")
                        || n.cli(&["INFO", "replication"])
                            .contains("master_link_status:up"))
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster did not form in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn live(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter(|n| n.child.is_some())
    }

    /// The `host:port` of every node started (the value for `REDIS_CLUSTER_NODES`).
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect()
    }

    /// The live nodes that are masters now.
    pub fn masters(&self) -> Vec<&RedisServer> {
        self.live()
            .filter(|n| n.cli(&["ROLE"]).starts_with("master"))
            .collect()
    }

    /// Kills (SIGKILL) the master that holds `key`'s slot; returns its port.
    pub fn kill_master_of(&mut self, key: &str) -> u16 {
        let slot: u16 = self
            .cli(&["CLUSTER", "KEYSLOT", key])
            .parse()
            .expect("CLUSTER KEYSLOT");
        let port = self
            .masters()
            .into_iter()
            .find(|n| owns_slot(&n.cli(&["CLUSTER", "NODES"]), slot))
            .map(RedisServer::port)
            .expect("a master for the key");
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port() == port) {
            node.kill();
        }
        port
    }

    /// Waits until a replica took over for the killed master and every live node says
    /// `cluster_state:ok` again.
    pub fn wait_failover(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self
                .live()
                .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the cluster did not fail over within {timeout:?}");
    }

    /// Runs `redis-cli -c` (following redirections) on a live node.
    pub fn cli(&self, args: &[&str]) -> String {
        let node = self.live().next().expect("a live node");
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        node.cli(&all)
    }

    /// Keys held by each live master (`DBSIZE`), in no particular order.
    pub fn keys_per_master(&self) -> Vec<u64> {
        self.masters()
            .iter()
            .map(|n| n.cli(&["DBSIZE"]).parse().unwrap_or(0))
            .collect()
    }

    /// A plain redis-rs cluster connection, for checking what the SDK wrote.
    pub async fn conn(&self) -> redis::cluster_async::ClusterConnection {
        let urls: Vec<String> = self
            .live()
            .map(|n| format!("redis://127.0.0.1:{}", n.port()))
            .collect();
        redis::cluster::ClusterClient::new(urls)
            .expect("cluster urls")
            .get_async_connection()
            .await
            .expect("connect to the test cluster")
    }

    /// Raw bytes under `key`.
    pub async fn get_raw(&self, key: &str) -> Option<Vec<u8>> {
        raw_query(self.conn().await, redis::cmd("GET").arg(key)).await
    }

    /// Writes raw bytes under `key`.
    pub async fn set_raw(&self, key: &str, value: &[u8]) {
        raw_query::<()>(self.conn().await, redis::cmd("SET").arg(key).arg(value)).await;
    }

    /// `PTTL key` in milliseconds (-2: no key, -1: no expiry).
    pub async fn pttl(&self, key: &str) -> i64 {
        raw_query(self.conn().await, redis::cmd("PTTL").arg(key)).await
    }
}

/// Starts one cluster node (TLS-only with `certs`); `None` when it exits before it is
/// ready (a port was taken meanwhile).
fn start_node(certs: Option<&TestCerts>) -> Option<RedisServer> {
    // The bus port is given explicitly: the default (port + 10000) may be taken, or above
    // 65535.
    let bus = free_port().to_string();
    let mut args = vec![
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-port",
        &bus,
        "--cluster-node-timeout",
        "1000",
        "--cluster-replica-validity-factor",
        "0",
    ];
    match certs {
        Some(certs) => {
            args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"]);
            RedisServer::try_start_tls(certs, true, &args)
        }
        None => RedisServer::try_start_with(&args),
    }
}

/// Runs a command for at most `timeout` (then kills it); returns whether it succeeded, and
/// what it printed.
fn run_bounded(mut cmd: Command, timeout: Duration) -> (bool, String) {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let out = std::env::temp_dir().join(format!(
        "cache-sdk-cmd-{}-{}.out",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let file = std::fs::File::create(&out).expect("output file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("output file"))
        .stderr(file)
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + timeout;
    let ok = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    (ok, text)
}

/// Whether the `myself` line of a `CLUSTER NODES` answer lists `slot`.
fn owns_slot(nodes: &str, slot: u16) -> bool {
    nodes
        .lines()
        .find(|l| l.contains("myself"))
        .map(|l| {
            l.split_whitespace().skip(8).any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
            })
        })
        .unwrap_or(false)
}

/// A Redis the suites run on: one server or a cluster. The methods look at Redis directly,
/// to check what the SDK wrote.
#[derive(Debug)]
pub enum RedisTarget {
    /// One `redis-server`.
    Server(RedisServer),
    /// A Redis Cluster.
    Cluster(RedisCluster),
}

impl RedisTarget {
    /// Raw bytes under `key`.
    pub async fn get_raw(&self, key: &str) -> Option<Vec<u8>> {
        match self {
            RedisTarget::Server(s) => s.get_raw(key).await,
            RedisTarget::Cluster(c) => c.get_raw(key).await,
        }
    }

    /// Writes raw bytes under `key`.
    pub async fn set_raw(&self, key: &str, value: &[u8]) {
        match self {
            RedisTarget::Server(s) => s.set_raw(key, value).await,
            RedisTarget::Cluster(c) => c.set_raw(key, value).await,
        }
    }

    /// `PTTL key` in milliseconds.
    pub async fn pttl(&self, key: &str) -> i64 {
        match self {
            RedisTarget::Server(s) => s.pttl(key).await,
            RedisTarget::Cluster(c) => c.pttl(key).await,
        }
    }

    /// Runs `redis-cli` (with `-c` on a cluster).
    pub fn cli(&self, args: &[&str]) -> String {
        match self {
            RedisTarget::Server(s) => s.cli(args),
            RedisTarget::Cluster(c) => c.cli(args),
        }
    }
}

/// Certificates made at test time in a temporary folder: a CA (`ca.pem`), a server
/// certificate for 127.0.0.1 and localhost signed by it (`server.pem`, `server.key`), a
/// client certificate signed by it (`client.pem`, `client.key`), and an unrelated CA with
/// a client certificate of its own (`other-ca.pem`, `other-client.pem`, `other-client.key`).
#[derive(Debug)]
pub struct TestCerts {
    dir: PathBuf,
}

impl TestCerts {
    /// Generates the certificates.
    pub fn generate() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "cache-sdk-certs-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("cert dir");
        let write = |name: &str, pem: String| std::fs::write(dir.join(name), pem).expect("write");

        let ca = |name: &str| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let cert = params.self_signed(&key).expect("CA cert");
            (cert.pem(), Issuer::new(params, key))
        };
        let leaf = |issuer: &Issuer<'_, KeyPair>, names: Vec<String>, server: bool| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(names).expect("params");
            params
                .distinguished_name
                .push(DnType::CommonName, if server { "server" } else { "client" });
            // A server certificate is also the client certificate of a node on the cluster bus.
            params.extended_key_usages = if server {
                vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ]
            } else {
                vec![ExtendedKeyUsagePurpose::ClientAuth]
            };
            let cert = params.signed_by(&key, issuer).expect("leaf cert");
            (cert.pem(), key.serialize_pem())
        };

        let (ca_pem, ca_issuer) = ca("cache-sdk test CA");
        write("ca.pem", ca_pem);
        let (pem, key) = leaf(
            &ca_issuer,
            vec!["127.0.0.1".into(), "localhost".into()],
            true,
        );
        write("server.pem", pem);
        write("server.key", key);
        let (pem, key) = leaf(&ca_issuer, vec!["client".into()], false);
        write("client.pem", pem);
        write("client.key", key);

        let (other_pem, other_issuer) = ca("another CA");
        write("other-ca.pem", other_pem);
        let (pem, key) = leaf(&other_issuer, vec!["client".into()], false);
        write("other-client.pem", pem);
        write("other-client.key", key);
        TestCerts { dir }
    }

    /// The path of one of the files, as a string.
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A master, a replica of it, and three sentinels monitoring them under one master name,
/// all on free loopback ports; every process is killed on drop. Failure detection is fast
/// (`down-after-milliseconds 300`, `failover-timeout 2000`) so failover tests stay short.
#[derive(Debug)]
pub struct RedisSentinels {
    master_name: String,
    /// The data nodes; the first one started as the master.
    servers: Vec<RedisServer>,
    sentinels: Vec<SentinelProcess>,
}

impl RedisSentinels {
    /// Starts the master, the replica (`--replicaof`) and three sentinels (quorum 2), and
    /// waits until the replica is in sync and every sentinel knows the replica and the two
    /// other sentinels (so that a failover can be agreed at once).
    pub fn start() -> Self {
        let master_name = "cache-sdk-test".to_owned();
        // Diskless sync without the default 5 s delay: the replica is in sync at once.
        let sync = [
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
        ];
        let master = RedisServer::start_with(&sync);
        let port = master.port().to_string();
        let mut replica_args = vec!["--replicaof", "127.0.0.1", &port];
        replica_args.extend(sync);
        let replica = RedisServer::start_with(&replica_args);
        let sentinels = (0..3)
            .map(|_| {
                (0..3)
                    .find_map(|_| SentinelProcess::try_start(&master_name, master.port()))
                    .expect("a sentinel did not start on three free ports")
            })
            .collect();
        let set = RedisSentinels {
            master_name,
            servers: vec![master, replica],
            sentinels,
        };
        set.wait_ready(Duration::from_secs(30));
        set
    }

    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let synced = self.servers[1]
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up");
            let known = self.sentinels.iter().all(|s| {
                let master = s.cli(&["SENTINEL", "MASTER", &self.master_name]);
                field(&master, "num-slaves") == Some("1")
                    && field(&master, "num-other-sentinels") == Some("2")
            });
            if synced && known {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels did not see the replica and each other in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The master's name, for `REDIS_SENTINEL_MASTER`.
    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// The sentinels' `host:port`, for `REDIS_SENTINELS`.
    pub fn sentinel_addrs(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect()
    }

    /// The master's port according to the first sentinel that answers.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let out = s.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.master_name]);
            out.lines().nth(1)?.trim().parse().ok()
        })
    }

    /// The data node on `port`.
    pub fn server(&self, port: u16) -> &RedisServer {
        self.servers
            .iter()
            .find(|s| s.port() == port)
            .expect("no data node on that port")
    }

    /// Kills (SIGKILL) the current master; returns its port.
    pub fn kill_master(&mut self) -> u16 {
        let port = self.master_port().expect("the sentinels name a master");
        if let Some(s) = self.servers.iter_mut().find(|s| s.port() == port) {
            s.kill();
        }
        port
    }

    /// Waits, polling every 5 ms, until the sentinels name a master other than `old`;
    /// returns its port and when it was first seen.
    pub async fn wait_promoted(&self, old: u16, timeout: Duration) -> (u16, Instant) {
        let deadline = Instant::now() + timeout;
        loop {
            // One sentinel answering the new address is the moment of the switch
            // (`+switch-master` is published by the leader as it names it).
            let new = self.sentinels.iter().find_map(|s| {
                let port: u16 = s
                    .query_master(&self.master_name)
                    .and_then(|(_, p)| (p != old).then_some(p))?;
                Some(port)
            });
            if let Some(port) = new {
                return (port, Instant::now());
            }
            assert!(
                Instant::now() < deadline,
                "no replica was promoted within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The value of `name` in a `SENTINEL MASTER` answer as printed by `redis-cli` (one
/// field name per line, its value on the next).
fn field<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    let mut lines = answer.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line == name {
            return lines.next();
        }
    }
    None
}

/// One `redis-server --sentinel` child process with its own generated configuration
/// (sentinels rewrite it), killed on drop.
#[derive(Debug)]
struct SentinelProcess {
    port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

impl SentinelProcess {
    /// `None` when it exits before it answers (its port was taken meanwhile).
    fn try_start(master_name: &str, master_port: u16) -> Option<Self> {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "cache-sdk-sentinel-{}-{}",
            std::process::id(),
            port
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let conf = dir.join("sentinel.conf");
        let text = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\nsentinel resolve-hostnames no\n\
             sentinel monitor {master_name} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {master_name} 300\n\
             sentinel failover-timeout {master_name} 2000\n\
             sentinel parallel-syncs {master_name} 1\n",
            dir = dir.display()
        );
        std::fs::write(&conf, text).expect("sentinel.conf");
        let child = Command::new(redis_server_binary())
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("could not start redis-server --sentinel");
        let mut sentinel = SentinelProcess {
            port,
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(child) = sentinel.child.as_mut() {
                if !matches!(child.try_wait(), Ok(None)) {
                    return None;
                }
            }
            if sentinel.cli(&["PING"]) == "PONG" {
                return Some(sentinel);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `SENTINEL get-master-addr-by-name` over a plain socket (faster than `redis-cli`
    /// when polling).
    fn query_master(&self, name: &str) -> Option<(String, u16)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_millis(200))).ok()?;
        let cmd = format!(
            "*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-name\r\n${}\r\n{name}\r\n",
            name.len()
        );
        s.write_all(cmd.as_bytes()).ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 256];
        // `*2\r\n$9\r\n127.0.0.1\r\n$5\r\n12345\r\n`: read until the 6th line ends.
        while buf.iter().filter(|b| **b == b'\n').count() < 5 {
            let n = s.read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.starts_with(b"*-1") {
                return None;
            }
        }
        let text = String::from_utf8_lossy(&buf);
        let lines: Vec<&str> = text.split("\r\n").collect();
        Some((lines.get(2)?.to_string(), lines.get(4)?.parse().ok()?))
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs each named test function of the calling file three times: against a
/// redis-server, a three-master cluster and the in-memory store. Each function takes the
/// file's own `Env { server: Option<RedisTarget> }` (`None`: memory).
#[macro_export]
macro_rules! target_suite {
    ($($name:ident),* $(,)?) => {
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::init_tracing();
                    let server = $crate::RedisServer::start();
                    super::$name(super::Env { server: Some($crate::RedisTarget::Server(server)) }).await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::init_tracing();
                    let cluster = $crate::RedisCluster::start(3, 0);
                    super::$name(super::Env { server: Some($crate::RedisTarget::Cluster(cluster)) }).await;
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::init_tracing();
                    super::$name(super::Env { server: None }).await;
                }
            )*
        }
    };
}
