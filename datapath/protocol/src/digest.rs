//! CRC32C header and data digests (NVMe/TCP HDGST and DDGST).

/// CRC32C of `data`, as carried little-endian in an NVMe/TCP digest field.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Continues a CRC32C over another piece of the same data (for digests over scattered data).
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, data)
}

/// The 4 digest bytes for `data`.
#[inline]
pub fn digest_bytes(data: &[u8]) -> [u8; 4] {
    crc32c(data).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // RFC 3720 B.4: 32 bytes of zeroes.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn append_matches_whole() {
        let data: Vec<u8> = (0..=255u8).collect();
        let (a, b) = data.split_at(100);
        assert_eq!(crc32c_append(crc32c(a), b), crc32c(&data));
    }
}
