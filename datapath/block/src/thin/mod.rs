//! Thin-provisioned volumes carved from a pool, with crash-safe metadata (being written).
