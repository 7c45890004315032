//! Ferrite's Kubernetes operator: the custom resources and their CRDs, and the operator's
//! decisions as plain functions.
//!
//! - [`crd`]: `StoragePool`, `Volume` and `FerriteNode` (group `ferrite.dev`, version
//!   `v1alpha1`), CRD generation for `manifests/crds.yaml` (the `crdgen` binary) and a check
//!   that the schemas are structural and Kubernetes 1.20-compatible.
//! - [`decisions`]: replica placement, target choice, repair and status aggregation.
//! - [`conditions`]: condition types, reasons, finalizer names and the condition upsert.
//! - [`names`]: pool names on nodes and NQNs.
//!
//! - [`reconcile`]: the controllers for FerriteNode, StoragePool and Volume, which carry the
//!   decisions out through the nodes' gRPC API ([`node_api`]), over mutual TLS with the
//!   certificates [`node_tls`] finds or creates.
//! - [`csi`]: the CSI Identity and Controller services over Volume objects.
//! - [`leader`]: leader election with a `coordination.k8s.io/v1` Lease.
//! - [`metrics`]: Prometheus metrics and the `/metrics` endpoint.
//!
//! Nodes are reached only through `ferrite-api`, never through datapath crates.

pub mod conditions;
pub mod crd;
pub mod csi;
pub mod decisions;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod node_api;
pub mod node_tls;
pub mod reconcile;
