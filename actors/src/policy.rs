//! The policy gate: Cedar decides, per proposed field, whether it may be written with approval,
//! without approval, or not at all. It fails closed: a policy set that does not validate is
//! refused when loaded, and any error while evaluating a field is a deny for that field.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use serde::{Deserialize, Serialize};

/// The Cedar schema every policy set is validated against.
pub const SCHEMA: &str = r#"
namespace Steward {
  entity Tenant;
  entity Run in [Tenant] = { source: String };
  entity Field = { table: String, name: String };
  action write_with_approval, write_without_approval appliesTo {
    principal: [Run],
    resource: [Field],
    context: { value: String, old_value: String }
  };
}
"#;

/// Steward's default policies: a few incident fields may be written once a person approves;
/// everything else is denied because nothing permits it.
pub const DEFAULT_POLICIES: &str = r#"
@id("approvable-incident-fields")
permit (principal, action == Steward::Action::"write_with_approval", resource)
when {
  resource.table == "incident" &&
  ["work_notes", "assignment_group", "category", "urgency"].contains(resource.name)
};

@id("urgency-is-a-known-level")
forbid (principal, action, resource)
when { resource.name == "urgency" }
unless { ["1", "2", "3"].contains(context.value) };
"#;

/// What the policy allows for one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    WithApproval,
    WithoutApproval,
    Denied,
}

/// The decision for one proposed field, with the policies that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldDecision {
    pub field: String,
    pub value: String,
    pub old_value: String,
    pub outcome: Outcome,
    pub reason: String,
    pub policies: Vec<String>,
}

/// Why a policy set could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PolicyError {
    #[error("the policy set does not parse: {0}")]
    Parse(String),
    #[error("the policy set does not validate against Steward's schema: {0}")]
    Invalid(String),
    #[error("Steward's built-in schema failed to load: {0}")]
    Schema(String),
}

/// The subject of a decision: which run, of which tenant and source, asks to write what.
#[derive(Debug, Clone)]
pub struct FieldRequest<'a> {
    pub tenant: &'a str,
    pub run_id: &'a str,
    pub source: &'a str,
    pub table: &'a str,
    pub field: &'a str,
    pub old_value: &'a str,
    pub value: &'a str,
}

/// A validated policy set, ready to answer.
#[derive(Debug, Clone)]
pub struct PolicyGate {
    policies: PolicySet,
    schema: Schema,
}

impl PolicyGate {
    /// Loads `source`, or the default set when `None`, and validates it strictly.
    pub fn new(source: Option<&str>) -> Result<Self, PolicyError> {
        let (schema, _) =
            Schema::from_cedarschema_str(SCHEMA).map_err(|e| PolicyError::Schema(e.to_string()))?;
        let policies = PolicySet::from_str(source.unwrap_or(DEFAULT_POLICIES))
            .map_err(|e| PolicyError::Parse(e.to_string()))?;
        let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        if !result.validation_passed() {
            let errors: Vec<String> = result.validation_errors().map(|e| e.to_string()).collect();
            return Err(PolicyError::Invalid(errors.join("; ")));
        }
        Ok(Self { policies, schema })
    }

    /// Decides one field. Never fails: any error is a deny that names the error.
    pub fn decide(&self, req: &FieldRequest<'_>) -> FieldDecision {
        let (outcome, reason, policies) = match self.evaluate(req) {
            Ok(answer) => answer,
            Err(error) => (
                Outcome::Denied,
                format!("policy evaluation failed: {error}"),
                vec![],
            ),
        };
        FieldDecision {
            field: req.field.to_owned(),
            value: req.value.to_owned(),
            old_value: req.old_value.to_owned(),
            outcome,
            reason,
            policies,
        }
    }

    fn evaluate(&self, req: &FieldRequest<'_>) -> Result<(Outcome, String, Vec<String>), String> {
        let without = self.ask(req, "write_without_approval")?;
        if without.0 {
            return Ok((
                Outcome::WithoutApproval,
                "allowed without approval".into(),
                without.1,
            ));
        }
        let with = self.ask(req, "write_with_approval")?;
        if with.0 {
            return Ok((
                Outcome::WithApproval,
                "allowed with approval".into(),
                with.1,
            ));
        }
        let mut policies = with.1;
        policies.extend(without.1);
        policies.sort_unstable();
        policies.dedup();
        let reason = if policies.is_empty() {
            "no policy permits writing this field".to_owned()
        } else {
            format!("forbidden by {}", policies.join(", "))
        };
        Ok((Outcome::Denied, reason, policies))
    }

    /// Asks one action; `Ok((allowed, determining policies))`, or the first evaluation error.
    fn ask(&self, req: &FieldRequest<'_>, action: &str) -> Result<(bool, Vec<String>), String> {
        let tenant = uid("Steward::Tenant", req.tenant)?;
        let run = uid("Steward::Run", req.run_id)?;
        let field = uid("Steward::Field", &format!("{}.{}", req.table, req.field))?;
        let action = uid("Steward::Action", action)?;
        let entities = self.entities(req, &tenant, &run, &field)?;
        let context = Context::from_pairs([
            (
                "value".to_owned(),
                RestrictedExpression::new_string(req.value.to_owned()),
            ),
            (
                "old_value".to_owned(),
                RestrictedExpression::new_string(req.old_value.to_owned()),
            ),
        ])
        .map_err(|e| e.to_string())?;
        let request = Request::new(run, action, field, context, Some(&self.schema))
            .map_err(|e| e.to_string())?;
        let response = Authorizer::new().is_authorized(&request, &self.policies, &entities);
        if let Some(error) = response.diagnostics().errors().next() {
            return Err(error.to_string());
        }
        let policies = response
            .diagnostics()
            .reason()
            .map(|id| self.policy_name(id))
            .collect();
        Ok((response.decision() == Decision::Allow, policies))
    }

    /// A policy's `@id` annotation, or Cedar's generated id when it has none.
    fn policy_name(&self, id: &cedar_policy::PolicyId) -> String {
        self.policies
            .policy(id)
            .and_then(|p| p.annotation("id"))
            .map_or_else(|| id.to_string(), str::to_owned)
    }

    fn entities(
        &self,
        req: &FieldRequest<'_>,
        tenant: &EntityUid,
        run: &EntityUid,
        field: &EntityUid,
    ) -> Result<Entities, String> {
        let string = |s: &str| RestrictedExpression::new_string(s.to_owned());
        let run_entity = Entity::new(
            run.clone(),
            HashMap::from([("source".to_owned(), string(req.source))]),
            HashSet::from([tenant.clone()]),
        )
        .map_err(|e| e.to_string())?;
        let field_entity = Entity::new(
            field.clone(),
            HashMap::from([
                ("table".to_owned(), string(req.table)),
                ("name".to_owned(), string(req.field)),
            ]),
            HashSet::new(),
        )
        .map_err(|e| e.to_string())?;
        let tenant_entity = Entity::new_no_attrs(tenant.clone(), HashSet::new());
        Entities::from_entities(
            [tenant_entity, run_entity, field_entity],
            Some(&self.schema),
        )
        .map_err(|e| e.to_string())
    }
}

fn uid(type_name: &str, id: &str) -> Result<EntityUid, String> {
    let type_name = EntityTypeName::from_str(type_name).map_err(|e| e.to_string())?;
    Ok(EntityUid::from_type_name_and_id(
        type_name,
        EntityId::new(id),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request<'a>(field: &'a str, value: &'a str) -> FieldRequest<'a> {
        FieldRequest {
            tenant: "us-acme",
            run_id: "r1",
            source: "servicenow",
            table: "incident",
            field,
            old_value: "",
            value,
        }
    }

    #[test]
    fn default_set_allows_listed_fields_with_approval_only() {
        let gate = PolicyGate::new(None).unwrap();
        for field in ["work_notes", "assignment_group", "category"] {
            assert_eq!(
                gate.decide(&request(field, "x")).outcome,
                Outcome::WithApproval,
                "{field}"
            );
        }
        assert_eq!(
            gate.decide(&request("urgency", "1")).outcome,
            Outcome::WithApproval
        );
        for field in [
            "state",
            "priority",
            "close_code",
            "caller_id",
            "short_description",
        ] {
            let d = gate.decide(&request(field, "6"));
            assert_eq!(d.outcome, Outcome::Denied, "{field}");
            assert!(d.reason.contains("no policy permits"));
        }
    }

    #[test]
    fn values_outside_policy_are_denied_and_name_the_policy() {
        let gate = PolicyGate::new(None).unwrap();
        let d = gate.decide(&request("urgency", "0"));
        assert_eq!(d.outcome, Outcome::Denied);
        assert_eq!(d.policies, vec!["urgency-is-a-known-level".to_owned()]);
    }

    #[test]
    fn a_policy_set_that_does_not_validate_is_refused() {
        let bad = r#"permit(principal, action, resource) when { resource.colour == "red" };"#;
        assert!(matches!(
            PolicyGate::new(Some(bad)),
            Err(PolicyError::Invalid(_))
        ));
        assert!(matches!(
            PolicyGate::new(Some("permit(")),
            Err(PolicyError::Parse(_))
        ));
    }

    #[test]
    fn a_runtime_evaluation_error_is_a_deny() {
        // Validates (strings compare), but `like` on a huge pattern is fine; force an error with
        // an integer overflow, which Cedar reports as an evaluation error at request time.
        let src = r#"
            permit (principal, action == Steward::Action::"write_with_approval", resource)
            when { 9223372036854775807 + (if context.value == "boom" then 1 else 0) > 0 };
        "#;
        let gate = PolicyGate::new(Some(src)).unwrap();
        assert_eq!(
            gate.decide(&request("category", "ok")).outcome,
            Outcome::WithApproval
        );
        let d = gate.decide(&request("category", "boom"));
        assert_eq!(d.outcome, Outcome::Denied);
        assert!(
            d.reason.contains("policy evaluation failed"),
            "{}",
            d.reason
        );
    }

    proptest! {
        #[test]
        fn unknown_fields_are_always_denied(field in "[a-z_][a-z0-9_]{0,30}", value in ".{0,40}") {
            prop_assume!(!["work_notes", "assignment_group", "category", "urgency"]
                .contains(&field.as_str()));
            let gate = PolicyGate::new(None).unwrap();
            prop_assert_eq!(gate.decide(&request(&field, &value)).outcome, Outcome::Denied);
        }
    }
}
