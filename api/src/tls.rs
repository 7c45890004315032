//! Transport security of the node API: mutual TLS between its clients (the operator) and
//! every node's datapath (the server), under one CA that Ferrite makes itself.
//!
//! - [`Pki::generate`] makes the CA, one server certificate for the nodes (DNS name
//!   [`NODE_SERVER_NAME`], which clients verify whatever address they dial) and one client
//!   certificate for the operator. The operator keeps them in a Secret
//!   (`ferrite-node-api-tls`, keys [`CA_FILE`], [`NODE_CERT_FILE`], ...), the datapath pods
//!   mount the node's three files; tests write them to a folder ([`Pki::write_dir`]).
//! - [`server_tls`]: the datapath's `--grpc-tls-dir`: its certificate and key, and the CA
//!   every client certificate must chain to (a client without one is refused in the
//!   handshake).
//! - [`ClientPem::tls`]: a client's side: the CA that the node's certificate must chain to,
//!   and its own certificate.
//!
//! All nodes share the server certificate: holding it proves "a Ferrite node", not which
//! one; the threat model in `docs/security.md` says what that means.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The name in every node's server certificate; clients verify it instead of the address.
pub const NODE_SERVER_NAME: &str = "ferrite-node";
/// The CA certificate (PEM).
pub const CA_FILE: &str = "ca.crt";
/// The nodes' server certificate (PEM).
pub const NODE_CERT_FILE: &str = "node.crt";
/// The nodes' server key (PEM, PKCS#8).
pub const NODE_KEY_FILE: &str = "node.key";
/// The operator's client certificate (PEM).
pub const CLIENT_CERT_FILE: &str = "operator.crt";
/// The operator's client key (PEM, PKCS#8).
pub const CLIENT_KEY_FILE: &str = "operator.key";

/// Why TLS material could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Generating a key or certificate failed.
    #[error("generating node API certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{0}")]
    Invalid(String),
}

/// The CA and the two certificates (all PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct Pki {
    /// CA certificate.
    pub ca_cert: String,
    /// The nodes' server certificate.
    pub node_cert: String,
    /// The nodes' server key.
    pub node_key: String,
    /// The operator's client certificate.
    pub client_cert: String,
    /// The operator's client key.
    pub client_key: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("ca_cert", &self.ca_cert)
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// A new CA with a server certificate for the nodes and a client certificate for the
    /// operator (ECDSA P-256 keys).
    pub fn generate() -> Result<Pki, TlsError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.distinguished_name
            .push(DnType::CommonName, "ferrite node API CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
            let mut p = CertificateParams::new(names)?;
            p.distinguished_name.push(DnType::CommonName, cn);
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![usage];
            p.use_authority_key_identifier_extension = true;
            let key = KeyPair::generate()?;
            let cert = p.signed_by(&key, &issuer)?;
            Ok::<_, rcgen::Error>((cert.pem(), key.serialize_pem()))
        };
        let (node_cert, node_key) = leaf(
            vec![NODE_SERVER_NAME.to_string()],
            NODE_SERVER_NAME,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert, client_key) = leaf(
            Vec::new(),
            "ferrite-operator",
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        Ok(Pki {
            ca_cert: ca_cert.pem(),
            node_cert,
            node_key,
            client_cert,
            client_key,
        })
    }

    /// The files by name, as a Secret's data holds them.
    pub fn files(&self) -> [(&'static str, &str); 5] {
        [
            (CA_FILE, &self.ca_cert),
            (NODE_CERT_FILE, &self.node_cert),
            (NODE_KEY_FILE, &self.node_key),
            (CLIENT_CERT_FILE, &self.client_cert),
            (CLIENT_KEY_FILE, &self.client_key),
        ]
    }

    /// Writes every file into `dir` (keys readable by the owner only).
    pub fn write_dir(&self, dir: &Path) -> Result<(), TlsError> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        for (name, text) in self.files() {
            let path = dir.join(name);
            let mode = if name.ends_with(".key") { 0o600 } else { 0o644 };
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&path)
                .map_err(|e| file_err(&path, e))?;
            std::io::Write::write_all(&mut f, text.as_bytes()).map_err(|e| file_err(&path, e))?;
        }
        Ok(())
    }

    /// The operator's side of the PKI.
    pub fn client(&self) -> ClientPem {
        ClientPem {
            ca_cert: self.ca_cert.clone(),
            cert: self.client_cert.clone(),
            key: self.client_key.clone(),
        }
    }
}

fn file_err(path: &Path, source: std::io::Error) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        source,
    }
}

fn read_pem(dir: &Path, name: &str) -> Result<String, TlsError> {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).map_err(|e| file_err(&path, e))?;
    if !text.contains("-----BEGIN ") {
        return Err(TlsError::Invalid(format!(
            "{} holds no PEM block",
            path.display()
        )));
    }
    Ok(text)
}

/// The server side for the datapath: `dir` holds [`CA_FILE`], [`NODE_CERT_FILE`] and
/// [`NODE_KEY_FILE`]; clients must present a certificate signed by the CA.
pub fn server_tls(dir: &Path) -> Result<ServerTlsConfig, TlsError> {
    let ca = read_pem(dir, CA_FILE)?;
    let cert = read_pem(dir, NODE_CERT_FILE)?;
    let key = read_pem(dir, NODE_KEY_FILE)?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(ca))
        .client_auth_optional(false))
}

/// A client's TLS material (PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientPem {
    /// The CA the node's certificate must chain to.
    pub ca_cert: String,
    /// The client certificate.
    pub cert: String,
    /// Its key.
    pub key: String,
}

impl std::fmt::Debug for ClientPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPem")
            .field("ca_cert", &self.ca_cert)
            .finish_non_exhaustive()
    }
}

impl ClientPem {
    /// Reads [`CA_FILE`], [`CLIENT_CERT_FILE`] and [`CLIENT_KEY_FILE`] from `dir`.
    pub fn from_dir(dir: &Path) -> Result<ClientPem, TlsError> {
        Ok(ClientPem {
            ca_cert: read_pem(dir, CA_FILE)?,
            cert: read_pem(dir, CLIENT_CERT_FILE)?,
            key: read_pem(dir, CLIENT_KEY_FILE)?,
        })
    }

    /// The tonic client configuration: verify the node as [`NODE_SERVER_NAME`] under the
    /// CA, present the client certificate.
    pub fn tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .domain_name(NODE_SERVER_NAME)
            .ca_certificate(Certificate::from_pem(&self.ca_cert))
            .identity(Identity::from_pem(&self.cert, &self.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pki_round_trips_through_a_folder() {
        let pki = Pki::generate().expect("generate");
        assert!(pki.ca_cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki.node_key.contains("PRIVATE KEY"));
        assert_ne!(pki.node_cert, pki.client_cert);
        let dir = std::env::temp_dir().join(format!("ferrite-tls-test-{}", std::process::id()));
        pki.write_dir(&dir).expect("write");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(NODE_KEY_FILE))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "keys are private");
        assert_eq!(ClientPem::from_dir(&dir).expect("client"), pki.client());
        assert!(server_tls(&dir).is_ok());
        std::fs::write(dir.join(CA_FILE), "garbage").expect("overwrite");
        assert!(matches!(server_tls(&dir), Err(TlsError::Invalid(_))));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(
            ClientPem::from_dir(&dir),
            Err(TlsError::File { .. })
        ));
    }
}
