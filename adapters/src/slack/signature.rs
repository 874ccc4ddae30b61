//! Slack's request signing: `v0=` and the hex HMAC-SHA256 of `v0:{timestamp}:{raw body}`, keyed
//! with the app's signing secret taken as plain UTF-8.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::webhook::{SignatureError, check_timestamp};

/// Header carrying the request signature.
pub const SIGNATURE_HEADER: &str = "x-slack-signature";
/// Header carrying the Unix timestamp, in seconds, at which Slack signed the request.
pub const TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";

const VERSION_PREFIX: &str = "v0=";
const MAC_HEX_LEN: usize = 64;

/// Verifies a request from Slack over the exact body bytes received. The header values are
/// passed as received (`None` when absent); `now_secs` is the receiver's clock in Unix seconds.
///
/// Checks, in order: both headers present, body non-empty, the timestamp well-formed and within
/// [`crate::webhook::TOLERANCE_SECS`] either way (the same rules as Standard Webhooks), the
/// signature of the form `v0=` followed by 64 hex digits, and a constant-time match. Slack sends
/// lowercase hex; uppercase hex digits are accepted too, since they encode the same MAC.
pub fn verify_slack_signature(
    signing_secret: &SecretString,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), SignatureError> {
    let timestamp = timestamp.ok_or(SignatureError::MissingHeader(TIMESTAMP_HEADER))?;
    let signature = signature.ok_or(SignatureError::MissingHeader(SIGNATURE_HEADER))?;
    if body.is_empty() {
        return Err(SignatureError::EmptyBody);
    }
    check_timestamp(timestamp, now_secs)?;
    let provided = parse_signature(signature)?;
    let secret = signing_secret.expose_secret();
    if secret.is_empty() {
        return Err(SignatureError::BadSecret("signing secret is empty".into()));
    }
    let expected = mac(secret, timestamp, body);
    if bool::from(provided.ct_eq(&expected)) {
        Ok(())
    } else {
        Err(SignatureError::NoMatchingSignature)
    }
}

/// The `X-Slack-Signature` value Slack would send for `body` at `timestamp`.
pub fn sign_slack(signing_secret: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(signing_secret, &timestamp.to_string(), body);
    format!("{VERSION_PREFIX}{}", hex::encode(tag))
}

fn mac(secret: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

fn parse_signature(header: &str) -> Result<[u8; 32], SignatureError> {
    let hex_part = header
        .strip_prefix(VERSION_PREFIX)
        .ok_or(SignatureError::MalformedSignature)?;
    if hex_part.len() != MAC_HEX_LEN {
        return Err(SignatureError::MalformedSignature);
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).map_err(|_| SignatureError::MalformedSignature)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const TS: i64 = 1_531_420_618;
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const EXPECTED: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    fn secret() -> SecretString {
        SecretString::from(SECRET)
    }

    fn verify(ts: &str, sig: &str, body: &[u8], now: i64) -> Result<(), SignatureError> {
        verify_slack_signature(&secret(), Some(ts), Some(sig), body, now)
    }

    #[test]
    fn slacks_worked_example_verifies() {
        assert_eq!(
            verify(&TS.to_string(), EXPECTED, BODY.as_bytes(), TS + 42),
            Ok(())
        );
    }

    #[test]
    fn signing_reproduces_slacks_worked_example() {
        assert_eq!(sign_slack(SECRET, TS, BODY.as_bytes()), EXPECTED);
    }

    #[test]
    fn a_changed_body_timestamp_or_secret_fails() {
        let ts = TS.to_string();
        let mut body = BODY.as_bytes().to_vec();
        body.push(b'&');
        assert_eq!(
            verify(&ts, EXPECTED, &body, TS),
            Err(SignatureError::NoMatchingSignature)
        );
        let later = (TS + 1).to_string();
        assert_eq!(
            verify(&later, EXPECTED, BODY.as_bytes(), TS),
            Err(SignatureError::NoMatchingSignature)
        );
        let other = SecretString::from("8f742231b10e8888abcd99yyyzzz85a6");
        let res = verify_slack_signature(&other, Some(&ts), Some(EXPECTED), BODY.as_bytes(), TS);
        assert_eq!(res, Err(SignatureError::NoMatchingSignature));
    }

    #[test]
    fn the_secret_is_used_as_text_not_decoded() {
        let as_base64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, SECRET);
        assert_ne!(sign_slack(&as_base64, TS, BODY.as_bytes()), EXPECTED);
    }

    #[test]
    fn stale_and_future_timestamps_fail_with_their_skew() {
        let ts = TS.to_string();
        assert_eq!(verify(&ts, EXPECTED, BODY.as_bytes(), TS + 300), Ok(()));
        assert_eq!(verify(&ts, EXPECTED, BODY.as_bytes(), TS - 300), Ok(()));
        assert_eq!(
            verify(&ts, EXPECTED, BODY.as_bytes(), TS + 301),
            Err(SignatureError::TimestampOutOfTolerance { skew_secs: 301 })
        );
        assert_eq!(
            verify(&ts, EXPECTED, BODY.as_bytes(), TS - 301),
            Err(SignatureError::TimestampOutOfTolerance { skew_secs: -301 })
        );
    }

    #[test]
    fn malformed_timestamps_are_timestamp_errors() {
        for ts in ["", "NaN", "-1531420618", "1531420618.0", "1531420618000000"] {
            let err = verify(ts, EXPECTED, BODY.as_bytes(), TS).unwrap_err();
            assert!(
                matches!(err, SignatureError::MalformedTimestamp(_)),
                "{ts:?}"
            );
        }
        let millis = (TS * 1000).to_string();
        let err = verify(&millis, EXPECTED, BODY.as_bytes(), TS).unwrap_err();
        assert!(err.to_string().contains("milliseconds"), "{err}");
    }

    #[test]
    fn missing_headers_are_named() {
        let ts = TS.to_string();
        let s = secret();
        let res = verify_slack_signature(&s, None, Some(EXPECTED), BODY.as_bytes(), TS);
        assert_eq!(res, Err(SignatureError::MissingHeader(TIMESTAMP_HEADER)));
        let res = verify_slack_signature(&s, Some(&ts), None, BODY.as_bytes(), TS);
        assert_eq!(res, Err(SignatureError::MissingHeader(SIGNATURE_HEADER)));
    }

    #[test]
    fn an_empty_body_fails() {
        let sig = sign_slack(SECRET, TS, b"");
        assert_eq!(
            verify(&TS.to_string(), &sig, b"", TS),
            Err(SignatureError::EmptyBody)
        );
    }

    #[test]
    fn uppercase_hex_is_accepted() {
        let upper = format!("v0={}", EXPECTED.trim_start_matches("v0=").to_uppercase());
        assert_eq!(verify(&TS.to_string(), &upper, BODY.as_bytes(), TS), Ok(()));
    }

    #[test]
    fn malformed_signatures_are_refused_as_such() {
        let hex_part = EXPECTED.trim_start_matches("v0=");
        let cases = [
            String::new(),
            hex_part.to_owned(),
            format!("v1={hex_part}"),
            format!("V0={hex_part}"),
            format!("v0={}", &hex_part[1..]),
            format!("v0={hex_part}0"),
            format!("v0={}zz", &hex_part[2..]),
            format!("v0= {}", &hex_part[1..]),
            format!("{EXPECTED} {EXPECTED}"),
            format!("v0={}", "é".repeat(32)),
            "v0=".repeat(10_000),
        ];
        for sig in cases {
            let res = verify(&TS.to_string(), &sig, BODY.as_bytes(), TS);
            assert_eq!(res, Err(SignatureError::MalformedSignature), "{sig:.40}");
        }
    }

    #[test]
    fn an_empty_signing_secret_is_refused() {
        let empty = SecretString::from("");
        let sig = sign_slack("", TS, BODY.as_bytes());
        let res = verify_slack_signature(
            &empty,
            Some(&TS.to_string()),
            Some(&sig),
            BODY.as_bytes(),
            TS,
        );
        assert_eq!(res.unwrap_err().reason_code(), "bad_secret");
    }
}
