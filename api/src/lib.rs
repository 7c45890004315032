//! Protobuf APIs shared by the operator, the CSI node plugin and the datapath (being written).
