//! Write ids: a fresh id per write call, stored with the row it wrote, so that a statement
//! resent after its reply was lost recognises its own committed write.

use larder_cache_api::{Error, ErrorKind, Result};

/// A fresh write id: 8 random bytes from the OS, as 16 hex digits (ample to tell one write
/// among the few a row keeps, or among the deletes of ten minutes).
///
/// ```
/// let id = larder_sql_common::write_id::fresh().unwrap();
/// assert_eq!(id.len(), 16);
/// assert_ne!(id, larder_sql_common::write_id::fresh().unwrap());
/// ```
pub fn fresh() -> Result<String> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| {
        Error::new(
            ErrorKind::Backend,
            format!("the OS random source failed: {e}"),
        )
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
