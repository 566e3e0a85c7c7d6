//! A throwaway local Postgres cluster, for `rekey dev` and the test harness,
//! and the creation of its database.
//!
//! Postgres refuses to run as root, so when this process is root the cluster
//! is created and run as the unprivileged `postgres` (or `nobody`) user, in a
//! directory that user owns. Binaries are found on `PATH` or under
//! `/usr/lib/postgresql/*/bin`.

use std::{
    net::TcpListener,
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// How long to wait for a fresh cluster to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a local Postgres could not be started.
#[derive(Debug, thiserror::Error)]
pub enum DevDbError {
    /// `initdb`/`pg_ctl` are not installed.
    #[error(
        "Postgres server binaries (initdb, pg_ctl) were not found on PATH or under /usr/lib/postgresql/*/bin: \
         install them (Debian/Ubuntu: `apt-get install -y postgresql`) or pass --database-url"
    )]
    NotInstalled,
    /// Running as root and no unprivileged user to run Postgres as.
    #[error(
        "running as root and no unprivileged `postgres` or `nobody` user exists to run Postgres as: create one (`useradd -r postgres`)"
    )]
    NoUser,
    /// A step failed.
    #[error("{step}: {detail}")]
    Step {
        /// What was being done.
        step: &'static str,
        /// What went wrong (the tool's output).
        detail: String,
    },
    /// The cluster did not accept a connection.
    #[error("connecting to the dev Postgres")]
    Connect(#[source] sqlx::Error),
    /// A statement failed.
    #[error(transparent)]
    Sql(sqlx::Error),
}

fn step(step: &'static str) -> impl FnOnce(std::io::Error) -> DevDbError {
    move |e| DevDbError::Step {
        step,
        detail: e.to_string(),
    }
}

/// A running throwaway cluster; stopped (fast shutdown) on drop.
#[derive(Debug)]
pub struct LocalPostgres {
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    user: Option<(u32, u32)>,
    stopped: bool,
}

/// Finds the directory holding `initdb` and `pg_ctl`.
pub fn find_bin_dir() -> Option<PathBuf> {
    let has = |d: &Path| {
        d.join("initdb").is_file() && d.join("pg_ctl").is_file() && d.join("postgres").is_file()
    };
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if has(&d) {
                return Some(d);
            }
            // Debian links initdb into /usr/local/bin but keeps postgres in the versioned dir.
            if let Ok(target) = std::fs::canonicalize(d.join("initdb"))
                && let Some(parent) = target.parent()
                && has(parent)
            {
                return Some(parent.to_path_buf());
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| has(d))
        .collect();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop()
}

fn unprivileged_user() -> Result<Option<(u32, u32)>, DevDbError> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        if let Ok(Some(u)) = nix::unistd::User::from_name(name) {
            return Ok(Some((u.uid.as_raw(), u.gid.as_raw())));
        }
    }
    Err(DevDbError::NoUser)
}

/// Creates database `name` on the server at `admin_url` unless it exists.
pub async fn ensure_database(admin_url: &str, name: &str) -> Result<(), DevDbError> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .map_err(DevDbError::Connect)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .map_err(DevDbError::Sql)?;
    if !exists {
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .map_err(DevDbError::Sql)?;
    }
    Ok(())
}

/// Picks a free loopback TCP port.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl LocalPostgres {
    /// Creates (if `dir/data` is new) and starts a cluster under `dir`.
    ///
    /// An existing cluster in `dir` is reused, so `rekey dev` keeps its
    /// inventory across runs.
    pub fn start(dir: &Path) -> Result<Self, DevDbError> {
        let bin = find_bin_dir().ok_or(DevDbError::NotInstalled)?;
        let user = unprivileged_user()?;
        std::fs::create_dir_all(dir).map_err(step("creating the state directory"))?;
        let dir = std::fs::canonicalize(dir).map_err(step("resolving the state directory"))?;
        let data = dir.join("pgdata");
        let socket_dir = dir.join("pgsock");
        std::fs::create_dir_all(&socket_dir).map_err(step("creating the socket directory"))?;
        if let Some((uid, gid)) = user {
            // The unprivileged user must be able to reach and write its directories.
            let mut p = dir.clone();
            loop {
                if let Ok(meta) = std::fs::metadata(&p) {
                    let mode = meta.permissions().mode();
                    if mode & 0o001 == 0 {
                        let _ = std::fs::set_permissions(
                            &p,
                            std::fs::Permissions::from_mode(mode | 0o001),
                        );
                    }
                }
                if !p.pop() {
                    break;
                }
            }
            nix::unistd::chown(socket_dir.as_path(), Some(uid.into()), Some(gid.into())).map_err(
                |e| DevDbError::Step {
                    step: "chown socket dir",
                    detail: e.to_string(),
                },
            )?;
        }
        let mut me = Self {
            bin,
            data,
            socket_dir,
            port: 0,
            user,
            stopped: false,
        };
        if !me.data.join("PG_VERSION").exists() {
            std::fs::create_dir_all(&me.data).map_err(step("creating the data directory"))?;
            if let Some((uid, gid)) = user {
                nix::unistd::chown(me.data.as_path(), Some(uid.into()), Some(gid.into())).map_err(
                    |e| DevDbError::Step {
                        step: "chown data dir",
                        detail: e.to_string(),
                    },
                )?;
            }
            std::fs::set_permissions(&me.data, std::fs::Permissions::from_mode(0o700))
                .map_err(step("chmod data dir"))?;
            let data = me.data.clone();
            me.run(
                "initdb",
                me.command("initdb").args(["-D"]).arg(&data).args([
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ]),
            )?;
        }
        // A cluster left running by a killed earlier run is stopped first.
        if me.data.join("postmaster.pid").exists() {
            let data = me.data.clone();
            let _ = me.run(
                "pg_ctl stop",
                me.command("pg_ctl")
                    .arg("stop")
                    .arg("-D")
                    .arg(&data)
                    .args(["-m", "immediate"]),
            );
            let _ = std::fs::remove_file(me.data.join("postmaster.pid"));
        }
        me.port = free_port().map_err(step("picking a port"))?;
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400 -c shared_buffers=256MB",
            me.port,
            me.socket_dir.display()
        );
        let data = me.data.clone();
        let log = dir.join("postgres.log");
        if let Some((uid, gid)) = user {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(step("opening the log"))?;
            drop(f);
            let _ = nix::unistd::chown(log.as_path(), Some(uid.into()), Some(gid.into()));
        }
        me.run(
            "pg_ctl start",
            me.command("pg_ctl")
                .arg("start")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "30", "-o"])
                .arg(&opts),
        )
        .map_err(|e| match e {
            DevDbError::Step { step, detail } => {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(10).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                DevDbError::Step {
                    step,
                    detail: format!("{detail}\n{}", tail.join("\n")),
                }
            }
            other => other,
        })?;
        me.wait_ready()?;
        Ok(me)
    }

    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(self.bin.join(tool));
        c.stdin(Stdio::null())
            .env("LC_ALL", "C.UTF-8")
            .env_remove("PGDATA");
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        c
    }

    fn run(&self, step: &'static str, cmd: &mut Command) -> Result<(), DevDbError> {
        let out = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| DevDbError::Step {
                step,
                detail: e.to_string(),
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(DevDbError::Step {
                step,
                detail: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            })
        }
    }

    fn wait_ready(&self) -> Result<(), DevDbError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(DevDbError::Step {
                    step: "waiting for Postgres",
                    detail: "not accepting connections after 30s".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Arranges for the server to be shut down (immediately) and `remove` to be
    /// deleted once process `pid` has exited, even if it dies without
    /// running destructors: a detached watchdog polls for it.
    pub fn stop_when_process_exits(&self, pid: u32, remove: Option<&Path>) -> std::io::Result<()> {
        let pidfile = self.data.join("postmaster.pid");
        let rm = remove
            .map(|p| format!("rm -rf '{}'", p.display()))
            .unwrap_or_default();
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
             kill -QUIT $(head -1 '{}') 2>/dev/null; sleep 1; {rm}",
            pidfile.display()
        );
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        Ok(())
    }

    /// The TCP port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for `database`, as the `postgres` superuser (trust auth).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates database `name` unless it exists (as the superuser).
    pub async fn ensure_database(&self, name: &str) -> Result<(), DevDbError> {
        ensure_database(&self.url("postgres"), name).await
    }

    /// Stops the server with `pg_ctl stop -m fast` (for outage tests; `start_again` restarts).
    pub fn stop(&mut self) -> Result<(), DevDbError> {
        let data = self.data.clone();
        self.run(
            "pg_ctl stop",
            self.command("pg_ctl")
                .arg("stop")
                .arg("-D")
                .arg(&data)
                .args(["-m", "fast", "-w"]),
        )?;
        self.stopped = true;
        Ok(())
    }

    /// Starts a stopped server again on the same port.
    pub fn start_again(&mut self) -> Result<(), DevDbError> {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400",
            self.port,
            self.socket_dir.display()
        );
        let data = self.data.clone();
        let log = self
            .data
            .parent()
            .unwrap_or(Path::new("/tmp"))
            .join("postgres.log");
        self.run(
            "pg_ctl start",
            self.command("pg_ctl")
                .arg("start")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-o"])
                .arg(&opts),
        )?;
        self.stopped = false;
        self.wait_ready()
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if !self.stopped {
            let data = self.data.clone();
            let _ = self.run(
                "pg_ctl stop",
                self.command("pg_ctl")
                    .arg("stop")
                    .arg("-D")
                    .arg(&data)
                    .args(["-m", "fast", "-w"]),
            );
        }
    }
}
