//! A throwaway PostgreSQL server for tests and benchmarks (feature `postgres-server`).
//!
//! [`TestServer::start`] runs `initdb` and `pg_ctl` from the machine's PostgreSQL server
//! binaries on a new temporary directory, listening only on a Unix socket inside it, with
//! `fsync` on (durability is what the tests are about). PostgreSQL refuses to run as root, so
//! when the tests run as root the server runs as the `postgres` user (or `nobody`) through
//! `runuser`. The server stops, and its directory is removed, when the `TestServer` is
//! dropped, and also when the process that started it ends in any way (even by SIGKILL, or by
//! a signal to its whole process group): a small watchdog process, in a group of its own,
//! waits for its parent's end of a pipe to close.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The superuser the test cluster is created with.
pub const TEST_USER: &str = "fsm";

/// Why a test server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// No PostgreSQL server binaries (`initdb`, `pg_ctl`, `postgres`) were found.
    #[error("no PostgreSQL server binaries found (looked in $FSM_PG_BINDIR, /usr/lib/postgresql/*/bin and $PATH); install them, for example `apt-get install postgresql`")]
    NoBinaries,
    /// A step (initdb, pg_ctl, creating the directory) failed.
    #[error("{step} failed: {detail}")]
    Step {
        /// What was being done.
        step: &'static str,
        /// What went wrong, with the tool's output.
        detail: String,
    },
}

fn step(step: &'static str, detail: impl fmt::Display) -> ServerError {
    ServerError::Step {
        step,
        detail: detail.to_string(),
    }
}

/// A throwaway PostgreSQL server of its own, for tests and benchmarks.
///
/// [`TestServer::start`] runs `initdb` and `pg_ctl` from the machine's PostgreSQL server
/// binaries ([`find_binaries`]) on a new temporary directory, listening only on a Unix socket
/// inside it, with `fsync` on. PostgreSQL refuses to run as root, so under root the server
/// runs as the `postgres` user (or `nobody`) through `runuser`. The server stops and its
/// directory is removed when the `TestServer` is dropped, and also when the process that
/// started it ends in any way, even by SIGKILL: a watchdog process waits for its end of a
/// pipe to close. [`TestServer::shared`] is one server per process for many tests, each
/// using a schema of its own.
///
/// ```no_run
/// use fsm_persist::postgres::{PostgresStore, TestServer};
///
/// let Some(server) = TestServer::shared() else {
///     return Ok(()); // not installed and not required: the skip was announced on stderr
/// };
/// let store = PostgresStore::builder(server.config()).schema("my_test").open()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TestServer {
    bin: PathBuf,
    dir: PathBuf,
    run_as: Option<String>,
    port: u16,
    /// Holding it keeps the watchdog waiting; dropping it (or dying) lets it clean up.
    watchdog: Option<(Child, ChildStdin)>,
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer")
            .field("dir", &self.dir)
            .field("bin", &self.bin)
            .field("run_as", &self.run_as)
            .finish_non_exhaustive()
    }
}

/// Whether PostgreSQL must be there: in CI, or when `FSM_REQUIRE_POSTGRES` is set.
pub fn required() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
        || std::env::var_os("FSM_REQUIRE_POSTGRES").is_some_and(|v| !v.is_empty() && v != "0")
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: `$FSM_PG_BINDIR`, the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout), or the directory of `initdb` on
/// `$PATH`.
pub fn find_binaries() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    if let Some(dir) = std::env::var_os("FSM_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return complete(&dir).then_some(dir);
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                complete(&bin).then_some((v, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return Some(bin);
        }
    }
    std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).find(|dir| complete(dir)))
}

/// The user to run the server as when running as root: `postgres` if it exists, else `nobody`.
fn server_user() -> Option<String> {
    let me = std::fs::metadata("/proc/self").ok()?.uid();
    if me != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let has = |name: &str| passwd.lines().any(|l| l.split(':').next() == Some(name));
    Some(
        if has("postgres") {
            "postgres"
        } else {
            "nobody"
        }
        .to_owned(),
    )
}

/// The uid and gid of `user`, from /etc/passwd.
fn ids_of(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&user) && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Where a [`TestServer`] listens besides its Unix socket; see [`TestServer::start_with`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum Listen {
    /// Only the Unix socket (the default).
    #[default]
    Socket,
    /// Also TCP on 127.0.0.1 (a free port), plaintext.
    Tcp,
    /// Also TCP on 127.0.0.1 with TLS (`ssl = on`): the server's certificate chain and its
    /// private key, in PEM. Plaintext TCP connections are still accepted, so a client's
    /// refusal to go without TLS is its own.
    Tls {
        /// The certificate (chain), PEM.
        cert_pem: String,
        /// The private key, PEM.
        key_pem: String,
    },
    /// Also TCP on these addresses (for nodes in network namespaces of a test), plaintext;
    /// clients from `allow` (a CIDR) are trusted.
    Addresses {
        /// `listen_addresses`, comma-separated.
        listen: String,
        /// The clients' network, e.g. `10.201.0.0/16`.
        allow: String,
    },
}

impl TestServer {
    /// Starts a new server (initdb, configure, pg_ctl start -w). Takes a second or two.
    pub fn start() -> Result<TestServer, ServerError> {
        TestServer::start_with(Listen::Socket)
    }

    /// Starts a new server that also listens as `listen` says; [`TestServer::tcp_config`]
    /// connects over TCP.
    pub fn start_with(listen: Listen) -> Result<TestServer, ServerError> {
        let bin = find_binaries().ok_or(ServerError::NoBinaries)?;
        let run_as = server_user();
        let dir = std::env::temp_dir().join(format!(
            "fsm-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).map_err(|e| step("creating the server directory", e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| step("restricting the server directory", e))?;
        if let Some(user) = &run_as {
            let (uid, gid) =
                ids_of(user).ok_or_else(|| step("looking up the server user", user))?;
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| step("handing the server directory to its user", e))?;
        }
        let port = match listen {
            Listen::Socket => 5432,
            _ => std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| step("finding a free TCP port", e))?
                .port(),
        };
        let mut server = TestServer {
            bin,
            dir,
            run_as: run_as.clone(),
            port,
            watchdog: None,
        };
        server.watchdog = Some(server.spawn_watchdog()?);
        server.run(
            "initdb",
            &[
                "-D",
                &server.data().to_string_lossy(),
                "--username",
                TEST_USER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
                "--no-instructions",
            ],
        )?;
        let listen_on = match &listen {
            Listen::Socket => String::new(),
            Listen::Tcp | Listen::Tls { .. } => "127.0.0.1".to_owned(),
            Listen::Addresses { listen, .. } => listen.clone(),
        };
        let mut conf = format!(
            "\n# fsm-persist test server\nlisten_addresses = '{listen_on}'\nunix_socket_directories = '{}'\nport = {}\nfsync = on\nsynchronous_commit = on\nmax_connections = 200\nshared_buffers = 128MB\nlog_min_messages = warning\n",
            server.dir.display(),
            server.port
        );
        if let Listen::Tls { cert_pem, key_pem } = &listen {
            // The key must belong to the server's user and be readable by it alone.
            let owner = match &run_as {
                Some(user) => {
                    Some(ids_of(user).ok_or_else(|| step("looking up the server user", user))?)
                }
                None => None,
            };
            for (name, pem) in [("server.crt", cert_pem), ("server.key", key_pem)] {
                let path = server.dir.join(name);
                std::fs::write(&path, pem).map_err(|e| step("writing the TLS files", e))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| step("restricting the TLS files", e))?;
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                        .map_err(|e| step("handing the TLS files to the server's user", e))?;
                }
            }
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                server.dir.join("server.crt").display(),
                server.dir.join("server.key").display()
            ));
        }
        if let Listen::Addresses { allow, .. } = &listen {
            std::fs::OpenOptions::new()
                .append(true)
                .open(server.data().join("pg_hba.conf"))
                .and_then(|mut f| f.write_all(format!("host all all {allow} trust\n").as_bytes()))
                .map_err(|e| step("configuring client access", e))?;
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(server.data().join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .map_err(|e| step("configuring the server", e))?;
        server.resume()?;
        Ok(server)
    }

    /// A server shared by every caller in this process, started on first use and stopped when
    /// the process ends; `None` (after a loud message on stderr) if PostgreSQL is not installed
    /// and not [`required`]. Panics if it is required but cannot start.
    pub fn shared() -> Option<&'static TestServer> {
        static SHARED: OnceLock<Option<TestServer>> = OnceLock::new();
        SHARED
            .get_or_init(|| TestServer::start_or_skip("the shared server"))
            .as_ref()
    }

    /// Starts a server of its own; `None`, after saying loudly on stderr that `what` did not
    /// run, if PostgreSQL is not installed and not [`required`]. Panics if it is required
    /// but cannot start, or if it is installed and fails to start.
    pub fn start_or_skip(what: &str) -> Option<TestServer> {
        TestServer::start_or_skip_with(what, Listen::Socket)
    }

    /// [`TestServer::start_or_skip`] for a server that also listens as `listen` says.
    pub fn start_or_skip_with(what: &str, listen: Listen) -> Option<TestServer> {
        match TestServer::start_with(listen) {
            Ok(server) => Some(server),
            Err(ServerError::NoBinaries) if !required() => {
                eprintln!(
                    "\n==================== SKIPPED ====================\n\
                     {what}: PostgreSQL server binaries are not installed here, so the tests\n\
                     that need a real PostgreSQL DID NOT RUN. Install them (Debian:\n\
                     `apt-get install postgresql`) or set FSM_PG_BINDIR. CI sets\n\
                     FSM_REQUIRE_POSTGRES=1, which turns this into a failure.\n\
                     =================================================\n"
                );
                None
            }
            Err(e) => panic!("{what}: cannot start a PostgreSQL test server: {e}"),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// Client settings for this server's database `postgres` as its superuser.
    pub fn config(&self) -> postgres::Config {
        self.config_for("postgres")
    }

    /// Client settings for database `dbname` (create it with [`TestServer::create_database`]).
    pub fn config_for(&self, dbname: &str) -> postgres::Config {
        let mut config = postgres::Config::new();
        config
            .host_path(&self.dir)
            .port(self.port)
            .user(TEST_USER)
            .dbname(dbname)
            .connect_timeout(Duration::from_secs(5));
        config
    }

    /// Client settings for database `postgres` over TCP to `host` (127.0.0.1 for
    /// [`Listen::Tcp`] and [`Listen::Tls`]), on this server's port.
    pub fn tcp_config(&self, host: &str) -> postgres::Config {
        let mut config = postgres::Config::new();
        config
            .host(host)
            .port(self.port)
            .user(TEST_USER)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(5));
        config
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates database `name` (lower-case letters, digits and `_`).
    pub fn create_database(&self, name: &str) -> Result<(), ServerError> {
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "database names here are plain identifiers, not {name:?}"
        );
        let mut client = self
            .config()
            .connect(postgres::NoTls)
            .map_err(|e| step("connecting to the test server", e))?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .map_err(|e| step("creating a database", e))
    }

    /// Stops the server (`pg_ctl stop -m fast`: connections are terminated), keeping its data;
    /// [`TestServer::resume`] starts it again.
    pub fn pause(&self) -> Result<(), ServerError> {
        self.pg_ctl(&["stop", "-m", "fast"])
    }

    /// Starts the (stopped) server again and waits until it accepts connections.
    pub fn resume(&self) -> Result<(), ServerError> {
        let log = self.dir.join("server.log");
        self.pg_ctl(&["start", "-l", &log.to_string_lossy()])
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), ServerError> {
        let data = self.data();
        let mut all = vec!["-D", data.to_str().unwrap_or_default(), "-w", "-t", "60"];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all)
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn run(&self, tool: &'static str, args: &[&str]) -> Result<(), ServerError> {
        let out = self
            .command(tool)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| step(tool, e))?;
        if out.status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        Err(step(
            tool,
            format!(
                "{}\n{}{}\n{log}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }

    /// A shell that waits for its stdin to close (this process dropped the server or ended),
    /// then stops the server at once and removes its directory.
    fn spawn_watchdog(&self) -> Result<(Child, ChildStdin), ServerError> {
        let pg_ctl = self.bin.join("pg_ctl");
        let stop = match &self.run_as {
            Some(user) => format!(
                "runuser -u {user} -- '{}' -D '{}' -m immediate stop",
                pg_ctl.display(),
                self.data().display()
            ),
            None => format!(
                "'{}' -D '{}' -m immediate stop",
                pg_ctl.display(),
                self.data().display()
            ),
        };
        let script = format!(
            "cat >/dev/null; if [ -f '{data}/postmaster.pid' ]; then {stop} >/dev/null 2>&1; fi; rm -rf '{dir}'",
            data = self.data().display(),
            dir = self.dir.display()
        );
        // In a process group of its own: a signal to the starting process's group (a
        // terminal's Ctrl-C, `timeout`, a CI job cancelled) ends that process, which closes
        // the pipe, and must not end the watchdog with it, or the server would outlive them.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| step("starting the server's watchdog", e))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| step("starting the server's watchdog", "no stdin"))?;
        Ok((child, stdin))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some((mut child, stdin)) = self.watchdog.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}
