//! Secrets named in the config: read from a file or an environment variable, never written
//! into the config itself.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Shortest secret accepted, in bytes: a header secret or signing key must not be guessable.
pub const MIN_SECRET_BYTES: usize = 16;

/// One secret: exactly one of `file` and `env`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Key id. Required for signing keys (senders name it in `X-Sluice-Key-Id`); optional
    /// for header secrets, where it only names the secret in logs.
    pub id: Option<String>,
    /// File holding the secret (surrounding whitespace, such as a final newline, is removed).
    pub file: Option<PathBuf>,
    /// Environment variable holding the secret.
    pub env: Option<String>,
}

impl SecretRef {
    /// Reads the secret; the error names `key` (e.g. `principals[0].header_secrets[1]`).
    pub fn load(&self, key: &str) -> Result<Vec<u8>, String> {
        load_secret(self.file.as_deref(), self.env.as_deref(), key)
    }
}

/// Reads a secret from exactly one of `file` and `env`; the error names `key`.
pub fn load_secret(file: Option<&Path>, env: Option<&str>, key: &str) -> Result<Vec<u8>, String> {
    let raw = match (file, env) {
        (Some(path), None) => std::fs::read(path)
            .map_err(|err| format!("{key}.file: cannot read {}: {err}", path.display()))?,
        (None, Some(var)) => std::env::var(var)
            .map_err(|_| format!("{key}.env: environment variable {var} is not set"))?
            .into_bytes(),
        _ => return Err(format!("{key}: set exactly one of file and env")),
    };
    let secret = raw.trim_ascii().to_vec();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "{key}: the secret must be at least {MIN_SECRET_BYTES} bytes"
        ));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_files_trimmed_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "0123456789abcdef-secret\n").unwrap();
        let secret = SecretRef {
            id: None,
            file: Some(path.clone()),
            env: None,
        };
        assert_eq!(secret.load("k").unwrap(), b"0123456789abcdef-secret");
        std::fs::write(&path, "short\n").unwrap();
        assert_eq!(
            secret.load("p[0].header_secrets[0]").unwrap_err(),
            "p[0].header_secrets[0]: the secret must be at least 16 bytes"
        );
        let both = SecretRef {
            env: Some("X".into()),
            ..secret
        };
        assert_eq!(
            both.load("k").unwrap_err(),
            "k: set exactly one of file and env"
        );
        let unset = SecretRef {
            id: None,
            file: None,
            env: Some("SLUICE_TEST_SURELY_UNSET_VARIABLE".into()),
        };
        assert_eq!(
            unset.load("k").unwrap_err(),
            "k.env: environment variable SLUICE_TEST_SURELY_UNSET_VARIABLE is not set"
        );
    }
}
