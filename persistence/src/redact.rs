//! Redaction of secrets from text and JSON that is kept for people to read (crash snapshots,
//! operator notes, the operator audit log). Two rules: the value of any JSON key, or
//! `key=value` / `key: value` pair, whose key names a secret is masked; and any word that looks
//! like a credential (a Slack, OpenAI-style, Standard Webhooks or Steward API or break-glass
//! token, a bearer or basic credential, a JWT) is masked, keeping its recognisable prefix so a
//! reader can tell what it was.

use serde_json::Value;

/// What a masked value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Words that, inside a key (case and separators ignored), mark its value as secret.
const SECRET_KEY_WORDS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "apikey",
    "authorization",
    "cookie",
    "credential",
    "privatekey",
    "accesskey",
    "sessionid",
    "signingkey",
];

/// Keys that are secret only when they are the whole key.
const SECRET_KEYS_EXACT: &[&str] = &["auth", "pwd", "pass", "key", "dsn"];

/// Prefixes of credentials that are recognisable on their own, each with the fewest characters
/// that must follow it.
const CREDENTIAL_PREFIXES: &[(&str, usize)] = &[
    ("xoxb-", 1),
    ("xoxp-", 1),
    ("xoxa-", 1),
    ("xoxr-", 1),
    ("xoxs-", 1),
    ("xoxe-", 1),
    ("xapp-", 1),
    ("whsec_", 1),
    ("stw_", 1),
    ("sbg_", 1),
    ("sk-", 8),
    ("ghp_", 8),
    ("github_pat_", 8),
    ("glpat-", 8),
    ("AKIA", 12),
];

/// The shortest credential accepted after `Basic `, so that prose ("basic checks") is kept.
const MIN_BASIC_CREDENTIAL: usize = 12;

/// Whether a JSON key or parameter name names a secret.
pub fn is_secret_key(key: &str) -> bool {
    let normalized: String = key
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if normalized.is_empty() {
        return false;
    }
    SECRET_KEYS_EXACT.contains(&normalized.as_str())
        || SECRET_KEY_WORDS.iter().any(|w| normalized.contains(w))
}

/// Redacts `value` in place: strings are scanned with [`redact_text`], and every string under a
/// key that names a secret is masked whole. Numbers and booleans are kept (token counts, say).
pub fn redact_json(value: &mut Value) {
    match value {
        Value::String(s) => *s = redact_text(s),
        Value::Array(items) => items.iter_mut().for_each(redact_json),
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if is_secret_key(key) {
                    mask_strings(v);
                } else {
                    redact_json(v);
                }
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Masks every string inside `value`.
fn mask_strings(value: &mut Value) {
    match value {
        Value::String(s) if !s.is_empty() => *s = REDACTED.to_owned(),
        Value::Array(items) => items.iter_mut().for_each(mask_strings),
        Value::Object(map) => map.values_mut().for_each(mask_strings),
        _ => {}
    }
}

/// A copy of `text` with credentials masked.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut scan = Scan::default();
    for piece in Pieces::new(text) {
        match piece {
            Piece::Gap(gap) => {
                out.push_str(gap);
                scan.gap(gap);
            }
            Piece::Word(word) => scan.word(word, &mut out),
        }
    }
    out
}

/// What the words just before tell about the next one.
#[derive(Default)]
struct Scan {
    /// A word naming a secret was seen...
    after_key: bool,
    /// ...and then a `:` or `=`: the next word is its value.
    after_separator: bool,
    /// `Bearer` or `Basic` was seen, followed by spaces only.
    after_scheme: Option<Scheme>,
}

#[derive(Clone, Copy)]
enum Scheme {
    Bearer,
    Basic,
}

impl Scan {
    fn gap(&mut self, gap: &str) {
        if self.after_key && (gap.contains(':') || gap.contains('=')) {
            self.after_separator = true;
        }
        if !gap.chars().all(|c| c == ' ') {
            self.after_scheme = None;
        }
    }

    fn word(&mut self, word: &str, out: &mut String) {
        if self.after_key && !self.after_separator && word.chars().all(|c| c == '=') {
            self.after_separator = true;
            out.push_str(word);
            return;
        }
        let value_of_key = self.after_key && self.after_separator;
        let credential_after_scheme = match self.after_scheme {
            Some(Scheme::Bearer) => true,
            Some(Scheme::Basic) => {
                word.len() >= MIN_BASIC_CREDENTIAL
                    && word
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
            }
            None => false,
        };
        let masked = value_of_key || credential_after_scheme;
        *self = Scan::default();
        // `Authorization: Bearer x` masks both words: the scheme is still a scheme.
        self.after_scheme = match word.to_ascii_lowercase().as_str() {
            "bearer" => Some(Scheme::Bearer),
            "basic" => Some(Scheme::Basic),
            _ => None,
        };
        if masked {
            out.push_str(REDACTED);
            return;
        }
        out.push_str(&redact_word(word));
        self.after_key = !word.contains('=') && is_secret_key(word);
    }
}

/// Masks one word: a recognisable credential keeps its prefix; `name=value` with a secret name
/// keeps the name.
fn redact_word(word: &str) -> String {
    if let Some(masked) = credential(word) {
        return masked;
    }
    if let Some((name, value)) = word.split_once('=')
        && !value.is_empty()
    {
        if is_secret_key(name) {
            return format!("{name}={REDACTED}");
        }
        return format!("{name}={}", redact_word(value));
    }
    if looks_like_jwt(word) {
        return REDACTED.to_owned();
    }
    word.to_owned()
}

fn credential(word: &str) -> Option<String> {
    CREDENTIAL_PREFIXES.iter().find_map(|(prefix, min)| {
        let rest = word.strip_prefix(prefix)?;
        (rest.len() >= *min).then(|| format!("{prefix}{REDACTED}"))
    })
}

/// Three base64url segments, the first starting like a JSON header (`{"` is `eyJ`).
fn looks_like_jwt(word: &str) -> bool {
    let parts: Vec<&str> = word.trim_end_matches('.').split('.').collect();
    parts.len() == 3 && word.starts_with("eyJ") && parts.iter().all(|p| p.len() >= 4)
}

/// A word is a run of characters credentials are made of; a gap is anything between words.
enum Piece<'a> {
    Word(&'a str),
    Gap(&'a str),
}

struct Pieces<'a> {
    rest: &'a str,
}

impl<'a> Pieces<'a> {
    fn new(text: &'a str) -> Self {
        Self { rest: text }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '-' | '_' | '+' | '/' | '=' | '.' | '~' | '%')
}

impl<'a> Iterator for Pieces<'a> {
    type Item = Piece<'a>;

    fn next(&mut self) -> Option<Piece<'a>> {
        let first = self.rest.chars().next()?;
        let word = is_word_char(first);
        let end = self
            .rest
            .char_indices()
            .find(|(_, c)| is_word_char(*c) != word)
            .map_or(self.rest.len(), |(i, _)| i);
        let (piece, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(if word {
            Piece::Word(piece)
        } else {
            Piece::Gap(piece)
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn credentials_in_text_are_masked_with_their_prefix_kept() {
        let text = "posting failed with xoxb-1234-5678-abcdEFGH and key sk-proj-0123456789abcdef, \
                    hook whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD, api stw_deadbeefdeadbeef.";
        let out = redact_text(text);
        for secret in [
            "1234-5678-abcdEFGH",
            "proj-0123456789abcdef",
            "C2FVsBQIhrscChlQIMV",
            "deadbeef",
        ] {
            assert!(!out.contains(secret), "{secret} survived: {out}");
        }
        assert!(out.contains("xoxb-[redacted]"), "{out}");
        assert!(out.contains("sk-[redacted]"), "{out}");
        assert!(out.contains("whsec_[redacted]"), "{out}");
        assert!(out.contains("posting failed with"), "{out}");
    }

    #[test]
    fn bearer_and_key_value_credentials_are_masked() {
        let out = redact_text(
            "Authorization: Bearer abc.def-ghi; url https://x/?access_token=s3cr3t&page=2 \
             password=hunter2 {\"client_secret\":\"topsecret\"} Basic dXNlcjpodW50ZXIy",
        );
        for secret in [
            "abc.def-ghi",
            "s3cr3t",
            "hunter2",
            "topsecret",
            "dXNlcjpodW50ZXIy",
        ] {
            assert!(!out.contains(secret), "{secret} survived: {out}");
        }
        assert!(out.contains("page=2"), "{out}");
        assert!(out.contains("access_token=[redacted]"), "{out}");
    }

    #[test]
    fn ordinary_words_are_left_alone() {
        let text = "risk-based triage: task-force sk-8 ask-me xoxb- the token expired; \
                    basic checks passed";
        assert_eq!(redact_text(text), text);
        let plain = "Checkout fails with HTTP 502 since the 14:05 deploy (INC0010001).";
        assert_eq!(redact_text(plain), plain);
    }

    #[test]
    fn jwts_are_masked() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlLXZhbHVl";
        assert_eq!(
            redact_text(&format!("got {jwt}")),
            format!("got {REDACTED}")
        );
    }

    #[test]
    fn json_values_under_secret_keys_are_masked_and_numbers_kept() {
        let mut v = json!({
            "incident": {"description": "creds: password: hunter2, bot xoxp-99-abc"},
            "api_key": "plain-value",
            "Authorization": ["Bearer x", {"nested": "y"}],
            "slackBotToken": "z",
            "usage": {"prompt_tokens": 12, "max_tokens": 1024},
            "refreshToken": null,
            "items": ["stw_0123", "fine"],
        });
        redact_json(&mut v);
        let text = v.to_string();
        for secret in [
            "hunter2",
            "99-abc",
            "plain-value",
            "Bearer x",
            "\"y\"",
            "\"z\"",
            "0123",
        ] {
            assert!(!text.contains(secret), "{secret} survived: {text}");
        }
        assert_eq!(v["usage"]["max_tokens"], 1024);
        assert_eq!(v["items"][1], "fine");
        assert!(v["refreshToken"].is_null());
    }

    #[test]
    fn secret_key_names_are_recognised_across_spellings() {
        for key in [
            "token",
            "bot_token",
            "X-Api-Key",
            "clientSecret",
            "PASSWORD",
            "auth",
            "set-cookie",
            "private_key",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in ["author", "number", "description", "", "---", "keyboard"] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn hostile_and_oversized_text_is_handled() {
        let big = "a".repeat(200_000) + " xoxb-1-2 " + &"é".repeat(1000);
        let out = redact_text(&big);
        assert!(out.contains("xoxb-[redacted]"));
        assert_eq!(redact_text(""), "");
        let odd = "\u{0}\u{202e}password\u{0}=\u{0}x ===== :::: Bearer";
        let out = redact_text(odd);
        assert!(!out.contains('x'), "{out}");
        assert!(out.contains("password"), "{out}");
        assert_eq!(redact_text("=== = =="), "=== = ==");
    }
}
