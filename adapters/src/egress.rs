//! The per-region allow-list of outbound hosts. A deployment serves one region; each region
//! lists, for each connector kind, the hosts a tenant homed there may be connected to. A pattern
//! is an exact host (`slack.com`, `127.0.0.1`, `[::1]`) or `*.` and a suffix (`*.service-now.com`
//! matches `acme.service-now.com` and `a.b.service-now.com`, never `service-now.com` itself,
//! `evil-service-now.com` or `service-now.com.evil.io`). Hosts compare case-insensitively and
//! without their port; internationalized names compare in their ASCII (punycode) form, which is
//! what URL parsing yields, and are never decoded. A wildcard never matches an IP literal.

use std::fmt;

use steward_core::Region;

/// The connector a URL is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressKind {
    Llm,
    ServiceNow,
    Slack,
    /// A tenant's SIEM endpoint, where its audit entries stream.
    Siem,
}

impl EgressKind {
    pub const ALL: [EgressKind; 4] = [
        EgressKind::Llm,
        EgressKind::ServiceNow,
        EgressKind::Slack,
        EgressKind::Siem,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EgressKind::Llm => "llm",
            EgressKind::ServiceNow => "servicenow",
            EgressKind::Slack => "slack",
            EgressKind::Siem => "siem",
        }
    }
}

impl fmt::Display for EgressKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One allowed host: exact, or every subdomain of a suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// The suffix with its leading dot (`.service-now.com`).
    Suffix(String),
}

impl HostPattern {
    /// Parses `host` or `*.suffix`. Refuses ports, paths, schemes, other wildcards and
    /// non-ASCII text (write an internationalized name in its `xn--` form).
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.trim().to_ascii_lowercase();
        let lower = lower.strip_suffix('.').unwrap_or(&lower);
        let bad = |why: &str| Err(format!("`{text}` is not a host pattern: {why}"));
        if lower.is_empty() {
            return bad("it is empty");
        }
        if !lower.is_ascii() {
            return bad("write an internationalized name in its xn-- (punycode) form");
        }
        if let Some(suffix) = lower.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') || !is_name(suffix) {
                return bad("`*.` must be followed by a host name");
            }
            return Ok(HostPattern::Suffix(format!(".{suffix}")));
        }
        if lower.contains('*') {
            return bad("the only wildcard is a leading `*.`");
        }
        let v6 = lower.trim_start_matches('[').trim_end_matches(']');
        if v6.parse::<std::net::Ipv6Addr>().is_ok() {
            return Ok(HostPattern::Exact(format!("[{v6}]")));
        }
        if lower.parse::<std::net::Ipv4Addr>().is_ok() || is_name(lower) {
            return Ok(HostPattern::Exact(lower.to_owned()));
        }
        bad("a host name or IP address without scheme, port or path")
    }

    /// Whether `host` (lowercase, as a parsed URL gives it) is allowed by this pattern.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let host = host.strip_suffix('.').unwrap_or(&host);
        match self {
            HostPattern::Exact(exact) => host == exact,
            HostPattern::Suffix(suffix) => {
                !is_ip(host) && host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

fn is_ip(host: &str) -> bool {
    host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok()
}

/// Dot-separated labels of letters, digits and hyphens, none empty.
fn is_name(text: &str) -> bool {
    text.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

/// One region's allowed hosts per connector kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionEgress {
    pub llm: Vec<HostPattern>,
    pub servicenow: Vec<HostPattern>,
    pub slack: Vec<HostPattern>,
    /// Empty by default: no SIEM host is known in advance, so each is listed by the operator.
    pub siem: Vec<HostPattern>,
}

impl RegionEgress {
    pub fn kind(&self, kind: EgressKind) -> &[HostPattern] {
        match kind {
            EgressKind::Llm => &self.llm,
            EgressKind::ServiceNow => &self.servicenow,
            EgressKind::Slack => &self.slack,
            EgressKind::Siem => &self.siem,
        }
    }

    pub fn kind_mut(&mut self, kind: EgressKind) -> &mut Vec<HostPattern> {
        match kind {
            EgressKind::Llm => &mut self.llm,
            EgressKind::ServiceNow => &mut self.servicenow,
            EgressKind::Slack => &mut self.slack,
            EgressKind::Siem => &mut self.siem,
        }
    }
}

/// The allow-lists of both regions. `Default` is the production lists: LLM `api.openai.com`
/// and `api.anthropic.com` for US, `api.mistral.ai` for EU; ServiceNow `*.service-now.com` and
/// Slack `slack.com` in both; no SIEM host. No loopback address is on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Egress {
    pub us: RegionEgress,
    pub eu: RegionEgress,
}

/// The hosts a test or demo setup adds to every list (`Egress::with_loopback`).
pub const LOOPBACK: [&str; 3] = ["127.0.0.1", "localhost", "[::1]"];

impl Default for Egress {
    fn default() -> Self {
        let list = |hosts: &[&str]| -> Vec<HostPattern> {
            hosts
                .iter()
                .map(|h| HostPattern::parse(h).expect("built-in host patterns parse"))
                .collect()
        };
        Self {
            us: RegionEgress {
                llm: list(&["api.openai.com", "api.anthropic.com"]),
                servicenow: list(&["*.service-now.com"]),
                slack: list(&["slack.com"]),
                siem: Vec::new(),
            },
            eu: RegionEgress {
                llm: list(&["api.mistral.ai"]),
                servicenow: list(&["*.service-now.com"]),
                slack: list(&["slack.com"]),
                siem: Vec::new(),
            },
        }
    }
}

impl Egress {
    /// These lists plus the loopback hosts for every kind in both regions: for tests and the
    /// demo, whose stand-ins listen on loopback.
    pub fn with_loopback(mut self) -> Self {
        for region in [Region::Us, Region::Eu] {
            for kind in EgressKind::ALL {
                let list = self.region_mut(region).kind_mut(kind);
                for host in LOOPBACK {
                    let pattern = HostPattern::parse(host).expect("loopback patterns parse");
                    if !list.contains(&pattern) {
                        list.push(pattern);
                    }
                }
            }
        }
        self
    }

    pub fn region(&self, region: Region) -> &RegionEgress {
        match region {
            Region::Us => &self.us,
            Region::Eu => &self.eu,
        }
    }

    pub fn region_mut(&mut self, region: Region) -> &mut RegionEgress {
        match region {
            Region::Us => &mut self.us,
            Region::Eu => &mut self.eu,
        }
    }

    /// Refuses `url` unless its host is on `region`'s list for `kind`.
    pub fn check(&self, region: Region, kind: EgressKind, url: &str) -> Result<(), EgressRefused> {
        let host = url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned));
        let Some(host) = host else {
            return Err(EgressRefused {
                kind,
                host: None,
                region,
                why: Refusal::Host,
            });
        };
        if self
            .region(region)
            .kind(kind)
            .iter()
            .any(|p| p.matches(&host))
        {
            Ok(())
        } else {
            Err(EgressRefused {
                kind,
                host: Some(host),
                region,
                why: Refusal::Host,
            })
        }
    }
}

/// Refuses `url` unless it is `https://`: where plain HTTP is not allowed (every profile but
/// `dev`, and test setups), this runs before the allow-list, when a URL is set and again before
/// a tenant's clients are built.
pub fn require_https(region: Region, kind: EgressKind, url: &str) -> Result<(), EgressRefused> {
    let parsed = url::Url::parse(url).ok();
    if parsed.as_ref().is_some_and(|u| u.scheme() == "https") {
        return Ok(());
    }
    Err(EgressRefused {
        kind,
        host: parsed
            .as_ref()
            .and_then(|u| u.host_str().map(str::to_owned)),
        region,
        why: Refusal::PlainHttp(parsed.map(|u| u.scheme().to_owned())),
    })
}

/// Why a connector URL may not be called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRefused {
    pub kind: EgressKind,
    /// `None` when the URL has no host.
    pub host: Option<String>,
    pub region: Region,
    pub why: Refusal,
}

/// Which rule refused a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The host is not on the region's allow-list for the kind.
    Host,
    /// The URL is not `https://` where plain HTTP is not allowed; the scheme it has, if it
    /// parsed.
    PlainHttp(Option<String>),
}

impl fmt::Display for EgressRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Refusal::PlainHttp(scheme) = &self.why {
            let scheme = scheme.as_deref().unwrap_or("no valid");
            return write!(
                f,
                "the {} endpoint URL must be https:// (it has {scheme} scheme): plain HTTP is \
                 allowed only in the dev profile and test setups",
                self.kind
            );
        }
        match &self.host {
            Some(host) => write!(
                f,
                "the {} endpoint host {host} is not allowed for tenants homed in {}",
                self.kind, self.region
            ),
            None => write!(
                f,
                "the {} endpoint URL has no host, so it is not allowed for tenants homed in {}",
                self.kind, self.region
            ),
        }
    }
}

impl std::error::Error for EgressRefused {}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> HostPattern {
        HostPattern::parse(text).unwrap()
    }

    #[test]
    fn exact_patterns_match_only_their_host() {
        assert!(p("slack.com").matches("slack.com"));
        assert!(!p("slack.com").matches("api.slack.com"));
        assert!(!p("slack.com").matches("slack.com.evil.io"));
        assert!(!p("slack.com").matches("evilslack.com"));
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let sn = p("*.service-now.com");
        assert!(sn.matches("acme.service-now.com"));
        assert!(sn.matches("a.b.service-now.com"));
        assert!(!sn.matches("service-now.com"));
        assert!(!sn.matches("evil-service-now.com"));
        assert!(!sn.matches("service-now.com.evil.io"));
        assert!(!sn.matches(".service-now.com"));
    }

    #[test]
    fn case_and_trailing_dots_do_not_matter() {
        assert!(p("API.OpenAI.com").matches("api.openai.com"));
        assert!(p("api.openai.com").matches("API.OPENAI.COM"));
        assert!(p("*.Service-Now.com").matches("ACME.service-now.COM"));
        assert!(p("slack.com.").matches("slack.com."));
    }

    #[test]
    fn patterns_refuse_ports_paths_schemes_and_odd_wildcards() {
        for bad in [
            "",
            "slack.com:443",
            "https://slack.com",
            "slack.com/api",
            "*",
            "*.",
            "a.*.com",
            "*service-now.com",
            "**.service-now.com",
            "bücher.example",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn urls_are_matched_by_host_whatever_the_port() {
        let e = Egress::default();
        let sn = EgressKind::ServiceNow;
        assert!(
            e.check(Region::Us, sn, "https://acme.service-now.com")
                .is_ok()
        );
        assert!(
            e.check(Region::Us, sn, "https://acme.service-now.com:8443/x")
                .is_ok()
        );
        assert!(
            e.check(Region::Us, sn, "https://evil-service-now.com")
                .is_err()
        );
        assert!(
            e.check(Region::Us, sn, "https://service-now.com.evil.io/")
                .is_err()
        );
        assert!(e.check(Region::Us, sn, "not a url").is_err());
    }

    #[test]
    fn ip_literals_match_exactly_and_never_by_wildcard() {
        assert!(p("127.0.0.1").matches("127.0.0.1"));
        assert!(!p("127.0.0.1").matches("127.0.0.2"));
        assert!(p("::1").matches("[::1]"));
        assert!(p("[::1]").matches("[::1]"));
        assert!(!p("*.0.0.1").matches("127.0.0.1"));
        let e = Egress::default().with_loopback();
        assert!(
            e.check(Region::Eu, EgressKind::Llm, "http://127.0.0.1:9/v1")
                .is_ok()
        );
        assert!(
            e.check(Region::Eu, EgressKind::Llm, "http://[::1]:9/v1")
                .is_ok()
        );
        assert!(
            e.check(Region::Eu, EgressKind::Llm, "http://localhost:9/v1")
                .is_ok()
        );
    }

    #[test]
    fn production_lists_hold_no_loopback() {
        let e = Egress::default();
        for region in [Region::Us, Region::Eu] {
            for kind in EgressKind::ALL {
                for url in ["http://127.0.0.1:1", "http://localhost:1", "http://[::1]:1"] {
                    assert!(e.check(region, kind, url).is_err(), "{region} {kind} {url}");
                }
            }
        }
    }

    #[test]
    fn plain_http_is_refused_with_its_reason() {
        for url in [
            "http://127.0.0.1:9/v1",
            "HTTP://acme.service-now.com",
            "ftp://x.io",
        ] {
            let refused = require_https(Region::Us, EgressKind::ServiceNow, url).unwrap_err();
            assert!(matches!(refused.why, Refusal::PlainHttp(Some(_))), "{url}");
            let text = refused.to_string();
            assert!(
                text.contains("servicenow endpoint URL must be https://"),
                "{text}"
            );
        }
        let refused = require_https(Region::Eu, EgressKind::Llm, "not a url").unwrap_err();
        assert_eq!(refused.why, Refusal::PlainHttp(None));
        assert!(refused.to_string().contains("no valid scheme"));
        assert!(require_https(Region::Us, EgressKind::Slack, "https://slack.com/api/").is_ok());
        assert!(require_https(Region::Us, EgressKind::Slack, "HTTPS://slack.com/api/").is_ok());
    }

    #[test]
    fn punycode_is_compared_as_written() {
        let pattern = p("xn--bcher-kva.example");
        assert!(pattern.matches("xn--bcher-kva.example"));
        assert!(!pattern.matches("bücher.example"));
        let mut e = Egress::default();
        e.us.llm = vec![pattern];
        // URL parsing turns a Unicode host into its punycode form, which is then compared.
        assert!(
            e.check(Region::Us, EgressKind::Llm, "https://bücher.example/v1")
                .is_ok()
        );
        assert!(
            e.check(
                Region::Us,
                EgressKind::Llm,
                "https://xn--bcher-kva.example.evil.io"
            )
            .is_err()
        );
        assert!(!p("*.service-now.com").matches("xn--service-now-abc.com"));
    }

    #[test]
    fn regions_have_their_own_llm_hosts_and_the_reason_names_all_three() {
        let e = Egress::default();
        assert!(
            e.check(Region::Us, EgressKind::Llm, "https://api.openai.com/v1")
                .is_ok()
        );
        let refused = e
            .check(Region::Eu, EgressKind::Llm, "https://api.openai.com/v1")
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "the llm endpoint host api.openai.com is not allowed for tenants homed in eu"
        );
        assert!(
            e.check(Region::Eu, EgressKind::Llm, "https://api.mistral.ai/v1")
                .is_ok()
        );
        assert!(
            e.check(Region::Us, EgressKind::Llm, "https://api.mistral.ai/v1")
                .is_err()
        );
        assert!(
            e.check(Region::Eu, EgressKind::Slack, "https://slack.com/api")
                .is_ok()
        );
    }
}
