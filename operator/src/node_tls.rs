//! Where the operator's node API certificates come from: a folder (`--node-tls-dir`, e.g.
//! written by cert-manager or a test), or a Secret in the operator's namespace
//! (`--node-tls-secret`) that the operator creates with a new CA
//! ([`ferrite_api::tls::Pki::generate`]) when it does not exist yet. The datapath pods mount
//! the same Secret's `ca.crt`, `node.crt` and `node.key`; the operator reads `ca.crt`,
//! `operator.crt` and `operator.key`. Two operators starting at once: the second `create`
//! fails with 409 and reads the first one's Secret.

use std::collections::BTreeMap;

use ferrite_api::tls::{CA_FILE, CLIENT_CERT_FILE, CLIENT_KEY_FILE, ClientPem, Pki};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// Why the node API certificates could not be had.
#[derive(Debug, thiserror::Error)]
pub enum NodeTlsError {
    /// The Kubernetes API refused or failed.
    #[error("Secret {namespace}/{name}: {source}")]
    Kube {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
        /// The error.
        source: kube::Error,
    },
    /// Generating or reading the certificates failed.
    #[error(transparent)]
    Tls(#[from] ferrite_api::tls::TlsError),
    /// The Secret lacks a key or holds something else.
    #[error("Secret {0}: {1}")]
    Invalid(String, String),
}

/// The operator's client material from the Secret `namespace/name`, created (with a new CA)
/// if absent.
pub async fn from_secret(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<ClientPem, NodeTlsError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let kube_err = |source| NodeTlsError::Kube {
        namespace: namespace.into(),
        name: name.into(),
        source,
    };
    let secret = match api.get_opt(name).await.map_err(kube_err)? {
        Some(s) => s,
        None => {
            let pki = Pki::generate()?;
            let data: BTreeMap<String, ByteString> = pki
                .files()
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect();
            let s = Secret {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(namespace.into()),
                    labels: Some(
                        [(
                            "app.kubernetes.io/managed-by".to_string(),
                            "ferrite-operator".to_string(),
                        )]
                        .into(),
                    ),
                    ..Default::default()
                },
                type_: Some("Opaque".into()),
                data: Some(data),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &s).await {
                Ok(created) => {
                    tracing::info!(%namespace, %name, "created the node API CA and certificates");
                    created
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    api.get(name).await.map_err(kube_err)?
                }
                Err(e) => return Err(kube_err(e)),
            }
        }
    };
    client_pem(&secret, &format!("{namespace}/{name}"))
}

/// The client material in a Secret's data.
fn client_pem(secret: &Secret, what: &str) -> Result<ClientPem, NodeTlsError> {
    let data = secret.data.clone().unwrap_or_default();
    let get = |key: &str| {
        let bytes = data
            .get(key)
            .ok_or_else(|| NodeTlsError::Invalid(what.into(), format!("no {key}")))?;
        String::from_utf8(bytes.0.clone())
            .ok()
            .filter(|t| t.contains("-----BEGIN "))
            .ok_or_else(|| NodeTlsError::Invalid(what.into(), format!("{key} is not PEM")))
    };
    Ok(ClientPem {
        ca_cert: get(CA_FILE)?,
        cert: get(CLIENT_CERT_FILE)?,
        key: get(CLIENT_KEY_FILE)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_yields_the_client_material() {
        let pki = Pki::generate().expect("pki");
        let data: BTreeMap<String, ByteString> = pki
            .files()
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
            .collect();
        let mut s = Secret {
            data: Some(data),
            ..Default::default()
        };
        assert_eq!(client_pem(&s, "x").expect("pem"), pki.client());
        s.data.as_mut().map(|d| d.remove(CLIENT_KEY_FILE));
        let e = client_pem(&s, "ns/x").unwrap_err().to_string();
        assert!(e.contains("no operator.key"), "{e}");
    }
}
