//! The signature schemes a webhook source may be verified with. The name is chosen when the
//! source is created and stored with it; the verification itself lives in the adapters.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a webhook source signs its deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum SignatureScheme {
    /// Standard Webhooks v1: `webhook-id`, `webhook-timestamp`, `webhook-signature`, keyed with
    /// the base64-decoded part of a `whsec_` secret. What every source used before schemes
    /// could be chosen, and still the default.
    #[default]
    StandardWebhooks,
    /// Slack's request signing, `v0`: `X-Slack-Signature` and `X-Slack-Request-Timestamp`,
    /// keyed with the secret as plain UTF-8.
    Slack,
    /// Stripe's `Stripe-Signature: t=…,v1=…`, keyed with the whole secret string.
    Stripe,
}

/// A scheme name that is not one of [`SignatureScheme::NAMES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown signature scheme `{0}`; expected standard-webhooks, slack or stripe")]
pub struct UnknownScheme(String);

impl SignatureScheme {
    /// Every scheme, the default first.
    pub const ALL: [SignatureScheme; 3] = [Self::StandardWebhooks, Self::Slack, Self::Stripe];

    /// The stored and accepted names, in the order of [`SignatureScheme::ALL`].
    pub const NAMES: [&'static str; 3] = ["standard-webhooks", "slack", "stripe"];

    /// Parses a scheme name exactly as stored: lowercase, no other spelling.
    pub fn parse(name: &str) -> Result<Self, UnknownScheme> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| UnknownScheme(name.chars().take(32).collect()))
    }

    /// The scheme's name, as stored and as the API takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StandardWebhooks => Self::NAMES[0],
            Self::Slack => Self::NAMES[1],
            Self::Stripe => Self::NAMES[2],
        }
    }
}

impl fmt::Display for SignatureScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SignatureScheme {
    type Err = UnknownScheme;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for SignatureScheme {
    type Error = UnknownScheme;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<SignatureScheme> for &'static str {
    fn from(s: SignatureScheme) -> Self {
        s.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips() {
        for (scheme, name) in SignatureScheme::ALL.iter().zip(SignatureScheme::NAMES) {
            assert_eq!(scheme.as_str(), name);
            assert_eq!(SignatureScheme::parse(name), Ok(*scheme));
            let json = serde_json::to_string(scheme).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(
                serde_json::from_str::<SignatureScheme>(&json).unwrap(),
                *scheme
            );
        }
        assert_eq!(
            SignatureScheme::default(),
            SignatureScheme::StandardWebhooks
        );
    }

    #[test]
    fn other_spellings_are_unknown() {
        let long = "x".repeat(1000);
        for bad in [
            "",
            "Slack",
            "STRIPE",
            "standard_webhooks",
            " slack",
            "svix",
            &long,
        ] {
            let err = SignatureScheme::parse(bad).unwrap_err();
            assert!(
                err.to_string().contains("expected standard-webhooks"),
                "{err}"
            );
            assert!(err.to_string().len() < 120, "the name is clipped");
        }
        assert!(serde_json::from_str::<SignatureScheme>("\"hmac\"").is_err());
    }
}
