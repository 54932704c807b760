//! Signing webhook deliveries the Standard Webhooks way (<https://www.standardwebhooks.com>).
//!
//! Receivers verify a delivery with any Standard Webhooks library (svix's among them) instead
//! of code written for Herald: each POST carries `webhook-id`, `webhook-timestamp` and
//! `webhook-signature`, the last being `v1,` and the base64 HMAC-SHA256 of
//! `{id}.{timestamp}.{body}` under the endpoint's secret. The id lets a receiver drop a
//! redelivery; the signed timestamp lets it refuse a replay.

use std::{fmt, str::FromStr};

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix every Standard Webhooks secret is written with.
const PREFIX: &str = "whsec_";

/// How many random bytes a generated secret has: 192 bits, the size svix generates.
const GENERATED_LEN: usize = 24;

/// An endpoint's signing key, written `whsec_` + standard base64 of the key bytes.
///
/// `Debug` and `Display` never show the key, so a secret put in a log line or an error by
/// accident is not leaked; [`WebhookSecret::expose`] is the one way to its text.
#[derive(Clone)]
pub struct WebhookSecret {
    key: Vec<u8>,
}

impl WebhookSecret {
    /// A new secret of 24 bytes from the operating system's CSPRNG.
    pub fn generate() -> Self {
        // The bytes come from UUIDv4s, whose randomness is the OS CSPRNG (getrandom): that
        // spares a direct dependency on a random crate. A v4 UUID has fixed bits in bytes 6
        // (version) and 8 (variant) only, so each one gives 14 fully random bytes; two give
        // the 24 needed.
        let mut key = Vec::with_capacity(GENERATED_LEN);
        while key.len() < GENERATED_LEN {
            let uuid = uuid::Uuid::new_v4();
            let random = uuid
                .as_bytes()
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 6 && *i != 8)
                .map(|(_, b)| *b);
            key.extend(random.take(GENERATED_LEN - key.len()));
        }
        Self { key }
    }

    /// The secret's text, `whsec_…`: for storage and for the one answer that hands it to
    /// the endpoint's owner. Anywhere else, keep it out of sight.
    pub fn expose(&self) -> String {
        format!("{PREFIX}{}", STANDARD.encode(&self.key))
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any length")
    }
}

/// Why a secret's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidWebhookSecret {
    #[error("a webhook secret starts with {PREFIX}")]
    MissingPrefix,
    #[error("a webhook secret is {PREFIX} followed by standard base64")]
    NotBase64,
    #[error("a webhook secret's key is empty")]
    Empty,
}

impl FromStr for WebhookSecret {
    type Err = InvalidWebhookSecret;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let encoded = s
            .strip_prefix(PREFIX)
            .ok_or(InvalidWebhookSecret::MissingPrefix)?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| InvalidWebhookSecret::NotBase64)?;
        if key.is_empty() {
            return Err(InvalidWebhookSecret::Empty);
        }
        Ok(Self { key })
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}…(redacted)")
    }
}

/// The `webhook-signature` value for one delivery: `v1,` + base64 HMAC-SHA256 of
/// `{msg_id}.{timestamp}.{body}`, `timestamp` in Unix seconds.
pub fn sign(secret: &WebhookSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = secret.mac();
    // Fed piece by piece: the body is signed as bytes, never copied into a string.
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The three headers a delivery carries: `webhook-id`, `webhook-timestamp` and
/// `webhook-signature`.
pub fn headers(
    secret: &WebhookSecret,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> [(&'static str, String); 3] {
    [
        ("webhook-id", msg_id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", sign(secret, msg_id, timestamp, body)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: i64 = 1_614_265_330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;

    #[test]
    fn the_published_test_vector_is_signed_as_the_specification_says() {
        let secret: WebhookSecret = SPEC_SECRET.parse().unwrap();
        assert_eq!(
            sign(&secret, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_delivery_carries_its_id_timestamp_and_signature_as_headers() {
        let secret: WebhookSecret = SPEC_SECRET.parse().unwrap();
        let headers = headers(&secret, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY);
        assert_eq!(
            headers,
            [
                ("webhook-id", SPEC_ID.to_owned()),
                ("webhook-timestamp", "1614265330".to_owned()),
                (
                    "webhook-signature",
                    "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn a_generated_secret_survives_being_stored_as_text() {
        let secret = WebhookSecret::generate();
        let text = secret.expose();
        assert!(text.starts_with("whsec_"), "{text}");
        let read: WebhookSecret = text.parse().unwrap();
        assert_eq!(read.key.len(), 24);
        assert_eq!(read.expose(), text);
        assert_eq!(
            sign(&read, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY),
            sign(&secret, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY),
        );
    }

    #[test]
    fn two_generated_secrets_differ() {
        assert_ne!(
            WebhookSecret::generate().expose(),
            WebhookSecret::generate().expose()
        );
    }

    #[test]
    fn a_secret_written_to_a_log_shows_no_key() {
        let secret: WebhookSecret = SPEC_SECRET.parse().unwrap();
        let key = SPEC_SECRET.strip_prefix("whsec_").unwrap();
        for shown in [
            format!("{secret:?}"),
            format!("{secret}"),
            format!("{secret:#?}"),
        ] {
            assert!(!shown.contains(key), "{shown}");
            assert!(shown.contains("redacted"), "{shown}");
        }
    }

    #[test]
    fn a_secret_that_is_not_whsec_and_base64_is_refused() {
        for (text, why) in [
            (
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                InvalidWebhookSecret::MissingPrefix,
            ),
            (
                "whsec-MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                InvalidWebhookSecret::MissingPrefix,
            ),
            ("whsec_not base64!", InvalidWebhookSecret::NotBase64),
            ("whsec_", InvalidWebhookSecret::Empty),
        ] {
            assert_eq!(text.parse::<WebhookSecret>().unwrap_err(), why, "{text}");
        }
        assert!(
            InvalidWebhookSecret::MissingPrefix
                .to_string()
                .contains("whsec_")
        );
    }
}
