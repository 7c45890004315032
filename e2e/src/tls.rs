//! The node API's mutual TLS in tests, as the chart sets it up: one CA per test process
//! ([`ferrite_api::tls::Pki`]) written once into a folder that every datapath
//! (`--grpc-tls-dir`) and operator (`--node-tls-dir`) of the process uses, and TLS channels
//! for the tests' own node API calls.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ferrite_api::node::v1 as pb;
use ferrite_api::node::v1::node_client::NodeClient;
use ferrite_api::tls::{ClientPem, Pki};
use tonic::transport::{Channel, Endpoint};

/// The folder holding the CA and both certificates (`ca.crt`, `node.*`, `operator.*`).
pub fn pki_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ferrite-e2e-pki-{}", std::process::id()));
        Pki::generate()
            .and_then(|p| p.write_dir(&dir))
            .unwrap_or_else(|e| panic!("node API PKI: {e}"));
        dir
    })
}

/// A channel to the node API at `url`: mutual TLS for `https://`, plain for `http://`.
pub async fn channel(url: &str) -> Result<Channel, String> {
    let mut ep = Endpoint::from_shared(url.to_string()).map_err(|e| format!("{url}: {e}"))?;
    if url.starts_with("https://") {
        let pem = ClientPem::from_dir(pki_dir()).map_err(|e| e.to_string())?;
        ep = ep
            .tls_config(pem.tls())
            .map_err(|e| format!("{url}: {e}"))?;
    }
    ep.connect()
        .await
        .map_err(|e| format!("connecting to {url}: {e}"))
}

/// Compares a volume's replicas on the node serving it (node API `CompareVolume`).
pub async fn compare(url: &str, volume: &str) -> Result<pb::CompareVolumeResponse, String> {
    let mut c = NodeClient::new(channel(url).await?);
    c.compare_volume(pb::CompareVolumeRequest {
        uuid: volume.into(),
    })
    .await
    .map(|r| r.into_inner())
    .map_err(|s| format!("CompareVolume {volume}: {s:?}"))
}
