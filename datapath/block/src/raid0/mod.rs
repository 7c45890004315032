//! RAID0 storage pools: striping over member devices with on-disk labels (being written).
