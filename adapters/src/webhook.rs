//! Webhook signatures in the Standard Webhooks scheme (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`; HMAC-SHA256 under the key of a `whsec_` secret), and the timestamp rules
//! every scheme here shares, Slack's included. A source chooses its scheme
//! ([`steward_core::SignatureScheme`]); [`verify_delivery`] verifies under any of them: Standard
//! Webhooks here, Slack's `v0` through [`crate::slack::verify_slack_signature`], and Stripe's
//! `Stripe-Signature` in [`stripe`].
//!
//! Verification works on the exact bytes received and never parses the body: a body is only
//! trusted, and only then parsed, once its signature has been checked. Checks run in a fixed
//! order so that each failure has one stable reason: missing headers, the delivery id, an empty
//! body, the timestamp and its tolerance, and last the signature itself. A timestamp problem is
//! therefore always reported as such, apart from a bad signature, with the clock difference.

use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use secrecy::{ExposeSecret, SecretSlice};
use serde_json::Value;
use sha2::Sha256;
use steward_core::IncidentRef;
use subtle::ConstantTimeEq;

mod schemes;
pub mod stripe;

pub use schemes::{
    BODY_DELIVERY_ID_PREFIX, body_delivery_id, check_secret, generate_secret, verify_delivery,
};

/// How far, in seconds, a delivery's timestamp may lie from the receiver's clock, either way.
pub const TOLERANCE_SECS: i64 = 300;

/// Header carrying the delivery id.
pub const ID_HEADER: &str = "webhook-id";
/// Header carrying the Unix timestamp, in seconds, at which the delivery was signed.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// Header carrying the space-separated list of signatures.
pub const SIGNATURE_HEADER: &str = "webhook-signature";

const SECRET_PREFIX: &str = "whsec_";
const MIN_KEY_BYTES: usize = 24;
const MAX_KEY_BYTES: usize = 64;
const GENERATED_KEY_BYTES: usize = 32;
const MAX_ID_BYTES: usize = 256;
const MAX_SIGNATURE_HEADER_BYTES: usize = 8 * 1024;
const MAX_SIGNATURE_ENTRIES: usize = 16;
const MAC_BYTES: usize = 32;
const SIGNATURE_VERSION: &str = "v1";

/// Seconds timestamps have at most 12 digits for the next 30,000 years. One more digit is still
/// parsed, so that a timestamp sent in milliseconds is reported as out of tolerance with a hint
/// instead of as garbage.
const MAX_TIMESTAMP_DIGITS: usize = 13;

/// A timestamp this far in the future is taken to be in milliseconds: a seconds value with 13
/// digits lies at least this far ahead of any clock reading before the year 2286.
const MILLIS_HINT_SECS: u64 = 900_000_000_000;

/// Base64 with the standard alphabet, accepting input with or without padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

type HmacSha256 = Hmac<Sha256>;

/// Why a signed request was refused. Messages never echo header values or secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A required header is absent. An empty `webhook-id` counts as absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// The timestamp header is not a whole, unsigned number of seconds. Holds a short
    /// description of what is wrong, never the value itself.
    #[error("malformed timestamp: {0}")]
    MalformedTimestamp(String),
    /// The timestamp is further than [`TOLERANCE_SECS`] from the receiver's clock.
    #[error("{}", describe_skew(.skew_secs))]
    TimestampOutOfTolerance {
        /// Receiver's clock minus the timestamp: positive when the timestamp is old, negative
        /// when it lies in the future.
        skew_secs: i64,
    },
    /// The signature header holds no entry that can be parsed, is too large, or the delivery
    /// id is unusable (longer than 256 bytes, or anything but visible ASCII). The id is part of
    /// the signed content, so a delivery with such an id has no well-formed signature envelope.
    #[error("malformed signature header or unusable delivery id")]
    MalformedSignature,
    /// The signature header parses but no entry matches the payload under any secret.
    #[error("no signature matches the payload")]
    NoMatchingSignature,
    /// The body is empty; nothing that was signed can be empty.
    #[error("request body is empty")]
    EmptyBody,
    /// The configured secret cannot be used. Holds what is wrong with it, never the secret.
    #[error("unusable signing secret: {0}")]
    BadSecret(String),
}

impl SignatureError {
    /// A stable, machine-readable code for metrics, audit entries and API responses.
    pub fn reason_code(&self) -> &'static str {
        match self {
            Self::MissingHeader(_) => "missing_header",
            Self::MalformedTimestamp(_) => "timestamp_malformed",
            Self::TimestampOutOfTolerance { .. } => "timestamp_out_of_tolerance",
            Self::MalformedSignature => "signature_malformed",
            Self::NoMatchingSignature => "signature_mismatch",
            Self::EmptyBody => "empty_body",
            Self::BadSecret(_) => "bad_secret",
        }
    }

    /// Whether the request failed on its timestamp (a drifting clock or a replay) rather than
    /// on its signature.
    pub fn is_timestamp_problem(&self) -> bool {
        matches!(
            self,
            Self::MalformedTimestamp(_) | Self::TimestampOutOfTolerance { .. }
        )
    }
}

fn describe_skew(skew_secs: &i64) -> String {
    let skew = *skew_secs;
    if skew >= 0 {
        return format!("timestamp is {skew} s old, outside the {TOLERANCE_SECS} s tolerance");
    }
    let ahead = skew.unsigned_abs();
    let hint = if ahead >= MILLIS_HINT_SECS {
        "; it looks like milliseconds, not seconds"
    } else {
        ""
    };
    format!("timestamp is {ahead} s in the future, outside the {TOLERANCE_SECS} s tolerance{hint}")
}

/// The decoded key of a Standard Webhooks `whsec_` secret.
#[derive(Clone)]
pub struct WebhookSecret {
    key: SecretSlice<u8>,
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSecret")
            .field("key", &"[redacted]")
            .finish()
    }
}

impl WebhookSecret {
    /// Parses `whsec_` followed by the base64 (standard alphabet, padding optional) of a key of
    /// 24 to 64 bytes, as the Standard Webhooks spec prescribes.
    pub fn parse(whsec: &str) -> Result<Self, SignatureError> {
        let encoded = whsec
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| SignatureError::BadSecret("missing the whsec_ prefix".into()))?;
        let key = BASE64.decode(encoded).map_err(|_| {
            SignatureError::BadSecret("not valid base64 after the whsec_ prefix".into())
        })?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(SignatureError::BadSecret(format!(
                "key is {} bytes; expected {MIN_KEY_BYTES} to {MAX_KEY_BYTES}",
                key.len()
            )));
        }
        Ok(Self {
            key: SecretSlice::from(key),
        })
    }

    /// A new secret: `whsec_` followed by the base64 of 32 bytes from the operating system's
    /// random number generator.
    pub fn generate() -> String {
        let mut key = [0u8; GENERATED_KEY_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut key);
        format!("{SECRET_PREFIX}{}", BASE64.encode(key))
    }

    /// HMAC-SHA256 over `{id}.{timestamp}.{body}`.
    fn tag(&self, id: &str, timestamp: &str, body: &[u8]) -> [u8; MAC_BYTES] {
        let mut mac = HmacSha256::new_from_slice(self.key.expose_secret())
            .expect("HMAC accepts keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

/// A delivery whose signature checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDelivery {
    /// The `webhook-id`, the key to deduplicate deliveries on.
    pub id: String,
    /// The `webhook-timestamp`, in Unix seconds.
    pub timestamp: i64,
}

/// Verifies a Standard Webhooks delivery against one secret. The header values are passed as
/// received (`None` when absent) and `now_secs` is the receiver's clock in Unix seconds.
///
/// Order of checks: each header present; the id non-empty ([`SignatureError::MissingHeader`]),
/// at most 256 bytes and visible ASCII ([`SignatureError::MalformedSignature`]); the body
/// non-empty; the timestamp well-formed and within [`TOLERANCE_SECS`]; at least one parseable
/// entry in the signature header (at most 8 KiB and 16 entries); and a `v1` entry that matches,
/// compared in constant time. Entries of other versions (`v1a`, `v2`, …) are skipped.
pub fn verify_standard(
    secret: &WebhookSecret,
    id: Option<&str>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<VerifiedDelivery, SignatureError> {
    verify_standard_any(
        std::slice::from_ref(secret),
        id,
        timestamp,
        signature,
        body,
        now_secs,
    )
}

/// Like [`verify_standard`], but passes if any of `secrets` produced a matching signature, so
/// that an old and a new secret can both be accepted while a rotation is under way. An empty
/// list of secrets is a [`SignatureError::BadSecret`]: nothing can verify against no key.
pub fn verify_standard_any(
    secrets: &[WebhookSecret],
    id: Option<&str>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<VerifiedDelivery, SignatureError> {
    let id = id.ok_or(SignatureError::MissingHeader(ID_HEADER))?;
    let timestamp_raw = timestamp.ok_or(SignatureError::MissingHeader(TIMESTAMP_HEADER))?;
    let signature = signature.ok_or(SignatureError::MissingHeader(SIGNATURE_HEADER))?;
    check_id(id)?;
    if body.is_empty() {
        return Err(SignatureError::EmptyBody);
    }
    let timestamp = check_timestamp(timestamp_raw, now_secs)?;
    let candidates = parse_signature_header(signature)?;
    if secrets.is_empty() {
        return Err(SignatureError::BadSecret("no secret configured".into()));
    }
    let matched = secrets.iter().any(|secret| {
        let expected = secret.tag(id, timestamp_raw, body);
        candidates
            .iter()
            .any(|candidate| bool::from(candidate.ct_eq(&expected)))
    });
    if !matched {
        return Err(SignatureError::NoMatchingSignature);
    }
    Ok(VerifiedDelivery {
        id: id.to_owned(),
        timestamp,
    })
}

/// The `webhook-signature` value for a delivery: `v1,` followed by the base64 of the MAC.
pub fn sign_standard(secret: &WebhookSecret, id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = secret.tag(id, &timestamp.to_string(), body);
    format!("{SIGNATURE_VERSION},{}", BASE64.encode(tag))
}

/// Finds the incident a verified delivery names, by a source's JSON pointers (RFC 6901): the
/// first `sys_id_pointers` entry whose value is a valid sys_id, else the first `number_pointers`
/// entry whose value is a valid incident number. Values that are not strings, and strings that
/// [`IncidentRef`] refuses, are skipped. Webhook intake calls this on the parsed body; it is
/// public so that the extraction can be exercised on its own.
pub fn incident_at(
    payload: &Value,
    sys_id_pointers: &[String],
    number_pointers: &[String],
) -> Option<IncidentRef> {
    let at = |p: &String| payload.pointer(p).and_then(Value::as_str);
    sys_id_pointers
        .iter()
        .filter_map(at)
        .find_map(IncidentRef::sys_id)
        .or_else(|| {
            number_pointers
                .iter()
                .filter_map(at)
                .find_map(IncidentRef::number)
        })
}

/// The change a delivery reports, as `{sys_id}@{unix ms}`, when the body carries the record's
/// `sys_updated_on` beside the sys_id a pointer found: for the sys_id pointer `/incident/sys_id`
/// the field read is `/incident/sys_updated_on`, in ServiceNow's `YYYY-MM-DD HH:MM:SS` (UTC).
/// The ServiceNow catch-up pass names the changes it starts runs for the same way, so a
/// delivery that arrives after the pass dealt with its change is recognised as a copy. None
/// when the body has no such field, or one that is not a ServiceNow time.
pub fn change_at(payload: &Value, sys_id_pointers: &[String]) -> Option<String> {
    sys_id_pointers.iter().find_map(|pointer| {
        let sys_id = payload.pointer(pointer).and_then(Value::as_str)?;
        IncidentRef::sys_id(sys_id)?;
        let parent = pointer.rsplit_once('/').map(|(parent, _)| parent)?;
        let updated = payload
            .pointer(&format!("{parent}/sys_updated_on"))
            .and_then(Value::as_str)?;
        let at = crate::servicenow::parse_time(updated)?;
        Some(change_key(sys_id, at))
    })
}

/// The name of one incident change: its sys_id and its `sys_updated_on` in Unix ms.
pub fn change_key(sys_id: &str, updated_ms: i64) -> String {
    format!("{sys_id}@{updated_ms}")
}

fn check_id(id: &str) -> Result<(), SignatureError> {
    if id.is_empty() {
        return Err(SignatureError::MissingHeader(ID_HEADER));
    }
    let visible_ascii = id.bytes().all(|b| b.is_ascii_graphic());
    if id.len() > MAX_ID_BYTES || !visible_ascii {
        return Err(SignatureError::MalformedSignature);
    }
    Ok(())
}

/// The `v1` MACs in a signature header. Fails if the header is oversized or holds no entry of
/// the form `<version>,<value>` that can be used; entries of other versions count as parseable
/// but yield no candidate.
fn parse_signature_header(header: &str) -> Result<Vec<[u8; MAC_BYTES]>, SignatureError> {
    if header.len() > MAX_SIGNATURE_HEADER_BYTES {
        return Err(SignatureError::MalformedSignature);
    }
    let entries: Vec<&str> = header.split_ascii_whitespace().collect();
    if entries.len() > MAX_SIGNATURE_ENTRIES {
        return Err(SignatureError::MalformedSignature);
    }
    let mut parseable = 0usize;
    let mut candidates = Vec::new();
    for entry in entries {
        match parse_entry(entry) {
            Entry::V1(mac) => {
                parseable += 1;
                candidates.push(mac);
            }
            Entry::OtherVersion => parseable += 1,
            Entry::Unparseable => {}
        }
    }
    if parseable == 0 {
        return Err(SignatureError::MalformedSignature);
    }
    Ok(candidates)
}

enum Entry {
    V1([u8; MAC_BYTES]),
    OtherVersion,
    Unparseable,
}

fn parse_entry(entry: &str) -> Entry {
    let Some((version, value)) = entry.split_once(',') else {
        return Entry::Unparseable;
    };
    let version_ok = version.len() > 1
        && version.starts_with('v')
        && version.bytes().all(|b| b.is_ascii_alphanumeric());
    if !version_ok || value.is_empty() {
        return Entry::Unparseable;
    }
    if version != SIGNATURE_VERSION {
        return Entry::OtherVersion;
    }
    BASE64
        .decode(value)
        .ok()
        .and_then(|bytes| <[u8; MAC_BYTES]>::try_from(bytes).ok())
        .map_or(Entry::Unparseable, Entry::V1)
}

/// Parses a signing timestamp and checks it against the receiver's clock. Shared by every
/// scheme in this crate.
pub(crate) fn check_timestamp(raw: &str, now_secs: i64) -> Result<i64, SignatureError> {
    let timestamp = parse_timestamp(raw)?;
    let skew_secs = now_secs.saturating_sub(timestamp);
    if skew_secs.unsigned_abs() > TOLERANCE_SECS.unsigned_abs() {
        return Err(SignatureError::TimestampOutOfTolerance { skew_secs });
    }
    Ok(timestamp)
}

/// Accepts only plain decimal digits: no sign, whitespace, decimal point or exponent, no
/// leading zero (so a timestamp has one spelling), and at most 13 digits.
fn parse_timestamp(raw: &str) -> Result<i64, SignatureError> {
    let malformed = |what: &str| Err(SignatureError::MalformedTimestamp(what.to_owned()));
    if raw.is_empty() {
        return malformed("empty");
    }
    if !raw.bytes().all(|b| b.is_ascii_digit()) {
        return malformed(describe_non_digits(raw));
    }
    if raw.len() > MAX_TIMESTAMP_DIGITS {
        return Err(SignatureError::MalformedTimestamp(format!(
            "{} digits; expected Unix seconds",
            raw.len()
        )));
    }
    if raw.len() > 1 && raw.starts_with('0') {
        return malformed("has a leading zero");
    }
    raw.parse::<i64>()
        .or_else(|_| malformed("not a whole number of seconds"))
}

fn describe_non_digits(raw: &str) -> &'static str {
    let numeric_looking = |c: char| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-');
    if raw.starts_with(['+', '-']) {
        "has a sign; expected unsigned Unix seconds"
    } else if raw.chars().any(|c| c.is_whitespace()) {
        "contains whitespace"
    } else if raw.chars().all(numeric_looking) {
        "not a whole number of seconds"
    } else {
        "not a decimal number"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET_A: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const ID_A: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TS_A: i64 = 1_649_367_553;
    const BODY_A: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SIG_A: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";
    const NEGATIVE_SIGS: [&str; 4] = [
        "v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU=",
        "v1,tFtCZ5RDCPxzWQRWXWPgrCgE2frDBe9gjpbWQxnVfsQ=",
        "v1,Mm7xgUVICxZfQ3bgf0h0Dof65L/IFx+PnZvnDWPCX6Q=",
        "v1,9DfC1c3eeOrXB6w/5dIDydLNQaEyww5KalE5jLBZucE=",
    ];

    fn secret_a() -> WebhookSecret {
        WebhookSecret::parse(SECRET_A).expect("vector A secret parses")
    }

    fn verify_a(
        id: &str,
        ts: &str,
        sig: &str,
        body: &[u8],
    ) -> Result<VerifiedDelivery, SignatureError> {
        verify_standard(&secret_a(), Some(id), Some(ts), Some(sig), body, TS_A)
    }

    fn verify_at(ts: &str, now: i64) -> Result<VerifiedDelivery, SignatureError> {
        let secret = secret_a();
        let sig = match ts.parse::<i64>() {
            Ok(parsed) => sign_standard(&secret, ID_A, parsed, BODY_A),
            Err(_) => SIG_A.to_owned(),
        };
        verify_standard(&secret, Some(ID_A), Some(ts), Some(&sig), BODY_A, now)
    }

    #[test]
    fn published_vector_a_verifies() {
        let delivery = verify_a(ID_A, &TS_A.to_string(), SIG_A, BODY_A).expect("vector A");
        assert_eq!(
            delivery,
            VerifiedDelivery {
                id: ID_A.into(),
                timestamp: TS_A
            }
        );
    }

    #[test]
    fn signing_reproduces_vector_a() {
        assert_eq!(sign_standard(&secret_a(), ID_A, TS_A, BODY_A), SIG_A);
    }

    #[test]
    fn published_negative_signatures_do_not_verify() {
        for sig in NEGATIVE_SIGS {
            assert_eq!(
                verify_a(ID_A, &TS_A.to_string(), sig, BODY_A),
                Err(SignatureError::NoMatchingSignature),
                "{sig}"
            );
        }
    }

    #[test]
    fn a_later_matching_entry_in_the_list_passes() {
        let header = format!("{} {}  {SIG_A}", NEGATIVE_SIGS[0], NEGATIVE_SIGS[1]);
        assert!(verify_a(ID_A, &TS_A.to_string(), &header, BODY_A).is_ok());
    }

    #[test]
    fn entries_of_other_versions_are_ignored_not_rejected() {
        let mac = SIG_A.trim_start_matches("v1,");
        let header = format!("v2,{mac} v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe8= {SIG_A}");
        assert!(verify_a(ID_A, &TS_A.to_string(), &header, BODY_A).is_ok());
        let only_other_versions = format!("v2,{mac} v1a,{mac}");
        assert_eq!(
            verify_a(ID_A, &TS_A.to_string(), &only_other_versions, BODY_A),
            Err(SignatureError::NoMatchingSignature)
        );
    }

    #[test]
    fn verification_covers_the_exact_received_bytes() {
        let secret = secret_a();
        let body = "{ \"name\" :\t\"Ren\\u00e9e\",\n  \"n\": 1.50 }".as_bytes();
        let sig = sign_standard(&secret, ID_A, TS_A, body);
        let ts = TS_A.to_string();
        let ok = verify_standard(&secret, Some(ID_A), Some(&ts), Some(&sig), body, TS_A);
        assert!(ok.is_ok());

        let value: serde_json::Value = serde_json::from_slice(body).expect("test body is JSON");
        let reserialized = serde_json::to_vec(&value).expect("serializes");
        assert_ne!(reserialized, body);
        let res = verify_standard(
            &secret,
            Some(ID_A),
            Some(&ts),
            Some(&sig),
            &reserialized,
            TS_A,
        );
        assert_eq!(res, Err(SignatureError::NoMatchingSignature));
    }

    #[test]
    fn an_empty_body_fails_even_when_signed() {
        let secret = secret_a();
        let sig = sign_standard(&secret, ID_A, TS_A, b"");
        let ts = TS_A.to_string();
        let res = verify_standard(&secret, Some(ID_A), Some(&ts), Some(&sig), b"", TS_A);
        assert_eq!(res, Err(SignatureError::EmptyBody));
    }

    #[test]
    fn timestamps_within_300_seconds_either_way_pass() {
        assert!(verify_at(&TS_A.to_string(), TS_A + 300).is_ok());
        assert!(verify_at(&TS_A.to_string(), TS_A - 300).is_ok());
    }

    #[test]
    fn a_timestamp_301_seconds_old_fails_with_its_skew() {
        let err = verify_at(&TS_A.to_string(), TS_A + 301).unwrap_err();
        assert_eq!(
            err,
            SignatureError::TimestampOutOfTolerance { skew_secs: 301 }
        );
        assert!(err.is_timestamp_problem());
        assert_eq!(
            err.to_string(),
            "timestamp is 301 s old, outside the 300 s tolerance"
        );
    }

    #[test]
    fn a_timestamp_301_seconds_in_the_future_fails_with_its_skew() {
        let err = verify_at(&TS_A.to_string(), TS_A - 301).unwrap_err();
        assert_eq!(
            err,
            SignatureError::TimestampOutOfTolerance { skew_secs: -301 }
        );
        assert!(err.is_timestamp_problem());
        assert!(err.to_string().contains("301 s in the future"));
        assert!(!err.to_string().contains("milliseconds"));
    }

    #[test]
    fn a_timestamp_in_milliseconds_is_out_of_tolerance_with_a_hint() {
        let millis = TS_A * 1000;
        let err = verify_at(&millis.to_string(), TS_A).unwrap_err();
        assert_eq!(
            err,
            SignatureError::TimestampOutOfTolerance {
                skew_secs: TS_A - millis
            }
        );
        assert!(err.to_string().contains("milliseconds"), "{err}");
    }

    #[test]
    fn malformed_timestamps_are_timestamp_errors_not_signature_errors() {
        let cases = [
            "",
            "-5",
            "NaN",
            "1.5e9",
            "abc",
            " 1649367553",
            "1649367553 ",
            "+1649367553",
            "0x62500",
            "01649367553",
            "16493675530000",
            "١٦٤٩",
            "inf",
        ];
        for ts in cases {
            let err = verify_at(ts, TS_A).unwrap_err();
            assert!(
                matches!(err, SignatureError::MalformedTimestamp(_)),
                "{ts:?}: {err:?}"
            );
            assert!(err.is_timestamp_problem());
            assert_eq!(err.reason_code(), "timestamp_malformed");
        }
    }

    #[test]
    fn malformed_timestamp_messages_do_not_echo_the_value() {
        let hostile = format!("{}<script>", "9".repeat(100));
        let err = verify_at(&hostile, TS_A).unwrap_err();
        assert!(!err.to_string().contains("<script>"));
        assert!(err.to_string().len() < 80, "{err}");
    }

    #[test]
    fn a_stale_timestamp_is_reported_before_a_bad_signature() {
        let ts = (TS_A - 1000).to_string();
        let err = verify_a(ID_A, &ts, NEGATIVE_SIGS[0], BODY_A).unwrap_err();
        assert!(err.is_timestamp_problem());
        assert_ne!(
            err.reason_code(),
            SignatureError::NoMatchingSignature.reason_code()
        );
    }

    #[test]
    fn missing_headers_are_named() {
        let s = secret_a();
        let ts = TS_A.to_string();
        let cases = [
            (None, Some(ts.as_str()), Some(SIG_A), ID_HEADER),
            (Some(ID_A), None, Some(SIG_A), TIMESTAMP_HEADER),
            (Some(ID_A), Some(ts.as_str()), None, SIGNATURE_HEADER),
            (Some(""), Some(ts.as_str()), Some(SIG_A), ID_HEADER),
        ];
        for (id, ts, sig, name) in cases {
            let res = verify_standard(&s, id, ts, sig, BODY_A, TS_A);
            assert_eq!(res, Err(SignatureError::MissingHeader(name)));
        }
    }

    #[test]
    fn unusable_delivery_ids_are_refused() {
        let ts = TS_A.to_string();
        for id in [
            "a".repeat(257),
            "msg 1".into(),
            "msg\u{e9}".into(),
            "msg\n1".into(),
        ] {
            let sig = sign_standard(&secret_a(), &id, TS_A, BODY_A);
            let res = verify_a(&id, &ts, &sig, BODY_A);
            assert_eq!(res, Err(SignatureError::MalformedSignature), "{id:?}");
        }
        let longest = "a".repeat(256);
        let sig = sign_standard(&secret_a(), &longest, TS_A, BODY_A);
        assert!(verify_a(&longest, &ts, &sig, BODY_A).is_ok());
    }

    #[test]
    fn garbage_signature_headers_are_malformed() {
        let ts = TS_A.to_string();
        let short_mac = BASE64.encode([7u8; 16]);
        let cases = [
            String::new(),
            "   ".into(),
            "nonsense".into(),
            "v1,".into(),
            ",abc".into(),
            "v1,!!!not-base64!!!".into(),
            format!("v1,{short_mac}"),
            SIG_A.trim_start_matches("v1,").into(),
            format!("V 1,{}", SIG_A.trim_start_matches("v1,")),
        ];
        for header in cases {
            let res = verify_a(ID_A, &ts, &header, BODY_A);
            assert_eq!(res, Err(SignatureError::MalformedSignature), "{header:?}");
        }
    }

    #[test]
    fn unparseable_entries_next_to_a_parseable_one_are_a_mismatch() {
        let header = format!("garbage v1,!!! {}", NEGATIVE_SIGS[2]);
        let res = verify_a(ID_A, &TS_A.to_string(), &header, BODY_A);
        assert_eq!(res, Err(SignatureError::NoMatchingSignature));
    }

    #[test]
    fn oversized_signature_headers_are_malformed() {
        let ts = TS_A.to_string();
        let too_many = std::iter::repeat_n(NEGATIVE_SIGS[0], 16)
            .chain([SIG_A])
            .collect::<Vec<_>>()
            .join(" ");
        let res = verify_a(ID_A, &ts, &too_many, BODY_A);
        assert_eq!(res, Err(SignatureError::MalformedSignature));

        let sixteen = std::iter::repeat_n(NEGATIVE_SIGS[0], 15)
            .chain([SIG_A])
            .collect::<Vec<_>>()
            .join(" ");
        assert!(verify_a(ID_A, &ts, &sixteen, BODY_A).is_ok());

        let too_long = format!("{SIG_A}{}", " ".repeat(MAX_SIGNATURE_HEADER_BYTES));
        let res = verify_a(ID_A, &ts, &too_long, BODY_A);
        assert_eq!(res, Err(SignatureError::MalformedSignature));
    }

    #[test]
    fn secrets_must_follow_the_whsec_format() {
        let cases = [
            ("C2FVsBQIhrscChlQIMV+b5sSYspob7oD", "prefix"),
            ("whsec_not*base64", "base64"),
            (&format!("whsec_{}", BASE64.encode([1u8; 16])), "16 bytes"),
            (&format!("whsec_{}", BASE64.encode([1u8; 65])), "65 bytes"),
            ("whsec_", "0 bytes"),
        ];
        for (raw, expected) in cases {
            let err = WebhookSecret::parse(raw).unwrap_err();
            assert_eq!(err.reason_code(), "bad_secret");
            assert!(err.to_string().contains(expected), "{err}");
        }
        assert!(WebhookSecret::parse(&format!("whsec_{}", BASE64.encode([1u8; 24]))).is_ok());
        assert!(WebhookSecret::parse(&format!("whsec_{}", BASE64.encode([1u8; 64]))).is_ok());
    }

    #[test]
    fn secret_errors_and_debug_output_do_not_reveal_the_key() {
        let key = "C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        let debug = format!("{:?}", secret_a());
        assert_eq!(debug, r#"WebhookSecret { key: "[redacted]" }"#);
        let err = WebhookSecret::parse(&format!("whsec_{key}!")).unwrap_err();
        assert!(!err.to_string().contains(key));
    }

    #[test]
    fn generated_secrets_parse_and_differ() {
        let a = WebhookSecret::generate();
        let b = WebhookSecret::generate();
        assert_ne!(a, b);
        assert!(a.starts_with("whsec_"));
        let decoded = BASE64
            .decode(a.trim_start_matches("whsec_"))
            .expect("base64");
        assert_eq!(decoded.len(), 32);
        assert!(WebhookSecret::parse(&a).is_ok());
    }

    #[test]
    fn any_secret_of_a_rotation_may_match() {
        let new = WebhookSecret::parse(&WebhookSecret::generate()).expect("generated");
        let ts = TS_A.to_string();
        let both = [new.clone(), secret_a()];
        let res = verify_standard_any(&both, Some(ID_A), Some(&ts), Some(SIG_A), BODY_A, TS_A);
        assert!(res.is_ok());
        let res = verify_standard_any(&[new], Some(ID_A), Some(&ts), Some(SIG_A), BODY_A, TS_A);
        assert_eq!(res, Err(SignatureError::NoMatchingSignature));
    }

    #[test]
    fn no_secret_at_all_is_a_bad_secret() {
        let ts = TS_A.to_string();
        let res = verify_standard_any(&[], Some(ID_A), Some(&ts), Some(SIG_A), BODY_A, TS_A);
        assert_eq!(res.unwrap_err().reason_code(), "bad_secret");
    }

    #[test]
    fn reason_codes_are_distinct() {
        let errors = [
            SignatureError::MissingHeader(ID_HEADER),
            SignatureError::MalformedTimestamp("empty".into()),
            SignatureError::TimestampOutOfTolerance { skew_secs: 1 },
            SignatureError::MalformedSignature,
            SignatureError::NoMatchingSignature,
            SignatureError::EmptyBody,
            SignatureError::BadSecret("x".into()),
        ];
        let codes: std::collections::HashSet<_> = errors.iter().map(|e| e.reason_code()).collect();
        assert_eq!(codes.len(), errors.len());
        let timestamp_problems = errors.iter().filter(|e| e.is_timestamp_problem()).count();
        assert_eq!(timestamp_problems, 2);
    }

    #[test]
    fn extreme_clock_values_do_not_overflow() {
        let err = verify_at(&TS_A.to_string(), i64::MIN).unwrap_err();
        assert!(
            matches!(err, SignatureError::TimestampOutOfTolerance { skew_secs } if skew_secs < 0)
        );
        let err = verify_at(&TS_A.to_string(), i64::MAX).unwrap_err();
        assert!(
            matches!(err, SignatureError::TimestampOutOfTolerance { skew_secs } if skew_secs > 0)
        );
    }

    fn flip(bytes: &[u8], index: usize, mask: u8) -> Vec<u8> {
        let mut out = bytes.to_vec();
        let i = index % out.len();
        out[i] ^= mask;
        out
    }

    proptest! {
        #[test]
        fn any_byte_flip_in_the_body_fails(index in any::<usize>(), mask in 1u8..) {
            let body = flip(BODY_A, index, mask);
            prop_assert!(verify_a(ID_A, &TS_A.to_string(), SIG_A, &body).is_err());
        }

        #[test]
        fn any_byte_flip_in_the_id_fails(index in any::<usize>(), mask in 1u8..) {
            let id = String::from_utf8_lossy(&flip(ID_A.as_bytes(), index, mask)).into_owned();
            prop_assert_ne!(&id, ID_A);
            prop_assert!(verify_a(&id, &TS_A.to_string(), SIG_A, BODY_A).is_err());
        }

        #[test]
        fn any_byte_flip_in_the_timestamp_fails(index in any::<usize>(), mask in 1u8..) {
            let ts = TS_A.to_string();
            let flipped = String::from_utf8_lossy(&flip(ts.as_bytes(), index, mask)).into_owned();
            prop_assert_ne!(&flipped, &ts);
            let res = verify_standard(
                &secret_a(), Some(ID_A), Some(&flipped), Some(SIG_A), BODY_A, TS_A,
            );
            prop_assert!(res.is_err());
        }

        #[test]
        fn what_is_signed_verifies(
            id in "[!-~]{1,256}",
            body in proptest::collection::vec(any::<u8>(), 1..512),
            ts in 0i64..10_000_000_000,
        ) {
            let secret = secret_a();
            let sig = sign_standard(&secret, &id, ts, &body);
            let res = verify_standard(
                &secret, Some(&id), Some(&ts.to_string()), Some(&sig), &body, ts,
            );
            prop_assert_eq!(res, Ok(VerifiedDelivery { id, timestamp: ts }));
        }
    }

    #[test]
    fn a_change_is_named_by_the_update_time_beside_the_sys_id() {
        let sys_id = "a9e30c7dc61122760116894de7bcc7bd";
        let pointers = vec!["/incident/sys_id".to_owned(), "/sys_id".to_owned()];
        let body = serde_json::json!({"incident": {"sys_id": sys_id,
            "sys_updated_on": "2026-01-02 03:04:05"}});
        assert_eq!(
            change_at(&body, &pointers),
            Some(format!("{sys_id}@1767323045000"))
        );
        let top = serde_json::json!({"sys_id": sys_id, "sys_updated_on": "2026-01-02 03:04:05"});
        assert_eq!(
            change_at(&top, &pointers),
            Some(format!("{sys_id}@1767323045000"))
        );
        for body in [
            serde_json::json!({"incident": {"sys_id": sys_id}}),
            serde_json::json!({"incident": {"sys_id": sys_id, "sys_updated_on": 1767323045}}),
            serde_json::json!({"incident": {"sys_id": sys_id,
                "sys_updated_on": "2026-02-30 00:00:00"}}),
            serde_json::json!({"incident": {"sys_id": sys_id,
                "sys_updated_on": "2026-01-02T03:04:05Z"}}),
            serde_json::json!({"incident": {"sys_id": "not a sys id",
                "sys_updated_on": "2026-01-02 03:04:05"}}),
            serde_json::json!({"incident": {"sys_updated_on": "2026-01-02 03:04:05"}}),
            serde_json::json!({"incident": {"sys_id": sys_id,
                "sys_updated_on": "x".repeat(100_000)}}),
            serde_json::json!([]),
        ] {
            assert_eq!(change_at(&body, &pointers), None, "{body}");
        }
        assert_eq!(change_at(&body, &[]), None);
        assert_eq!(change_key(sys_id, 5), format!("{sys_id}@5"));
    }
}
