//! NVMe Qualified Names: validation of subsystem and host NQNs.

use thiserror::Error;

/// The well-known NQN of the discovery subsystem.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Maximum NQN length in bytes (the field is 256 bytes, NUL-terminated; the spec caps at 223).
pub const MAX_NQN_LEN: usize = 223;

/// Why a string is not a valid NQN.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NqnError {
    #[error("NQN is empty")]
    Empty,
    #[error("NQN is {0} bytes long; the maximum is 223")]
    TooLong(usize),
    #[error(
        "NQN {0:?} must start with \"nqn.\" followed by a date (yyyy-mm) and a reverse domain name, e.g. nqn.2024-01.dev.ferrite:vol1"
    )]
    BadFormat(String),
}

/// Checks that `nqn` is a well-formed NQN: `nqn.yyyy-mm.reverse.domain[:anything]` in
/// printable ASCII without spaces, at most 223 bytes.
pub fn validate(nqn: &str) -> Result<(), NqnError> {
    if nqn.is_empty() {
        return Err(NqnError::Empty);
    }
    if nqn.len() > MAX_NQN_LEN {
        return Err(NqnError::TooLong(nqn.len()));
    }
    let bad = || NqnError::BadFormat(nqn.to_string());
    if !nqn.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(bad());
    }
    let rest = nqn.strip_prefix("nqn.").ok_or_else(bad)?;
    let date = rest.get(..7).ok_or_else(bad)?;
    let db = date.as_bytes();
    let date_ok = db[..4].iter().all(u8::is_ascii_digit)
        && db[4] == b'-'
        && db[5..].iter().all(u8::is_ascii_digit);
    if !date_ok || rest.as_bytes().get(7) != Some(&b'.') || rest.len() < 9 {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid() {
        validate(DISCOVERY_NQN).unwrap();
        validate("nqn.2014-08.org.nvmexpress:uuid:0f6a0e0b-4d8a-4d2c-9d1e-2c1b8b4c5d6e").unwrap();
        validate("nqn.2024-01.dev.ferrite:vol1").unwrap();
    }

    #[test]
    fn rejects_invalid() {
        assert_eq!(validate(""), Err(NqnError::Empty));
        assert!(matches!(
            validate("iqn.2024-01.x"),
            Err(NqnError::BadFormat(_))
        ));
        assert!(matches!(
            validate("nqn.24-01.x"),
            Err(NqnError::BadFormat(_))
        ));
        assert!(matches!(
            validate("nqn.2024-01.dev ferrite"),
            Err(NqnError::BadFormat(_))
        ));
        assert!(matches!(
            validate("nqn.2024-01."),
            Err(NqnError::BadFormat(_))
        ));
        let long = format!("nqn.2024-01.dev.{}", "x".repeat(300));
        assert!(matches!(validate(&long), Err(NqnError::TooLong(_))));
    }
}
