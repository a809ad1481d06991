//! Start-up checks of the secrets a service is given.
//!
//! The local stack's secrets are published in this repository (`dev/lib.sh` exports them for
//! `dev/run` and `dev/test`), so anyone can mint a bearer token or sign a callback with them.
//! A service started with one of them refuses to start unless it is told, explicitly, that it
//! runs on a development machine: [`DEV_MODE_VARIABLE`]`=1`, which only `dev/lib.sh` sets.
//! A production deployment that forgot to set its own secret then fails loudly at start-up
//! instead of running with a key the whole world knows.
//!
//! `paystream api` checks its JWT secret and webhook secrets, `paystream provider-sim` its
//! signing secrets, with the functions here.

/// Set to `1` (or `true`) on a development machine to accept the published development
/// secrets; `dev/lib.sh` exports it.
pub const DEV_MODE_VARIABLE: &str = "PAYSTREAM_DEV_MODE";
/// The local stack's HS256 bearer-token secret (`dev/lib.sh`).
pub const DEV_JWT_HS256_SECRET: &str = "paystream-local-development-secret-0123456789";
/// The local stack's provider-callback signing secret (`dev/lib.sh`).
pub const DEV_PROVIDER_WEBHOOK_SECRET: &str = "paystream-local-provider-webhook-secret";
/// Every secret published in the repository for the local stack.
pub const DEV_SECRETS: &[&str] = &[DEV_JWT_HS256_SECRET, DEV_PROVIDER_WEBHOOK_SECRET];
/// The shortest HS256 secret accepted: RFC 7518 §3.2 wants a key at least as long as the hash
/// (256 bits).
pub const HS256_SECRET_BYTES_MIN: usize = 32;

/// The variables the secrets come from, named in the errors.
pub const JWT_HS256_SECRET_VARIABLE: &str = "PAYSTREAM_JWT_HS256_SECRET";
pub const PROVIDER_WEBHOOK_SECRETS_VARIABLE: &str = "PAYSTREAM_PROVIDER_WEBHOOK_SECRETS";

/// Why a service refuses its secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "{variable} is the development secret published in this repository (dev/lib.sh); \
         set a secret of your own (e.g. `openssl rand -hex 32`), or set {DEV_MODE_VARIABLE}=1 \
         if this is a development machine"
    )]
    PublishedDevSecret { variable: &'static str },
    #[error("{variable} must be at least {min_bytes} bytes")]
    TooShort { variable: &'static str, min_bytes: usize },
    #[error("set {variable}")]
    Missing { variable: &'static str },
    #[error("{DEV_MODE_VARIABLE} must be 1/true or 0/false (or unset), not {value:?}")]
    BadDevMode { value: String },
}

/// Whether the service runs in development mode, from the value of [`DEV_MODE_VARIABLE`]
/// (`None`: unset). Anything but a clear yes or no is refused, so a typo does not silently
/// decide.
pub fn dev_mode(value: Option<&str>) -> Result<bool, SecretError> {
    match value.map(str::trim) {
        None | Some("" | "0" | "false") => Ok(false),
        Some("1" | "true") => Ok(true),
        Some(other) => Err(SecretError::BadDevMode { value: other.to_owned() }),
    }
}

/// [`dev_mode`] of this process's environment.
pub fn dev_mode_from_env() -> Result<bool, SecretError> {
    let value = std::env::var_os(DEV_MODE_VARIABLE).map(|v| v.to_string_lossy().into_owned());
    dev_mode(value.as_deref())
}

/// Refuses `secret` (read from `variable`) if it is a published development secret and
/// `dev_mode` is off.
pub fn refuse_published(variable: &'static str, secret: &str, dev_mode: bool) -> Result<(), SecretError> {
    if !dev_mode && DEV_SECRETS.contains(&secret) {
        return Err(SecretError::PublishedDevSecret { variable });
    }
    Ok(())
}

/// The HS256 bearer-token secret, checked: long enough, and not the published one outside
/// development mode.
pub fn hs256_secret(secret: &str, dev_mode: bool) -> Result<&[u8], SecretError> {
    let variable = JWT_HS256_SECRET_VARIABLE;
    if secret.len() < HS256_SECRET_BYTES_MIN {
        return Err(SecretError::TooShort { variable, min_bytes: HS256_SECRET_BYTES_MIN });
    }
    refuse_published(variable, secret, dev_mode)?;
    Ok(secret.as_bytes())
}

/// The provider-callback secrets (several during a rotation; blanks ignored), checked: at
/// least one, and none the published one outside development mode.
pub fn webhook_secrets(secrets: &[String], dev_mode: bool) -> Result<Vec<Vec<u8>>, SecretError> {
    let variable = PROVIDER_WEBHOOK_SECRETS_VARIABLE;
    let secrets: Vec<&str> = secrets.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).collect();
    if secrets.is_empty() {
        return Err(SecretError::Missing { variable });
    }
    for secret in &secrets {
        refuse_published(variable, secret, dev_mode)?;
    }
    Ok(secrets.into_iter().map(|s| s.as_bytes().to_vec()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OWN: &str = "an-operator-chosen-secret-of-more-than-32-bytes";

    #[test]
    fn the_published_secrets_are_the_ones_dev_lib_sh_exports() {
        let lib_sh = include_str!("../../dev/lib.sh");
        for secret in DEV_SECRETS {
            assert!(lib_sh.contains(&format!(":-{secret}}}")), "dev/lib.sh no longer exports {secret}");
        }
        assert!(lib_sh.contains(&format!("export {DEV_MODE_VARIABLE}=1")), "dev/lib.sh sets dev mode");
    }

    #[test]
    fn published_secrets_are_refused_outside_dev_mode() {
        let err = hs256_secret(DEV_JWT_HS256_SECRET, false).unwrap_err();
        assert_eq!(err, SecretError::PublishedDevSecret { variable: JWT_HS256_SECRET_VARIABLE });
        let message = err.to_string();
        assert!(message.contains("PAYSTREAM_JWT_HS256_SECRET") && message.contains("PAYSTREAM_DEV_MODE=1"));
        assert_eq!(hs256_secret(DEV_JWT_HS256_SECRET, true), Ok(DEV_JWT_HS256_SECRET.as_bytes()));

        // One published secret among rotated ones is enough to refuse.
        let rotated = vec![OWN.to_owned(), format!(" {DEV_PROVIDER_WEBHOOK_SECRET} ")];
        assert_eq!(
            webhook_secrets(&rotated, false),
            Err(SecretError::PublishedDevSecret { variable: PROVIDER_WEBHOOK_SECRETS_VARIABLE })
        );
        assert_eq!(webhook_secrets(&rotated, true).unwrap().len(), 2);
        // The JWT's published secret is no better as a webhook secret.
        assert!(webhook_secrets(&[DEV_JWT_HS256_SECRET.to_owned()], false).is_err());
    }

    #[test]
    fn own_secrets_are_accepted_in_either_mode_if_long_enough() {
        for dev in [false, true] {
            assert_eq!(hs256_secret(OWN, dev), Ok(OWN.as_bytes()));
            assert_eq!(
                webhook_secrets(&[OWN.to_owned(), String::new()], dev),
                Ok(vec![OWN.as_bytes().to_vec()])
            );
        }
        assert_eq!(
            hs256_secret("short", true),
            Err(SecretError::TooShort { variable: JWT_HS256_SECRET_VARIABLE, min_bytes: 32 })
        );
        assert_eq!(
            webhook_secrets(&[" ".to_owned()], true),
            Err(SecretError::Missing { variable: PROVIDER_WEBHOOK_SECRETS_VARIABLE })
        );
    }

    #[test]
    fn dev_mode_is_a_clear_yes_or_no() {
        assert_eq!(dev_mode(None), Ok(false));
        for no in ["", "0", "false"] {
            assert_eq!(dev_mode(Some(no)), Ok(false), "{no:?}");
        }
        for yes in ["1", "true", " 1 "] {
            assert_eq!(dev_mode(Some(yes)), Ok(true), "{yes:?}");
        }
        assert_eq!(dev_mode(Some("yes please")), Err(SecretError::BadDevMode { value: "yes please".into() }));
    }
}
