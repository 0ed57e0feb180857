//! TLS between a node and PostgreSQL against real servers started by the test: one with
//! `ssl = on` and a certificate signed by a CA the test makes, one that offers no TLS. A node
//! that trusts the CA connects over TLS (the server says so); one that trusts another CA, or
//! meets a server without TLS, is refused with a typed error and sends nothing in plaintext.
#![allow(missing_docs)]

use std::time::Duration;

use fsm_core::store::{Format, MachineId, Snapshot, SnapshotStore};
use fsm_persist::postgres::{
    Claim, Inbox, InboxError, Listen, OpenError, Ownership, PostgresStore, TestServer, Tls,
    TlsError,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A CA's certificate (PEM) and the issuer to sign with.
fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

/// A server certificate for 127.0.0.1 signed by `issuer`: (certificate, key), PEM.
fn server_cert(issuer: &Issuer<'static, KeyPair>) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "fsm test server");
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn ownership() -> Ownership {
    Ownership::new("tls-node")
        .partitions(4)
        .lease(Duration::from_secs(5))
        .heartbeat(None)
        .claim(Claim::Free)
}

#[test]
fn a_node_that_requires_tls_connects_to_a_trusted_server_and_refuses_the_rest() {
    let (ca_pem, issuer) = ca("fsm test CA");
    let (cert_pem, key_pem) = server_cert(&issuer);
    let Some(server) =
        TestServer::start_or_skip_with("postgres_tls", Listen::Tls { cert_pem, key_pem })
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let tls = Tls::ca_file(&ca_file).unwrap();
    let config = server.tcp_config("127.0.0.1");

    // Trusted: the store works, and the server sees the connection encrypted.
    let store = PostgresStore::builder_tls(config.clone(), &tls)
        .schema("tls_ok")
        .ownership(ownership())
        .open()
        .unwrap();
    let id = MachineId::new("m1").unwrap();
    store
        .put(
            &id,
            None,
            &Snapshot::new("T", 1, 1, Format::Postcard, b"x").unwrap(),
        )
        .unwrap();
    assert_eq!(store.get(&id).unwrap().seq(), 1);
    let mut tls_config = config.clone();
    tls_config.ssl_mode(postgres::config::SslMode::Require);
    let mut client = tls_config.connect(tls.connector()).unwrap();
    let encrypted: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(encrypted, "the connection is not encrypted");
    // The inbox over TLS too.
    let inbox = Inbox::builder_tls(config.clone(), &tls)
        .schema("tls_ok")
        .open()
        .unwrap();
    assert_eq!(inbox.partitions(), 4);

    // Another CA: the certificate is refused, typed, before anything is sent.
    let (other_pem, _) = ca("someone else's CA");
    let other_file = dir.path().join("other.pem");
    std::fs::write(&other_file, &other_pem).unwrap();
    let wrong = Tls::ca_file(&other_file).unwrap();
    match PostgresStore::builder_tls(config.clone(), &wrong)
        .schema("tls_wrong")
        .ownership(ownership())
        .open()
    {
        Err(OpenError::Tls(message)) => {
            assert!(message.contains("certificate"), "{message}")
        }
        other => panic!("expected OpenError::Tls, got {other:?}"),
    }
    match Inbox::builder_tls(config.clone(), &wrong)
        .schema("tls_ok")
        .open()
    {
        Err(InboxError::Tls(_)) => {}
        other => panic!("expected InboxError::Tls, got {other:?}"),
    }
    // The server accepts plaintext, but nothing was written under the refused schema.
    let mut plain = config.connect(postgres::NoTls).unwrap();
    let found: Option<String> = plain
        .query_one("SELECT to_regnamespace('tls_wrong')::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(found, None);
}

#[test]
fn a_node_that_requires_tls_refuses_a_server_without_it() {
    let Some(server) = TestServer::start_or_skip_with("postgres_tls (plaintext)", Listen::Tcp)
    else {
        return;
    };
    let (ca_pem, _) = ca("fsm test CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let tls = Tls::ca_file(&ca_file).unwrap();
    let config = server.tcp_config("127.0.0.1");
    // Plaintext works for a client that does not ask for TLS ...
    assert!(config.connect(postgres::NoTls).is_ok());
    // ... and a node that requires it is refused, typed.
    match PostgresStore::builder_tls(config, &tls)
        .ownership(ownership())
        .open()
    {
        Err(e @ OpenError::Tls(_)) => {
            assert!(e.to_string().contains("ssl = on"), "{e}");
        }
        other => panic!("expected OpenError::Tls, got {other:?}"),
    }
}

#[test]
fn a_ca_file_that_is_not_pem_is_refused_with_what_to_give() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    match Tls::ca_file(&bad) {
        Err(e @ TlsError::CaFile { .. }) => assert!(e.to_string().contains("PEM"), "{e}"),
        other => panic!("expected CaFile, got {other:?}"),
    }
    assert!(matches!(
        Tls::ca_file(dir.path().join("missing.pem")),
        Err(TlsError::CaFile { .. })
    ));
}
