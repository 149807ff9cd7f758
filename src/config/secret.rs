//! Secrets and the references the config file uses to find them.
//!
//! A secret is written in the config as `env:NAME`, `file:PATH`,
//! `credential:NAME` (systemd `LoadCredential=`, read from
//! `$CREDENTIALS_DIRECTORY/NAME`) or as a literal string. References are
//! resolved once, at load time; the resolved [`Secret`] never prints its value.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The value of a secret. `Debug` and `Display` are redacted so that a secret
/// cannot reach a log line or an error message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret's value. Call this only where the value is used as a key.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a secret comes from, as written in the config file.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
    Credential(String),
    Literal(Secret),
}

impl From<String> for SecretRef {
    fn from(text: String) -> Self {
        if let Some(name) = text.strip_prefix("env:") {
            SecretRef::Env(name.to_owned())
        } else if let Some(path) = text.strip_prefix("file:") {
            SecretRef::File(PathBuf::from(path))
        } else if let Some(name) = text.strip_prefix("credential:") {
            SecretRef::Credential(name.to_owned())
        } else {
            SecretRef::Literal(Secret(text))
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{}", path.display()),
            SecretRef::Credential(name) => write!(f, "credential:{name}"),
            SecretRef::Literal(_) => f.write_str("<literal secret>"),
        }
    }
}

/// What the resolver needs from the environment; a trait so tests can supply
/// their own without touching the process environment.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl SecretRef {
    /// Resolves the reference. Relative `file:` paths are taken from
    /// `base_dir` (the config file's directory). The error never contains the
    /// secret itself.
    pub fn resolve(&self, base_dir: &Path, env: &dyn Environment) -> Result<Secret, String> {
        let value = match self {
            SecretRef::Literal(secret) => secret.0.clone(),
            SecretRef::Env(name) => {
                if name.is_empty() {
                    return Err("env: needs a variable name, e.g. env:PARALLEL_WEBHOOK_SECRET".into());
                }
                env.var(name).ok_or_else(|| format!("environment variable {name} is not set"))?
            }
            SecretRef::File(path) => read_secret_file(&base_dir.join(path))?,
            SecretRef::Credential(name) => read_secret_file(&credential_path(name, env)?)?,
        };
        if value.is_empty() {
            return Err(format!("secret {self:?} is empty"));
        }
        Ok(Secret(value))
    }
}

/// Where systemd put credential `name` (`LoadCredential=NAME:...`):
/// `$CREDENTIALS_DIRECTORY/NAME`.
pub(crate) fn credential_path(name: &str, env: &dyn Environment) -> Result<PathBuf, String> {
    if name.is_empty() || name.contains('/') {
        return Err(format!("credential:{name} must name a credential, without slashes"));
    }
    let dir = env.var("CREDENTIALS_DIRECTORY").ok_or_else(|| {
        format!(
            "credential:{name} needs $CREDENTIALS_DIRECTORY, which systemd sets \
             for a unit with LoadCredential={name}:... (to check a config by hand, set it to \
             the directory of the credential files, e.g. /etc/hookrelay/credentials)"
        )
    })?;
    Ok(Path::new(&dir).join(name))
}

/// Reads a secret file, dropping the trailing newline editors and `echo` add.
fn read_secret_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read secret file {}: {err}", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct FakeEnv(HashMap<&'static str, String>);
    impl Environment for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }

    fn parse(text: &str) -> SecretRef {
        SecretRef::from(text.to_owned())
    }

    #[test]
    fn forms() {
        assert_eq!(parse("env:X"), SecretRef::Env("X".into()));
        assert_eq!(parse("file:/a/b"), SecretRef::File("/a/b".into()));
        assert_eq!(parse("credential:c"), SecretRef::Credential("c".into()));
        assert_eq!(parse("whsec_abc"), SecretRef::Literal(Secret::new("whsec_abc")));
    }

    #[test]
    fn redacted_everywhere() {
        let secret = Secret::new("hunter2");
        assert!(!format!("{secret:?} {secret}").contains("hunter2"));
        assert!(!format!("{:?}", parse("hunter2")).contains("hunter2"));
    }

    #[test]
    fn resolves_env_file_and_credential() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.secret"), "from-file\n").unwrap();
        std::fs::write(dir.path().join("cred"), "from-cred").unwrap();
        let env = FakeEnv(HashMap::from([
            ("X", "from-env".to_owned()),
            ("CREDENTIALS_DIRECTORY", dir.path().display().to_string()),
        ]));
        let base = dir.path();
        assert_eq!(parse("env:X").resolve(base, &env).unwrap().expose(), "from-env");
        assert_eq!(parse("file:s.secret").resolve(base, &env).unwrap().expose(), "from-file");
        assert_eq!(parse("credential:cred").resolve(base, &env).unwrap().expose(), "from-cred");
    }

    #[test]
    fn errors_name_the_problem() {
        let env = FakeEnv(HashMap::new());
        let base = Path::new("/nonexistent");
        assert_eq!(
            parse("env:NOPE").resolve(base, &env).unwrap_err(),
            "environment variable NOPE is not set"
        );
        assert!(
            parse("file:missing")
                .resolve(base, &env)
                .unwrap_err()
                .starts_with("cannot read secret file /nonexistent/missing")
        );
        assert!(parse("credential:c").resolve(base, &env).unwrap_err().contains("$CREDENTIALS_DIRECTORY"));
        assert!(parse("credential:../x").resolve(base, &env).unwrap_err().contains("slashes"));
        assert!(parse("").resolve(base, &env).unwrap_err().contains("empty"));
    }
}
