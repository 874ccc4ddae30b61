//! LLM providers beyond the built-in `openai` (any Chat Completions endpoint) and `anthropic`:
//! a tenant whose settings name another provider gets the one registered under that name.
//! Steward's binary registers none; an embedding application (or a test) may.
//! A registered provider's `base_url` passes the same egress allow-list as the built-in ones
//! (`tenant::check_egress`, before its factory is called).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use steward_adapters::llm::{LlmProvider, LlmSettings};

/// Builds a provider from a tenant's LLM settings and the shared HTTP client.
pub type LlmFactory =
    Arc<dyn Fn(LlmSettings, reqwest::Client) -> Arc<dyn LlmProvider> + Send + Sync>;

/// Registered providers, by the name a tenant's `llm.provider` setting uses.
#[derive(Clone, Default)]
pub struct LlmProviders(BTreeMap<String, LlmFactory>);

impl LlmProviders {
    /// Registers `factory` under `name`, replacing any provider of that name. The built-in
    /// names `openai` and `anthropic` always mean the built-in providers.
    pub fn with(mut self, name: impl Into<String>, factory: LlmFactory) -> Self {
        self.0.insert(name.into(), factory);
        self
    }

    /// The provider registered under `name`, built for these settings.
    pub fn build(
        &self,
        name: &str,
        settings: LlmSettings,
        http: reqwest::Client,
    ) -> Option<Arc<dyn LlmProvider>> {
        self.0.get(name).map(|factory| factory(settings, http))
    }
}

impl fmt::Debug for LlmProviders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;
    use steward_adapters::llm::OpenAiCompatible;

    fn settings() -> LlmSettings {
        LlmSettings {
            base_url: "http://127.0.0.1:9/v1".parse().unwrap(),
            model: "m".into(),
            api_key: SecretString::from("sk-provider-test-key"),
            temperature: 0.0,
            max_tokens: 16,
        }
    }

    #[test]
    fn a_registered_name_builds_its_provider_and_others_build_nothing() {
        let providers = LlmProviders::default().with(
            "local",
            Arc::new(|s, http| Arc::new(OpenAiCompatible::new(s, http)) as Arc<dyn LlmProvider>),
        );
        let http = reqwest::Client::new();
        assert!(providers.build("local", settings(), http.clone()).is_some());
        assert!(providers.build("other", settings(), http).is_none());
    }

    #[test]
    fn debug_output_lists_names_only() {
        let providers = LlmProviders::default().with(
            "local",
            Arc::new(|s, http| Arc::new(OpenAiCompatible::new(s, http)) as Arc<dyn LlmProvider>),
        );
        assert_eq!(format!("{providers:?}"), r#"{"local"}"#);
    }
}
