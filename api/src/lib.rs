//! Protobuf APIs shared by the operator, the CSI node plugin and the datapath.
//!
//! - [`csi::v1`]: the Container Storage Interface v1 (Identity, Controller and Node
//!   services), wire-compatible with the official `csi.proto` (see `proto/csi/v1/csi.proto`
//!   for what is left out). Messages are prost structs; `*_server` modules hold the tonic
//!   service traits and `*_client` modules the clients.
//!
//! - [`node::v1`]: Ferrite's node API (pools, replicas, volume targets).
//!
//! - [`context`]: the keys of the CSI volume/publish context maps through which the
//!   controller tells the node plugin where a volume is served.
//!
//! The `.proto` files are compiled at build time by protox (no `protoc` needed).

pub mod context;
pub mod tls;

/// Ferrite's node API (`proto/ferrite/node/v1/node.proto`): the operator drives each node's
/// datapath through it.
pub mod node {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("ferrite.node.v1");
    }
}

pub mod csi {
    pub mod v1 {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("csi.v1");
    }
}

#[cfg(test)]
mod tests {
    use super::csi::v1::*;
    use prost::Message;

    /// Hand-encoded bytes (protobuf wire format) of messages the kubelet sends, checked
    /// against the field numbers of the official csi.proto.
    #[test]
    fn node_stage_request_wire_format() {
        let req = NodeStageVolumeRequest {
            volume_id: "v".into(),
            staging_target_path: "/s".into(),
            volume_capability: Some(VolumeCapability {
                access_type: Some(volume_capability::AccessType::Mount(
                    volume_capability::MountVolume {
                        fs_type: "ext4".into(),
                        mount_flags: vec![],
                        volume_mount_group: String::new(),
                    },
                )),
                access_mode: Some(volume_capability::AccessMode {
                    mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
                }),
            }),
            ..Default::default()
        };
        let bytes = req.encode_to_vec();
        // 1: "v"; 3: "/s"; 4: { 2: { 1: "ext4" }, 3: { 1: 1 } }
        let expected: Vec<u8> = vec![
            0x0a, 1, b'v', //
            0x1a, 2, b'/', b's', //
            0x22, 12, 0x12, 6, 0x0a, 4, b'e', b'x', b't', b'4', 0x1a, 2, 0x08, 1,
        ];
        assert_eq!(bytes, expected);
        assert_eq!(NodeStageVolumeRequest::decode(&expected[..]).unwrap(), req);
    }

    #[test]
    fn node_publish_and_info_field_numbers() {
        let req = NodePublishVolumeRequest {
            target_path: "/t".into(),
            readonly: true,
            ..Default::default()
        };
        assert_eq!(req.encode_to_vec(), vec![0x22, 2, b'/', b't', 0x30, 1]);
        let info = NodeGetInfoResponse {
            node_id: "n".into(),
            max_volumes_per_node: 7,
            accessible_topology: None,
        };
        assert_eq!(info.encode_to_vec(), vec![0x0a, 1, b'n', 0x10, 7]);
        let probe = ProbeResponse { ready: Some(true) };
        assert_eq!(probe.encode_to_vec(), vec![0x0a, 2, 0x08, 1]);
        let usage = VolumeUsage {
            available: 1,
            total: 2,
            used: 3,
            unit: volume_usage::Unit::Inodes as i32,
        };
        assert_eq!(
            usage.encode_to_vec(),
            vec![0x08, 1, 0x10, 2, 0x18, 3, 0x20, 2]
        );
        let exp = NodeExpandVolumeRequest {
            staging_target_path: "/s".into(),
            ..Default::default()
        };
        assert_eq!(exp.encode_to_vec(), vec![0x22, 2, b'/', b's']);
    }
}
