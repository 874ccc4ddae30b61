//! Identifiers. A tenant id names its home region, so any node can tell where a tenant lives.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("tenant id must look like `us-acme` or `eu-acme` (region, dash, 1-63 of a-z 0-9 -)")]
    BadTenant,
    #[error("unknown region `{0}`; expected `us` or `eu`")]
    BadRegion(String),
    #[error("run id must be a UUID")]
    BadRun,
    #[error("source name must be 1-64 of a-z A-Z 0-9 _ -")]
    BadSource,
}

/// A data-residency region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    Us,
    Eu,
}

impl Region {
    /// The lowercase code used in ids and config (`us`, `eu`).
    pub fn as_str(self) -> &'static str {
        match self {
            Region::Us => "us",
            Region::Eu => "eu",
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Region {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "us" => Ok(Region::Us),
            "eu" => Ok(Region::Eu),
            other => Err(IdError::BadRegion(other.chars().take(16).collect())),
        }
    }
}

/// A tenant id such as `us-acme`: the home region, a dash, then a slug.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    /// Parses and validates a tenant id.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let (region, slug) = s.split_once('-').ok_or(IdError::BadTenant)?;
        region.parse::<Region>().map_err(|_| IdError::BadTenant)?;
        let ok = !slug.is_empty()
            && slug.len() <= 63
            && !slug.starts_with('-')
            && slug
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::BadTenant)
        }
    }

    /// The region this tenant is pinned to.
    pub fn region(&self) -> Region {
        if self.0.starts_with("eu-") {
            Region::Eu
        } else {
            Region::Us
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for TenantId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<TenantId> for String {
    fn from(t: TenantId) -> Self {
        t.0
    }
}

impl FromStr for TenantId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(uuid::Uuid);

        impl $name {
            /// A new, time-ordered id (UUIDv7), so newer ids sort later.
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7())
            }

            pub fn parse(s: &str) -> Result<Self, IdError> {
                uuid::Uuid::parse_str(s).map(Self).map_err(|_| IdError::BadRun)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.as_hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

uuid_id!(
    /// A run's id.
    RunId
);
uuid_id!(
    /// An approval request's id; it is what the Slack buttons carry.
    ApprovalId
);

/// The name of a tenant's webhook source (for example `servicenow`, `pagerduty`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SourceName(String);

impl SourceName {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::BadSource)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SourceName {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<SourceName> for String {
    fn from(s: SourceName) -> Self {
        s.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_name_their_region() {
        assert_eq!(TenantId::parse("eu-acme").unwrap().region(), Region::Eu);
        assert_eq!(TenantId::parse("us-a-1").unwrap().region(), Region::Us);
        for bad in [
            "acme", "xx-acme", "us-", "us--a", "us-ACME", "us-a b", "", "us-é",
        ] {
            assert_eq!(TenantId::parse(bad), Err(IdError::BadTenant), "{bad}");
        }
        assert!(TenantId::parse(&format!("us-{}", "a".repeat(64))).is_err());
    }

    #[test]
    fn run_ids_round_trip_and_sort_by_time() {
        let a = RunId::new();
        let b = RunId::new();
        assert!(a < b);
        assert_eq!(RunId::parse(&a.to_string()).unwrap(), a);
        assert!(RunId::parse("not-a-uuid").is_err());
    }
}
