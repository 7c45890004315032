//! Mirrors over replicas: fan-out writes, balanced reads, dirty-region tracking, epochs and
//! rebuild (being written).
