//! Provider callback signatures, the way Stripe signs webhooks.
//!
//! Header `Paystream-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…]`; each `v1` is
//! HMAC-SHA256 under a shared secret over `"<t>.<raw body>"`. Several `v1` (and several
//! configured secrets) allow rotating the secret without downtime. Comparison is constant
//! time; the timestamp must be within the tolerance in both directions, so a captured
//! callback cannot be replayed later, nor one signed in the future used now.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the signature.
pub const HEADER: &str = "paystream-signature";
/// How far the signed timestamp may be from our clock, either way.
pub const TOLERANCE_S: i64 = 300;
/// The most `v1` entries one header may carry (a bound on work per request).
pub const SIGNATURES_MAX: usize = 8;

/// Why a callback is not authentic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Paystream-Signature header is missing")]
    Missing,
    #[error("the Paystream-Signature header is malformed")]
    Malformed,
    #[error("the signature timestamp is {0} s away from now (tolerance {TOLERANCE_S} s)")]
    Stale(i64),
    #[error("no signature matches")]
    Mismatch,
}

/// Verifies signatures with the configured secrets.
pub struct Verifier {
    /// Every secret currently accepted (the new one and, during a rotation, the old one).
    secrets: Vec<Vec<u8>>,
}

impl Verifier {
    /// `secrets` must not be empty; each is used as raw bytes.
    pub fn new(secrets: Vec<Vec<u8>>) -> Self {
        assert!(!secrets.is_empty(), "at least one callback secret is configured");
        Self { secrets }
    }

    /// Checks `header` for `body` at `now_s` (Unix seconds); returns the signed timestamp.
    pub fn verify(&self, header: Option<&str>, body: &[u8], now_s: i64) -> Result<i64, SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let mut timestamp = None;
        let mut signatures = Vec::new();
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", value)) => {
                    timestamp = Some(value.parse::<i64>().map_err(|_| SignatureError::Malformed)?)
                }
                Some(("v1", value)) => {
                    signatures.push(hex::decode(value).map_err(|_| SignatureError::Malformed)?)
                }
                Some(_) => {} // other schemes (v0, …) are ignored, as Stripe does
                None => return Err(SignatureError::Malformed),
            }
        }
        let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
        if signatures.is_empty() || signatures.len() > SIGNATURES_MAX {
            return Err(SignatureError::Malformed);
        }
        let skew = now_s - timestamp;
        if skew.abs() > TOLERANCE_S {
            return Err(SignatureError::Stale(skew));
        }
        for secret in &self.secrets {
            for signature in &signatures {
                let mut mac = mac(secret, timestamp, body);
                // verify_slice compares in constant time.
                if mac.clone().verify_slice(signature).is_ok() {
                    return Ok(timestamp);
                }
                mac.reset();
            }
        }
        Err(SignatureError::Mismatch)
    }
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; new_from_slice cannot fail for it.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value a provider sends: `t=<timestamp>,v1=<hex>` (the provider simulator and
/// tests sign with it).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let signature = hex::encode(mac(secret, timestamp, body).finalize().into_bytes());
    format!("t={timestamp},v1={signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_300_000;

    #[test]
    fn accepts_a_fresh_signature_and_rotated_secrets() {
        let verifier = Verifier::new(vec![b"new".to_vec(), b"old".to_vec()]);
        let body = br#"{"paymentId":"x"}"#;
        assert_eq!(verifier.verify(Some(&sign(b"new", NOW, body)), body, NOW), Ok(NOW));
        assert_eq!(verifier.verify(Some(&sign(b"old", NOW - 299, body)), body, NOW), Ok(NOW - 299));
        let new_hex = sign(b"new", NOW, body).split_once(",v1=").map(|(_, hex)| hex.to_owned()).unwrap();
        let two = format!("{},v1={new_hex}", sign(b"retired", NOW, body));
        assert_eq!(verifier.verify(Some(&two), body, NOW), Ok(NOW), "any v1 may match");
    }

    #[test]
    fn refuses_tampering_staleness_and_garbage() {
        let verifier = Verifier::new(vec![b"secret".to_vec()]);
        let body = br#"{"paymentId":"x"}"#;
        let header = sign(b"secret", NOW, body);
        assert_eq!(
            verifier.verify(Some(&header), br#"{"paymentId":"y"}"#, NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verifier.verify(Some(&sign(b"other", NOW, body)), body, NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verifier.verify(Some(&header), body, NOW + 301), Err(SignatureError::Stale(301)));
        assert_eq!(
            verifier.verify(Some(&header), body, NOW - 301),
            Err(SignatureError::Stale(-301)),
            "future"
        );
        assert_eq!(verifier.verify(None, body, NOW), Err(SignatureError::Missing));
        for bad in ["", "t=abc,v1=00", "v1=00", "t=1", "t=1,v1=zz", "garbage"] {
            assert_eq!(verifier.verify(Some(bad), body, NOW), Err(SignatureError::Malformed), "{bad}");
        }
    }
}
