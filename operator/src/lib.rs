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
//! The reconcilers that apply the decisions against the API server and the nodes' gRPC API,
//! the CSI controller service and leader election come later; they reach nodes only through
//! `ferrite-api`, never through datapath crates.

pub mod conditions;
pub mod crd;
pub mod decisions;
pub mod names;
