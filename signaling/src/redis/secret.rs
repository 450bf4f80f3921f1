//! Connection strings from the environment or from files (the operator
//! mounts Secrets as files), and redaction so they never reach a log.

use super::error::BackendError;

/// Returns the password-free form of a URL for logs and errors:
/// `redis://user:secret@host:6379/0` becomes `redis://user:***@host:6379/0`.
/// Anything that does not look like `scheme://userinfo@…` is returned with
/// its userinfo dropped entirely, to err on the safe side.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        // Not a URL we understand; never echo it in case it holds a secret.
        return "<unparseable connection string>".to_string();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    // userinfo ends at the last '@' before the path, query or fragment.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        None => url.to_string(),
        Some(at) => {
            let userinfo = &authority[..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let redacted = if userinfo.contains(':') {
                format!("{user}:***")
            } else if user.is_empty() {
                String::new()
            } else {
                // A lone token (e.g. `redis://token@host`) may be the secret.
                "***".to_string()
            };
            format!("{scheme}{redacted}@{}", &rest[at + 1..])
        }
    }
}

/// Resolves a secret given either directly (`value`, from a flag or env var)
/// or as a file path (`file`, from a `*_FILE` variable). Setting both is a
/// configuration error, so a stale file cannot silently win. Trailing
/// newlines of the file are dropped, as Kubernetes Secret files often have one.
pub fn read_secret(
    setting: &'static str,
    file_setting: &'static str,
    value: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Option<String>, BackendError> {
    match (value, file) {
        (Some(_), Some(_)) => Err(BackendError::Config {
            setting,
            reason: format!("set either {setting} or {file_setting}, not both"),
        }),
        (Some(v), None) => Ok(Some(v.trim().to_string()).filter(|v| !v.is_empty())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| BackendError::Config {
                setting: file_setting,
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
            let text = text.trim().to_string();
            if text.is_empty() {
                return Err(BackendError::Config {
                    setting: file_setting,
                    reason: format!("{} is empty", path.display()),
                });
            }
            Ok(Some(text))
        }
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password_and_keeps_the_rest() {
        assert_eq!(
            redact_url("redis://app:s3cr3t@redis-0.redis:6379/2"),
            "redis://app:***@redis-0.redis:6379/2"
        );
        assert_eq!(
            redact_url("mongodb://u:p%40ss@db:27017/videochat?authSource=admin"),
            "mongodb://u:***@db:27017/videochat?authSource=admin"
        );
        assert_eq!(redact_url("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(redact_url("redis://token@h:1"), "redis://***@h:1");
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(redact_url("h:1 pw"), "<unparseable connection string>");
    }

    #[test]
    fn secret_from_value_or_file_but_not_both() {
        let dir = std::env::temp_dir().join(format!("videochat-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("url");
        std::fs::write(&file, "redis://h:1/\n").unwrap();
        assert_eq!(
            read_secret(
                "VIDEOCHAT_REDIS_URL",
                "VIDEOCHAT_REDIS_URL_FILE",
                None,
                Some(&file)
            )
            .unwrap(),
            Some("redis://h:1/".to_string())
        );
        assert_eq!(
            read_secret(
                "VIDEOCHAT_REDIS_URL",
                "VIDEOCHAT_REDIS_URL_FILE",
                Some("redis://x/"),
                None
            )
            .unwrap(),
            Some("redis://x/".to_string())
        );
        let both = read_secret(
            "VIDEOCHAT_REDIS_URL",
            "VIDEOCHAT_REDIS_URL_FILE",
            Some("redis://x/"),
            Some(&file),
        );
        assert!(both.unwrap_err().to_string().contains("not both"));
        let missing = read_secret(
            "VIDEOCHAT_REDIS_URL",
            "VIDEOCHAT_REDIS_URL_FILE",
            None,
            Some(&dir.join("nope")),
        );
        assert!(
            missing
                .unwrap_err()
                .to_string()
                .contains("VIDEOCHAT_REDIS_URL_FILE")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
