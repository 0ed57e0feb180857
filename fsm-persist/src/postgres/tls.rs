//! TLS between a node and PostgreSQL (feature `tls`): rustls, with the server's certificate
//! always verified, against a CA file or the system's roots.
//!
//! The talk's advice for the links of a distributed system is to run them through secure
//! tunnels. [`PostgresStore::builder_tls`](super::PostgresStore::builder_tls) and
//! `Inbox::builder_tls` (feature `cluster`) connect with
//! `sslmode=require` through a [`Tls`]: a server that offers no TLS, or whose certificate is
//! not signed by a trusted CA for the host connected to, is refused, and opening answers
//! [`OpenError::Tls`](super::OpenError::Tls) (or `InboxError::Tls`) rather than going on in
//! plaintext.
//!
//! ```no_run
//! use fsm_persist::postgres::{Ownership, PostgresStore, Tls};
//!
//! let tls = Tls::ca_file("/etc/fsm/db-ca.pem")?;
//! let config = "host=db.internal user=fsm_node dbname=orders".parse()?;
//! let store = PostgresStore::builder_tls(config, &tls)
//!     .ownership(Ownership::new("node-a"))
//!     .open()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Why a [`Tls`] could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The CA file could not be read or holds no PEM certificate.
    #[error("CA file {path}: {problem}; give a PEM file with the certificate(s) of the CA that signed the server's certificate")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        problem: String,
    },
    /// The system's certificate store gave no usable root.
    #[error("no usable root certificate in the system's store ({0}); install the CA certificates (Debian: `ca-certificates`) or use Tls::ca_file")]
    NoSystemRoots(String),
    /// rustls refused the settings.
    #[error("TLS settings refused: {0}")]
    Settings(String),
}

/// How a node verifies the database server: a rustls client configuration with its trusted
/// roots. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    connector: MakeRustlsConnect,
    roots: usize,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("roots", &self.roots).finish()
    }
}

impl Tls {
    /// Trusts the CA certificates in the PEM file at `path` (and nothing else).
    pub fn ca_file(path: impl AsRef<Path>) -> Result<Tls, TlsError> {
        let path = path.as_ref();
        let problem = |problem: String| TlsError::CaFile {
            path: path.to_owned(),
            problem,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| problem(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| problem(e.to_string()))?;
        if certs.is_empty() {
            return Err(problem("it holds no certificate".into()));
        }
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| problem(format!("a certificate is not usable as a root: {e}")))?;
        }
        Tls::with_roots(roots)
    }

    /// Trusts the system's root certificates (for a managed database whose certificate a
    /// public CA signed).
    pub fn system_roots() -> Result<Tls, TlsError> {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            return Err(TlsError::NoSystemRoots(if why.is_empty() {
                "the store is empty".into()
            } else {
                why
            }));
        }
        Tls::with_roots(roots)
    }

    /// Trusts exactly `roots`.
    pub fn with_roots(roots: RootCertStore) -> Result<Tls, TlsError> {
        let n = roots.len();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Settings(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls {
            connector: MakeRustlsConnect::new(config),
            roots: n,
        })
    }

    /// The postgres client's TLS connector, for [`PostgresStore::builder_with`]
    /// (`move || config.connect(tls.connector())`).
    ///
    /// [`PostgresStore::builder_with`]: super::PostgresStore::builder_with
    pub fn connector(&self) -> MakeRustlsConnect {
        self.connector.clone()
    }

    /// `config` with TLS required, and a function that connects with it.
    pub(crate) fn connect_fn(
        &self,
        mut config: postgres::Config,
    ) -> impl Fn() -> Result<postgres::Client, postgres::Error> + Send + Sync + 'static {
        config.ssl_mode(postgres::config::SslMode::Require);
        let connector = self.connector.clone();
        move || config.connect(connector.clone())
    }
}
