//! One entry point for every signature scheme a webhook source may choose
//! ([`SignatureScheme`]): verifying a delivery under the source's currently valid secrets, and
//! the shape of the secrets each scheme uses.
//!
//! Secrets, by scheme:
//! - `standard-webhooks`: `whsec_` and the base64 of a 24 to 64 byte key; Steward generates
//!   `whsec_` and the base64 of 32 random bytes. The key is the decoded bytes.
//! - `slack`: the sender's signing secret, used as plain UTF-8. A Slack app's signing secret
//!   is issued by Slack (32 lowercase hex digits), so the tenant supplies it; otherwise
//!   Steward generates one of the same shape (16 random bytes as hex) for the sender to use.
//! - `stripe`: the endpoint secret, whose whole string is the key. Stripe issues its own
//!   (`whsec_…`), which the tenant then supplies; otherwise Steward generates `whsec_` and 32
//!   random letters and digits, the shape Stripe's are. Such a value is not a Standard
//!   Webhooks key: the source's scheme, not the secret's prefix, says how it is used.
//!
//! A supplied `slack` or `stripe` secret must be 16 to 256 visible ASCII characters.
//!
//! Neither `slack` nor `stripe` carries a delivery id in its headers, so a delivery of those
//! schemes is identified by the SHA-256 of its exact body ([`body_delivery_id`]): a sender's
//! retry of the same bytes, or a replay, names the run the first one started. The limit that
//! comes with it: a retry whose body differs (a counter in the payload, say) is a new delivery,
//! and the same bytes sent again on purpose within the delivery retention are a duplicate.

use rand::Rng as _;
use rand::RngCore as _;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use steward_core::SignatureScheme;

use super::stripe;
use super::{
    ID_HEADER, SIGNATURE_HEADER, SignatureError, TIMESTAMP_HEADER, VerifiedDelivery, WebhookSecret,
    check_timestamp, verify_standard_any,
};
use crate::slack;

const MIN_PLAIN_SECRET_BYTES: usize = 16;
const MAX_PLAIN_SECRET_BYTES: usize = 256;
const SLACK_SECRET_BYTES: usize = 16;
const STRIPE_SECRET_CHARS: usize = 32;
const STRIPE_SECRET_PREFIX: &str = "whsec_";

/// The prefix of a delivery id derived from the body (see [`body_delivery_id`]).
pub const BODY_DELIVERY_ID_PREFIX: &str = "sha256:";

/// Verifies a delivery under `scheme`, passing if any of `secrets` (every currently valid
/// version of the source's secret, newest first) signed it. `header` looks a request header
/// up by its lowercase name and yields its value as received, or `None` when it is absent.
///
/// Each scheme checks in the same spirit and reports through the same [`SignatureError`]s:
/// missing headers first, then an empty body, then the timestamp (malformed, or further than
/// [`super::TOLERANCE_SECS`] either way), then the signature's form, and last the match, in
/// constant time. A secret that cannot be used is [`SignatureError::BadSecret`].
pub fn verify_delivery<'a>(
    scheme: SignatureScheme,
    secrets: &[SecretString],
    header: impl Fn(&'static str) -> Option<&'a str>,
    body: &[u8],
    now_secs: i64,
) -> Result<VerifiedDelivery, SignatureError> {
    match scheme {
        SignatureScheme::StandardWebhooks => {
            let keys = secrets
                .iter()
                .map(|s| WebhookSecret::parse(s.expose_secret()))
                .collect::<Result<Vec<_>, _>>()?;
            verify_standard_any(
                &keys,
                header(ID_HEADER),
                header(TIMESTAMP_HEADER),
                header(SIGNATURE_HEADER),
                body,
                now_secs,
            )
        }
        SignatureScheme::Slack => {
            let timestamp = header(slack::TIMESTAMP_HEADER);
            let signature = header(slack::SIGNATURE_HEADER);
            verify_slack_any(secrets, timestamp, signature, body, now_secs)
        }
        SignatureScheme::Stripe => {
            let timestamp = stripe::verify_stripe_any(
                secrets,
                header(stripe::SIGNATURE_HEADER),
                body,
                now_secs,
            )?;
            Ok(VerifiedDelivery {
                id: body_delivery_id(body),
                timestamp,
            })
        }
    }
}

/// Slack's own check ([`slack::verify_slack_signature`]) under each secret in turn: the first
/// to match passes; any failure other than a mismatch (a missing header, the timestamp, the
/// signature's form) does not depend on the secret and is final at once.
fn verify_slack_any(
    secrets: &[SecretString],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<VerifiedDelivery, SignatureError> {
    if secrets.is_empty() {
        return Err(SignatureError::BadSecret("no secret configured".into()));
    }
    for secret in secrets {
        match slack::verify_slack_signature(secret, timestamp, signature, body, now_secs) {
            Ok(()) => {
                let raw =
                    timestamp.ok_or(SignatureError::MissingHeader(slack::TIMESTAMP_HEADER))?;
                return Ok(VerifiedDelivery {
                    id: body_delivery_id(body),
                    timestamp: check_timestamp(raw, now_secs)?,
                });
            }
            Err(SignatureError::NoMatchingSignature) => {}
            Err(other) => return Err(other),
        }
    }
    Err(SignatureError::NoMatchingSignature)
}

/// The delivery id of a scheme whose headers carry none: `sha256:` and the lowercase hex of
/// the SHA-256 of the exact body bytes.
pub fn body_delivery_id(body: &[u8]) -> String {
    format!(
        "{BODY_DELIVERY_ID_PREFIX}{}",
        hex::encode(Sha256::digest(body))
    )
}

/// A new secret for a source of `scheme`, from the operating system's random number
/// generator, in the shape that scheme's senders use (see the module documentation).
pub fn generate_secret(scheme: SignatureScheme) -> String {
    match scheme {
        SignatureScheme::StandardWebhooks => WebhookSecret::generate(),
        SignatureScheme::Slack => {
            let mut key = [0u8; SLACK_SECRET_BYTES];
            rand::rngs::OsRng.fill_bytes(&mut key);
            hex::encode(key)
        }
        SignatureScheme::Stripe => {
            let tail: String = rand::rngs::OsRng
                .sample_iter(rand::distributions::Alphanumeric)
                .take(STRIPE_SECRET_CHARS)
                .map(char::from)
                .collect();
            format!("{STRIPE_SECRET_PREFIX}{tail}")
        }
    }
}

/// Whether `value` can serve as a secret of `scheme`. The error says what is wrong with it,
/// never what it is.
pub fn check_secret(scheme: SignatureScheme, value: &str) -> Result<(), SignatureError> {
    match scheme {
        SignatureScheme::StandardWebhooks => WebhookSecret::parse(value).map(|_| ()),
        SignatureScheme::Slack | SignatureScheme::Stripe => {
            let length_ok =
                (MIN_PLAIN_SECRET_BYTES..=MAX_PLAIN_SECRET_BYTES).contains(&value.len());
            if !length_ok || !value.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(SignatureError::BadSecret(format!(
                    "a {scheme} secret must be {MIN_PLAIN_SECRET_BYTES} to \
                     {MAX_PLAIN_SECRET_BYTES} visible ASCII characters"
                )));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slack::sign_slack;

    const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const SLACK_TS: i64 = 1_531_420_618;
    const SLACK_BODY: &str = concat!(
        "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow",
        "&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner",
        "&command=%2Fwebhook-collect&text=",
        "&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554",
        "%2F96rGlfmibIGlgcZRskXaIFfN",
        "&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c",
    );
    const SLACK_SIG: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    fn slack_headers<'a>(ts: &'a str, sig: &'a str) -> impl Fn(&'static str) -> Option<&'a str> {
        move |name| match name {
            "x-slack-request-timestamp" => Some(ts),
            "x-slack-signature" => Some(sig),
            _ => None,
        }
    }

    fn slack_verify(
        secrets: &[&str],
        ts: &str,
        sig: &str,
        now: i64,
    ) -> Result<VerifiedDelivery, SignatureError> {
        let secrets: Vec<SecretString> = secrets.iter().map(|s| SecretString::from(*s)).collect();
        let body = SLACK_BODY.as_bytes();
        verify_delivery(
            SignatureScheme::Slack,
            &secrets,
            slack_headers(ts, sig),
            body,
            now,
        )
    }

    #[test]
    fn slacks_published_example_verifies_through_the_slack_scheme() {
        let ts = SLACK_TS.to_string();
        let delivery = slack_verify(&[SLACK_SECRET], &ts, SLACK_SIG, SLACK_TS + 10).unwrap();
        assert_eq!(delivery.timestamp, SLACK_TS);
        assert_eq!(delivery.id, body_delivery_id(SLACK_BODY.as_bytes()));
        assert!(delivery.id.starts_with("sha256:") && delivery.id.len() == 7 + 64);
    }

    #[test]
    fn slack_tries_every_valid_secret() {
        let ts = SLACK_TS.to_string();
        let newer = "0123456789abcdef0123456789abcdef";
        assert!(slack_verify(&[newer, SLACK_SECRET], &ts, SLACK_SIG, SLACK_TS).is_ok());
        let res = slack_verify(&[newer], &ts, SLACK_SIG, SLACK_TS);
        assert_eq!(res, Err(SignatureError::NoMatchingSignature));
        let res = slack_verify(&[], &ts, SLACK_SIG, SLACK_TS);
        assert_eq!(res.unwrap_err().reason_code(), "bad_secret");
    }

    #[test]
    fn slack_failures_keep_their_kind() {
        let ts = SLACK_TS.to_string();
        let stale = slack_verify(&[SLACK_SECRET], &ts, SLACK_SIG, SLACK_TS + 301).unwrap_err();
        assert_eq!(stale.reason_code(), "timestamp_out_of_tolerance");
        let hex = SLACK_SIG.trim_start_matches("v0=");
        let huge = "v0=".repeat(20_000);
        let overflow = "9".repeat(40);
        let cases = [
            (ts.as_str(), format!("v1={hex}"), "signature_malformed"),
            (
                ts.as_str(),
                format!("v0={}", "zz".repeat(32)),
                "signature_malformed",
            ),
            (ts.as_str(), huge, "signature_malformed"),
            ("NaN", SLACK_SIG.to_owned(), "timestamp_malformed"),
            (
                overflow.as_str(),
                SLACK_SIG.to_owned(),
                "timestamp_malformed",
            ),
        ];
        for (ts, sig, expected) in cases {
            let err = slack_verify(&[SLACK_SECRET], ts, &sig, SLACK_TS).unwrap_err();
            assert_eq!(err.reason_code(), expected, "{ts:.20} {sig:.20}");
        }
        let none = |_: &'static str| None;
        let secrets = [SecretString::from(SLACK_SECRET)];
        let body = SLACK_BODY.as_bytes();
        let err = verify_delivery(SignatureScheme::Slack, &secrets, none, body, SLACK_TS);
        assert_eq!(err.unwrap_err().reason_code(), "missing_header");
    }

    #[test]
    fn each_scheme_reads_only_its_own_headers() {
        let secret = generate_secret(SignatureScheme::StandardWebhooks);
        let key = WebhookSecret::parse(&secret).unwrap();
        let body = br#"{"incident":{"number":"INC0010001"}}"#;
        let sig = super::super::sign_standard(&key, "msg_1", SLACK_TS, body);
        let ts = SLACK_TS.to_string();
        let standard = |name: &'static str| match name {
            "webhook-id" => Some("msg_1"),
            "webhook-timestamp" => Some(ts.as_str()),
            "webhook-signature" => Some(sig.as_str()),
            _ => None,
        };
        let secrets = [SecretString::from(secret)];
        let ok = verify_delivery(
            SignatureScheme::StandardWebhooks,
            &secrets,
            standard,
            body,
            SLACK_TS,
        );
        assert_eq!(ok.unwrap().id, "msg_1");
        for scheme in [SignatureScheme::Slack, SignatureScheme::Stripe] {
            let err = verify_delivery(scheme, &secrets, standard, body, SLACK_TS).unwrap_err();
            assert_eq!(err.reason_code(), "missing_header", "{scheme}");
        }
    }

    #[test]
    fn a_standard_source_with_an_unusable_secret_is_a_bad_secret() {
        let secrets = [SecretString::from("not-a-whsec")];
        let none = |_: &'static str| None;
        let err = verify_delivery(SignatureScheme::StandardWebhooks, &secrets, none, b"x", 0);
        assert_eq!(err.unwrap_err().reason_code(), "bad_secret");
    }

    #[test]
    fn stripe_goes_through_the_stripe_header() {
        let secret = "whsec_test_secret";
        let body = br#"{"id":"evt_test_webhook","object":"event"}"#;
        let header = stripe::sign_stripe(secret, 1_700_000_000, body);
        let lookup = |name: &'static str| (name == "stripe-signature").then_some(header.as_str());
        let secrets = [SecretString::from(secret)];
        let delivery = verify_delivery(
            SignatureScheme::Stripe,
            &secrets,
            lookup,
            body,
            1_700_000_000,
        )
        .unwrap();
        assert_eq!(delivery.timestamp, 1_700_000_000);
        assert_eq!(delivery.id, body_delivery_id(body));
    }

    #[test]
    fn generated_secrets_have_their_schemes_shape_and_pass_its_check() {
        for scheme in SignatureScheme::ALL {
            let a = generate_secret(scheme);
            assert_ne!(a, generate_secret(scheme), "{scheme}");
            assert_eq!(check_secret(scheme, &a), Ok(()), "{scheme}");
        }
        let slack = generate_secret(SignatureScheme::Slack);
        assert!(slack.len() == 32 && slack.bytes().all(|b| b.is_ascii_hexdigit()));
        let stripe = generate_secret(SignatureScheme::Stripe);
        let tail = stripe.strip_prefix("whsec_").expect("Stripe's prefix");
        assert!(tail.len() == 32 && tail.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(generate_secret(SignatureScheme::StandardWebhooks).starts_with("whsec_"));
        let sign = sign_slack(&slack, SLACK_TS, b"x");
        assert!(sign.starts_with("v0="));
    }

    #[test]
    fn supplied_secrets_are_checked_without_being_quoted() {
        let slack = SignatureScheme::Slack;
        assert!(check_secret(slack, SLACK_SECRET).is_ok());
        assert!(check_secret(SignatureScheme::Stripe, "whsec_test_secret").is_ok());
        let long = "k".repeat(257);
        for bad in [
            "",
            "short-secret",
            "has a space in it!!",
            "tab\tinside-the-secret",
            &long,
        ] {
            for scheme in [SignatureScheme::Slack, SignatureScheme::Stripe] {
                let err = check_secret(scheme, bad).unwrap_err();
                assert_eq!(err.reason_code(), "bad_secret");
                assert!(bad.is_empty() || !err.to_string().contains(bad), "{err}");
            }
        }
        let err = check_secret(SignatureScheme::StandardWebhooks, SLACK_SECRET).unwrap_err();
        assert!(err.to_string().contains("whsec_"), "{err}");
    }
}
