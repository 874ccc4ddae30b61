//! The policy gate: Cedar decides, per proposed field, whether it may be written with approval,
//! without approval, or not at all; how many distinct people must approve it; and, per click,
//! whether that person may approve it. It fails closed: a policy set that does not validate is
//! refused when loaded, and any error while evaluating, any missing answer and any answer that
//! comes after the deadline is a deny.
//!
//! Steward's own policies always apply; a tenant's policies are added to them. Cedar's forbid
//! wins over permit, so a tenant narrows the defaults with `forbid` and widens them with
//! `permit`, but can never lift Steward's guards (the requester never approves, urgency stays a
//! known level).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request, Response, RestrictedExpression, Schema, ValidationMode, Validator,
};
use serde::{Deserialize, Serialize};

/// The Cedar schema every policy set is validated against.
///
/// - `write_with_approval` / `write_without_approval`: may a run propose this value for this
///   field, and must a person approve it first.
/// - `require_second_approver`: when permitted for a field, its change needs two distinct
///   approvers (the two-person rule).
/// - `approve`: may this person approve this field's change. A person is in the group
///   `approvers` (the tenant's approver list), `escalation` (its escalation approvers) and every
///   approver group the tenant maps their Slack user id into.
pub const SCHEMA: &str = r#"
namespace Steward {
  entity Tenant;
  entity Group;
  entity Person in [Group];
  entity Run in [Tenant] = { source: String };
  entity Field = { table: String, name: String };
  action write_with_approval, write_without_approval, require_second_approver appliesTo {
    principal: [Run],
    resource: [Field],
    context: { value: String, old_value: String }
  };
  action approve appliesTo {
    principal: [Person],
    resource: [Field],
    context: {
      value: String,
      old_value: String,
      source: String,
      is_requester: Bool,
      escalated: Bool
    }
  };
}
"#;

/// Steward's own policies, always in force: a few incident fields may be written once a person
/// approves; everything else is denied because nothing permits it. Listed approvers approve,
/// escalation approvers once the request was escalated, and the requester never does.
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

@id("listed-approvers-approve")
permit (principal in Steward::Group::"approvers", action == Steward::Action::"approve", resource);

@id("escalation-approvers-approve-once-escalated")
permit (principal in Steward::Group::"escalation", action == Steward::Action::"approve", resource)
when { context.escalated };

@id("requester-never-approves")
forbid (principal, action == Steward::Action::"approve", resource)
when { context.is_requester };
"#;

/// How long one decision may take before its answer is thrown away as a deny.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(250);

/// The group of a tenant's listed approvers.
pub const APPROVERS_GROUP: &str = "approvers";
/// The group of a tenant's escalation approvers.
pub const ESCALATION_GROUP: &str = "escalation";

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
    /// Distinct approvers this change needs: 2 under the two-person rule, else 1.
    #[serde(default = "one")]
    pub approvers: u32,
}

fn one() -> u32 {
    1
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

/// The subject of an approval check: may `person` (a Slack user id, in `groups`) approve the
/// change of `field` the run proposes.
#[derive(Debug, Clone)]
pub struct ApproveRequest<'a> {
    pub field: FieldRequest<'a>,
    pub person: &'a str,
    pub groups: &'a [String],
    /// The person is the one who asked for the change (matched across Slack and ServiceNow).
    pub is_requester: bool,
    /// The request was escalated.
    pub escalated: bool,
}

/// The answer to an approval check, with the policies that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproverDecision {
    pub field: String,
    pub allowed: bool,
    pub reason: String,
    pub policies: Vec<String>,
}

/// A validated policy set, ready to answer.
#[derive(Debug, Clone)]
pub struct PolicyGate {
    policies: PolicySet,
    schema: Schema,
    deadline: Duration,
}

/// One Cedar answer: allowed or not, and the policies that determined it.
type Answer = (bool, Vec<String>);

/// A write request about one field without its action: the run, the field, the entities
/// they are (checked against the schema) and the context.
struct WriteAsk {
    run: EntityUid,
    field: EntityUid,
    entities: Entities,
    context: Context,
}

impl PolicyGate {
    /// Steward's policies plus the tenant's `source` (none, or empty, for the defaults only),
    /// validated strictly against [`SCHEMA`].
    pub fn new(source: Option<&str>) -> Result<Self, PolicyError> {
        let (schema, _) =
            Schema::from_cedarschema_str(SCHEMA).map_err(|e| PolicyError::Schema(e.to_string()))?;
        let mut policies = PolicySet::from_str(DEFAULT_POLICIES)
            .map_err(|e| PolicyError::Schema(format!("default policies: {e}")))?;
        if let Some(source) = source {
            let tenant =
                PolicySet::from_str(source).map_err(|e| PolicyError::Parse(e.to_string()))?;
            if tenant.templates().next().is_some() {
                return Err(PolicyError::Parse(
                    "policy templates are not supported; write static policies".into(),
                ));
            }
            // Cedar numbers policies per parse, so the tenant's get ids of their own.
            for (n, policy) in tenant.policies().enumerate() {
                let renamed = policy.new_id(PolicyId::new(format!("tenant{n}")));
                policies
                    .add(renamed)
                    .map_err(|e| PolicyError::Parse(e.to_string()))?;
            }
        }
        let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        if !result.validation_passed() {
            let errors: Vec<String> = result.validation_errors().map(|e| e.to_string()).collect();
            return Err(PolicyError::Invalid(errors.join("; ")));
        }
        Ok(Self {
            policies,
            schema,
            deadline: DEFAULT_DEADLINE,
        })
    }

    /// The same gate with another deadline per decision.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Decides one field. Never fails: any error, and an answer later than the deadline, is a
    /// deny that names why.
    pub fn decide(&self, req: &FieldRequest<'_>) -> FieldDecision {
        let started = Instant::now();
        let answer = self.evaluate(req);
        let answer = self.in_time(started, answer);
        let (outcome, reason, policies, approvers) = match answer {
            Ok(answer) => answer,
            Err(error) => (Outcome::Denied, error, vec![], 1),
        };
        FieldDecision {
            field: req.field.to_owned(),
            value: req.value.to_owned(),
            old_value: req.old_value.to_owned(),
            outcome,
            reason,
            policies,
            approvers,
        }
    }

    /// Which of `fields` (each a field name and its old value) the policy lets the run of
    /// `base` write at all, with approval or without, to `base.value`: for each, whether
    /// [`PolicyGate::decide`] on `base` with that field and old value would not be a deny.
    /// The run, its tenant and every field are checked against the schema once for all of
    /// them, and no answer is explained (no reasons, no policy names), so this costs a
    /// fraction of deciding each field. Any error is `false`, and so is an answer later than
    /// the deadline, counted for each field from its own start plus the shared setup. An
    /// answer can differ from `decide`'s in one more way: a policy that reads the attributes
    /// of a field entity named literally finds here every field asked about, where `decide`
    /// has only its own. This is a hint for the model; a proposed change is always decided
    /// field by field.
    pub fn writable(&self, base: &FieldRequest<'_>, fields: &[(&str, &str)]) -> Vec<bool> {
        let setup = Instant::now();
        let shared = self.shared_write_entities(base, fields);
        let setup = setup.elapsed();
        fields
            .iter()
            .map(|&(field, old_value)| {
                let Ok((run, entities)) = &shared else {
                    return false;
                };
                let started = Instant::now();
                let answer = self.writable_one(base, run, entities, field, old_value);
                matches!(answer, Ok(true)) && setup + started.elapsed() <= self.deadline
            })
            .collect()
    }

    /// The run of `base`, and one entity set holding its tenant, the run and every field of
    /// `fields`, checked against the schema.
    fn shared_write_entities(
        &self,
        base: &FieldRequest<'_>,
        fields: &[(&str, &str)],
    ) -> Result<(EntityUid, Entities), String> {
        let tenant = uid("Steward::Tenant", base.tenant)?;
        let (run, run_entity) = run_entity(base, &tenant)?;
        let mut all = vec![Entity::new_no_attrs(tenant, HashSet::new()), run_entity];
        let names: std::collections::BTreeSet<&str> = fields.iter().map(|(f, _)| *f).collect();
        for name in names {
            all.push(field_entity(base.table, name)?.1);
        }
        let entities =
            Entities::from_entities(all, Some(&self.schema)).map_err(|e| e.to_string())?;
        Ok((run, entities))
    }

    /// Whether the run may write `field` (whose value is `old_value`) to `base.value`, with
    /// approval or without; the first evaluation error is an `Err`.
    fn writable_one(
        &self,
        base: &FieldRequest<'_>,
        run: &EntityUid,
        entities: &Entities,
        field: &str,
        old_value: &str,
    ) -> Result<bool, String> {
        let string = |s: &str| RestrictedExpression::new_string(s.to_owned());
        let field = field_uid(base.table, field)?;
        let context = Context::from_pairs([
            ("value".to_owned(), string(base.value)),
            ("old_value".to_owned(), string(old_value)),
        ])
        .map_err(|e| e.to_string())?;
        // The requests are not checked against the schema one by one (the check is all the
        // schema does in `Request::new`; evaluation never reads it): this code fixes their
        // shape to the one the schema gives the write actions, a run, a field, two strings.
        for action in ["write_without_approval", "write_with_approval"] {
            let request = Request::new(
                run.clone(),
                uid("Steward::Action", action)?,
                field.clone(),
                context.clone(),
                None,
            )
            .map_err(|e| e.to_string())?;
            if self.authorized(&request, entities)?.decision() == Decision::Allow {
                // `decide` goes on to the two-person rule, and denies when that errs.
                if action == "write_with_approval" {
                    let second = uid("Steward::Action", "require_second_approver")?;
                    let request = Request::new(run.clone(), second, field, context, None)
                        .map_err(|e| e.to_string())?;
                    self.authorized(&request, entities)?;
                }
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether the person may approve the field's change. Never fails: any error, and an
    /// answer later than the deadline, is a refusal that names why.
    pub fn may_approve(&self, req: &ApproveRequest<'_>) -> ApproverDecision {
        let started = Instant::now();
        let answer = self
            .ask_approve(req)
            .map_err(|e| format!("policy evaluation failed: {e}"));
        let (allowed, reason, policies) = match self.in_time(started, answer) {
            Ok((true, policies)) => (true, "may approve".to_owned(), policies),
            Ok((false, policies)) if policies.is_empty() => (
                false,
                "no policy lets this person approve this change".to_owned(),
                policies,
            ),
            Ok((false, policies)) => (
                false,
                format!("forbidden by {}", policies.join(", ")),
                policies,
            ),
            Err(reason) => (false, reason, vec![]),
        };
        ApproverDecision {
            field: req.field.field.to_owned(),
            allowed,
            reason,
            policies,
        }
    }

    /// Keeps an answer only if it came within the deadline.
    fn in_time<T>(&self, started: Instant, answer: Result<T, String>) -> Result<T, String> {
        let took = started.elapsed();
        if took > self.deadline {
            return Err(format!(
                "the policy engine did not answer within {} ms (took {} ms)",
                self.deadline.as_millis(),
                took.as_millis()
            ));
        }
        answer
    }

    fn evaluate(
        &self,
        req: &FieldRequest<'_>,
    ) -> Result<(Outcome, String, Vec<String>, u32), String> {
        let failed = |e: String| format!("policy evaluation failed: {e}");
        let ask = self.write_ask(req).map_err(failed)?;
        let without = self
            .ask_write(&ask, "write_without_approval")
            .map_err(failed)?;
        let (outcome, reason, policies) = if without.0 {
            (
                Outcome::WithoutApproval,
                "allowed without approval".to_owned(),
                without.1,
            )
        } else {
            let with = self
                .ask_write(&ask, "write_with_approval")
                .map_err(failed)?;
            if with.0 {
                (
                    Outcome::WithApproval,
                    "allowed with approval".to_owned(),
                    with.1,
                )
            } else {
                let mut policies = with.1;
                policies.extend(without.1);
                policies.sort_unstable();
                policies.dedup();
                let reason = if policies.is_empty() {
                    "no policy permits writing this field".to_owned()
                } else {
                    format!("forbidden by {}", policies.join(", "))
                };
                return Ok((Outcome::Denied, reason, policies, 1));
            }
        };
        if outcome == Outcome::WithoutApproval {
            return Ok((outcome, reason, policies, 0));
        }
        let second = self
            .ask_write(&ask, "require_second_approver")
            .map_err(failed)?;
        if second.0 {
            let mut policies = policies;
            policies.extend(second.1);
            return Ok((
                outcome,
                "allowed with the approval of two different people".to_owned(),
                policies,
                2,
            ));
        }
        Ok((outcome, reason, policies, 1))
    }

    /// What every write action asks about one field, built (and checked against the schema)
    /// once for all of them.
    fn write_ask(&self, req: &FieldRequest<'_>) -> Result<WriteAsk, String> {
        let tenant = uid("Steward::Tenant", req.tenant)?;
        let (run, run_entity) = run_entity(req, &tenant)?;
        let string = |s: &str| RestrictedExpression::new_string(s.to_owned());
        let (field, entities) = self.entities(req, &tenant, vec![run_entity])?;
        let context = Context::from_pairs([
            ("value".to_owned(), string(req.value)),
            ("old_value".to_owned(), string(req.old_value)),
        ])
        .map_err(|e| e.to_string())?;
        Ok(WriteAsk {
            run,
            field,
            entities,
            context,
        })
    }

    /// Asks one write action of the run; the first evaluation error is an `Err`.
    fn ask_write(&self, ask: &WriteAsk, action: &str) -> Result<Answer, String> {
        let action = uid("Steward::Action", action)?;
        let request = Request::new(
            ask.run.clone(),
            action,
            ask.field.clone(),
            ask.context.clone(),
            Some(&self.schema),
        )
        .map_err(|e| e.to_string())?;
        self.answer(&request, &ask.entities)
    }

    /// Asks `approve` for the person; the first evaluation error is an `Err`.
    fn ask_approve(&self, req: &ApproveRequest<'_>) -> Result<Answer, String> {
        let f = &req.field;
        let tenant = uid("Steward::Tenant", f.tenant)?;
        let person = uid("Steward::Person", req.person)?;
        let action = uid("Steward::Action", "approve")?;
        let mut extra = Vec::new();
        let mut parents = HashSet::new();
        let distinct: std::collections::BTreeSet<&String> = req.groups.iter().collect();
        for group in distinct {
            let group = uid("Steward::Group", group)?;
            extra.push(Entity::new_no_attrs(group.clone(), HashSet::new()));
            parents.insert(group);
        }
        extra.push(Entity::new_no_attrs(person.clone(), parents));
        let (field, entities) = self.entities(f, &tenant, extra)?;
        let string = |s: &str| RestrictedExpression::new_string(s.to_owned());
        let context = Context::from_pairs([
            ("value".to_owned(), string(f.value)),
            ("old_value".to_owned(), string(f.old_value)),
            ("source".to_owned(), string(f.source)),
            (
                "is_requester".to_owned(),
                RestrictedExpression::new_bool(req.is_requester),
            ),
            (
                "escalated".to_owned(),
                RestrictedExpression::new_bool(req.escalated),
            ),
        ])
        .map_err(|e| e.to_string())?;
        let request = Request::new(person, action, field, context, Some(&self.schema))
            .map_err(|e| e.to_string())?;
        self.answer(&request, &entities)
    }

    /// Cedar's answer to `request`, or its first evaluation error.
    fn answer(&self, request: &Request, entities: &Entities) -> Result<Answer, String> {
        let response = self.authorized(request, entities)?;
        let policies = response
            .diagnostics()
            .reason()
            .map(|id| self.policy_name(id))
            .collect();
        Ok((response.decision() == Decision::Allow, policies))
    }

    /// Cedar's response to `request`, or its first evaluation error.
    fn authorized(&self, request: &Request, entities: &Entities) -> Result<Response, String> {
        let response = Authorizer::new().is_authorized(request, &self.policies, entities);
        if let Some(error) = response.diagnostics().errors().next() {
            return Err(error.to_string());
        }
        Ok(response)
    }

    /// A policy's `@id` annotation, or Cedar's generated id when it has none.
    fn policy_name(&self, id: &PolicyId) -> String {
        self.policies
            .policy(id)
            .and_then(|p| p.annotation("id"))
            .map_or_else(|| id.to_string(), str::to_owned)
    }

    /// The field of `req`, and the tenant, that field and `extra` checked against the schema.
    fn entities(
        &self,
        req: &FieldRequest<'_>,
        tenant: &EntityUid,
        extra: Vec<Entity>,
    ) -> Result<(EntityUid, Entities), String> {
        let (field, field_entity) = field_entity(req.table, req.field)?;
        let tenant_entity = Entity::new_no_attrs(tenant.clone(), HashSet::new());
        let mut all = vec![tenant_entity, field_entity];
        all.extend(extra);
        let entities =
            Entities::from_entities(all, Some(&self.schema)).map_err(|e| e.to_string())?;
        Ok((field, entities))
    }
}

/// The entity types of [`SCHEMA`], parsed once.
static TYPE_NAMES: LazyLock<HashMap<&'static str, EntityTypeName>> = LazyLock::new(|| {
    [
        "Steward::Tenant",
        "Steward::Group",
        "Steward::Person",
        "Steward::Run",
        "Steward::Field",
        "Steward::Action",
    ]
    .into_iter()
    .filter_map(|name| Some((name, EntityTypeName::from_str(name).ok()?)))
    .collect()
});

/// The run of `req`, a member of `tenant`, with its source.
fn run_entity(req: &FieldRequest<'_>, tenant: &EntityUid) -> Result<(EntityUid, Entity), String> {
    let run = uid("Steward::Run", req.run_id)?;
    let source = RestrictedExpression::new_string(req.source.to_owned());
    let entity = Entity::new(
        run.clone(),
        HashMap::from([("source".to_owned(), source)]),
        HashSet::from([tenant.clone()]),
    )
    .map_err(|e| e.to_string())?;
    Ok((run, entity))
}

/// The uid of field `name` of `table`.
fn field_uid(table: &str, name: &str) -> Result<EntityUid, String> {
    uid("Steward::Field", &format!("{table}.{name}"))
}

/// Field `name` of `table`, with both as attributes.
fn field_entity(table: &str, name: &str) -> Result<(EntityUid, Entity), String> {
    let field = field_uid(table, name)?;
    let string = |s: &str| RestrictedExpression::new_string(s.to_owned());
    let attrs = HashMap::from([
        ("table".to_owned(), string(table)),
        ("name".to_owned(), string(name)),
    ]);
    let entity = Entity::new(field.clone(), attrs, HashSet::new()).map_err(|e| e.to_string())?;
    Ok((field, entity))
}

fn uid(type_name: &str, id: &str) -> Result<EntityUid, String> {
    let type_name = match TYPE_NAMES.get(type_name) {
        Some(parsed) => parsed.clone(),
        None => EntityTypeName::from_str(type_name).map_err(|e| e.to_string())?,
    };
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

    fn approve<'a>(
        field: &'a str,
        person: &'a str,
        groups: &'a [String],
        is_requester: bool,
    ) -> ApproveRequest<'a> {
        ApproveRequest {
            field: request(field, "1"),
            person,
            groups,
            is_requester,
            escalated: false,
        }
    }

    fn groups(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn default_set_allows_listed_fields_with_approval_only() {
        let gate = PolicyGate::new(None).unwrap();
        for field in ["work_notes", "assignment_group", "category"] {
            let d = gate.decide(&request(field, "x"));
            assert_eq!(d.outcome, Outcome::WithApproval, "{field}");
            assert_eq!(d.approvers, 1, "{field}");
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
    fn writable_names_the_default_fields_and_denies_past_the_deadline() {
        let gate = PolicyGate::new(None).unwrap();
        let asked = [
            ("category", "network"),
            ("state", "2"),
            ("urgency", "3"),
            ("work_notes", ""),
            ("work_notes", "again"),
        ];
        assert_eq!(
            gate.writable(&request("", "1"), &asked),
            [true, false, true, true, true]
        );
        // An empty value is no known urgency level.
        assert_eq!(gate.writable(&request("", ""), &asked[2..3]), [false]);
        assert!(gate.writable(&request("", "1"), &[]).is_empty());
        let late = PolicyGate::new(None).unwrap().with_deadline(Duration::ZERO);
        assert_eq!(late.writable(&request("", "1"), &asked[..1]), [false]);
    }

    #[test]
    fn values_outside_policy_are_denied_and_name_the_policy() {
        let gate = PolicyGate::new(None).unwrap();
        let d = gate.decide(&request("urgency", "0"));
        assert_eq!(d.outcome, Outcome::Denied);
        assert_eq!(d.policies, vec!["urgency-is-a-known-level".to_owned()]);
    }

    #[test]
    fn a_policy_set_that_does_not_validate_is_refused_with_cedars_message() {
        let bad = r#"permit(principal, action, resource) when { resource.colour == "red" };"#;
        let Err(PolicyError::Invalid(message)) = PolicyGate::new(Some(bad)) else {
            panic!("an attribute the schema lacks must not validate");
        };
        assert!(message.contains("colour"), "{message}");
        assert!(matches!(
            PolicyGate::new(Some("permit(")),
            Err(PolicyError::Parse(_))
        ));
        let template = "permit(principal == ?principal, action, resource);";
        assert!(matches!(
            PolicyGate::new(Some(template)),
            Err(PolicyError::Parse(_))
        ));
    }

    #[test]
    fn an_empty_tenant_set_leaves_the_defaults() {
        let gate = PolicyGate::new(Some("")).unwrap();
        assert_eq!(
            gate.decide(&request("category", "x")).outcome,
            Outcome::WithApproval
        );
        assert_eq!(gate.decide(&request("state", "7")).outcome, Outcome::Denied);
    }

    #[test]
    fn a_tenant_can_narrow_and_widen_but_not_lift_the_guards() {
        let src = r#"
            @id("no-category")
            forbid (principal, action, resource) when { resource.name == "category" };
            @id("auto-comments")
            permit (principal, action == Steward::Action::"write_without_approval", resource)
            when { resource.name == "comments" };
            @id("urgency-anything")
            permit (principal, action == Steward::Action::"write_with_approval", resource)
            when { resource.name == "urgency" };
            @id("everyone-approves")
            permit (principal, action == Steward::Action::"approve", resource);
        "#;
        let gate = PolicyGate::new(Some(src)).unwrap();
        let d = gate.decide(&request("category", "x"));
        assert_eq!(d.outcome, Outcome::Denied);
        assert_eq!(d.policies, vec!["no-category".to_owned()]);
        let d = gate.decide(&request("comments", "hello"));
        assert_eq!(d.outcome, Outcome::WithoutApproval);
        assert_eq!(d.approvers, 0);
        assert_eq!(
            gate.decide(&request("urgency", "9")).outcome,
            Outcome::Denied,
            "the known-level guard stays"
        );
        let none: Vec<String> = vec![];
        assert!(
            gate.may_approve(&approve("urgency", "U9", &none, false))
                .allowed
        );
        let d = gate.may_approve(&approve("urgency", "U9", &none, true));
        assert!(!d.allowed);
        assert_eq!(d.policies, vec!["requester-never-approves".to_owned()]);
    }

    #[test]
    fn approvers_come_from_groups_and_escalation_needs_the_escalation() {
        let gate = PolicyGate::new(None).unwrap();
        let listed = groups(&[APPROVERS_GROUP]);
        let escalation = groups(&[ESCALATION_GROUP]);
        let none = groups(&[]);
        assert!(
            gate.may_approve(&approve("category", "U1", &listed, false))
                .allowed
        );
        let d = gate.may_approve(&approve("category", "U2", &none, false));
        assert!(!d.allowed);
        assert!(d.reason.contains("no policy lets"), "{}", d.reason);
        assert!(
            !gate
                .may_approve(&approve("category", "U3", &escalation, false))
                .allowed
        );
        let mut late = approve("category", "U3", &escalation, false);
        late.escalated = true;
        assert!(gate.may_approve(&late).allowed);
    }

    #[test]
    fn a_tenant_group_can_be_required_for_a_field() {
        let src = r#"
            @id("network-changes-need-network-leads")
            forbid (principal, action == Steward::Action::"approve", resource)
            when { resource.name == "assignment_group" }
            unless { principal in Steward::Group::"network-leads" };
        "#;
        let gate = PolicyGate::new(Some(src)).unwrap();
        let plain = groups(&[APPROVERS_GROUP]);
        let lead = groups(&[APPROVERS_GROUP, "network-leads"]);
        assert!(
            !gate
                .may_approve(&approve("assignment_group", "U1", &plain, false))
                .allowed
        );
        assert!(
            gate.may_approve(&approve("assignment_group", "U2", &lead, false))
                .allowed
        );
        assert!(
            gate.may_approve(&approve("category", "U1", &plain, false))
                .allowed
        );
    }

    #[test]
    fn the_two_person_rule_is_a_policy() {
        let src = r#"
            @id("p1-needs-two")
            permit (principal, action == Steward::Action::"require_second_approver", resource)
            when { resource.name == "urgency" && context.value == "1" };
        "#;
        let gate = PolicyGate::new(Some(src)).unwrap();
        let d = gate.decide(&request("urgency", "1"));
        assert_eq!((d.outcome, d.approvers), (Outcome::WithApproval, 2));
        assert!(
            d.policies.contains(&"p1-needs-two".to_owned()),
            "{:?}",
            d.policies
        );
        assert_eq!(gate.decide(&request("urgency", "2")).approvers, 1);
    }

    #[test]
    fn a_runtime_evaluation_error_is_a_deny() {
        // Validates (integers add), but overflows at request time when the value is "boom",
        // which Cedar reports as an evaluation error.
        let src = r#"
            permit (principal, action == Steward::Action::"write_with_approval", resource)
            when { 9223372036854775807 + (if context.value == "boom" then 1 else 0) > 0 };
        "#;
        let gate = PolicyGate::new(Some(src)).unwrap();
        assert_eq!(
            gate.decide(&request("state", "ok")).outcome,
            Outcome::WithApproval
        );
        let d = gate.decide(&request("category", "boom"));
        assert_eq!(
            d.outcome,
            Outcome::Denied,
            "even a field the defaults permit"
        );
        assert!(
            d.reason.contains("policy evaluation failed"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn an_error_in_the_approval_check_refuses_the_click() {
        let src = r#"
            permit (principal, action == Steward::Action::"approve", resource)
            when { 9223372036854775807 + (if context.value == "1" then 1 else 0) > 0 };
        "#;
        let gate = PolicyGate::new(Some(src)).unwrap();
        let listed = groups(&[APPROVERS_GROUP]);
        let d = gate.may_approve(&approve("category", "U1", &listed, false));
        assert!(!d.allowed);
        assert!(
            d.reason.contains("policy evaluation failed"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn an_engine_that_does_not_answer_in_time_denies() {
        let gate = PolicyGate::new(None).unwrap().with_deadline(Duration::ZERO);
        let d = gate.decide(&request("category", "x"));
        assert_eq!(d.outcome, Outcome::Denied);
        assert!(d.reason.contains("did not answer within"), "{}", d.reason);
        let listed = groups(&[APPROVERS_GROUP]);
        let d = gate.may_approve(&approve("category", "U1", &listed, false));
        assert!(!d.allowed);
        assert!(d.reason.contains("did not answer within"), "{}", d.reason);
    }

    #[test]
    fn missing_entity_data_is_a_deny() {
        // The field entity is left out of the entities Cedar sees, so reading its attributes
        // is an evaluation error, not a silent false.
        let gate = PolicyGate::new(None).unwrap();
        let req = request("category", "x");
        let run = uid("Steward::Run", "r1").unwrap();
        let field = uid("Steward::Field", "incident.category").unwrap();
        let action = uid("Steward::Action", "write_with_approval").unwrap();
        let context = Context::from_pairs([
            (
                "value".to_owned(),
                RestrictedExpression::new_string("x".into()),
            ),
            (
                "old_value".to_owned(),
                RestrictedExpression::new_string(String::new()),
            ),
        ])
        .unwrap();
        let request = Request::new(run, action, field, context, Some(&gate.schema)).unwrap();
        let answer = gate.answer(&request, &Entities::empty());
        assert!(answer.is_err(), "{answer:?}");
        // And through the public path, the same request with its entities is allowed.
        assert_eq!(gate.decide(&req).outcome, Outcome::WithApproval);
    }

    /// A small policy language whose meaning is computed here independently of Cedar, to check
    /// that the gate never allows what the model says must be denied.
    #[derive(Debug, Clone)]
    enum Frag {
        Permit {
            action: &'static str,
            field: &'static str,
        },
        Forbid {
            any_action: bool,
            field: &'static str,
        },
        ForbidValue {
            field: &'static str,
            value: &'static str,
        },
        /// Permits, but overflows (an evaluation error) when the value is "boom".
        PermitOrError {
            action: &'static str,
            field: &'static str,
        },
    }

    const FIELDS: &[&str] = &["category", "urgency", "state", "comments", "work_notes"];
    const VALUES: &[&str] = &["1", "2", "9", "boom", "x"];
    const WRITES: &[&str] = &["write_with_approval", "write_without_approval"];

    fn frag() -> impl Strategy<Value = Frag> {
        let field = proptest::sample::select(FIELDS);
        let value = proptest::sample::select(VALUES);
        let action = proptest::sample::select(WRITES);
        prop_oneof![
            (action.clone(), field.clone())
                .prop_map(|(action, field)| Frag::Permit { action, field }),
            (any::<bool>(), field.clone())
                .prop_map(|(any_action, field)| Frag::Forbid { any_action, field }),
            (field.clone(), value).prop_map(|(field, value)| Frag::ForbidValue { field, value }),
            (action, field).prop_map(|(action, field)| Frag::PermitOrError { action, field }),
        ]
    }

    fn cedar(frags: &[Frag]) -> String {
        let mut src = String::new();
        for f in frags {
            let text = match f {
                Frag::Permit { action, field } => format!(
                    "permit (principal, action == Steward::Action::\"{action}\", resource) \
                     when {{ resource.name == \"{field}\" }};"
                ),
                Frag::Forbid {
                    any_action: true,
                    field,
                } => format!(
                    "forbid (principal, action, resource) when {{ resource.name == \"{field}\" }};"
                ),
                Frag::Forbid {
                    any_action: false,
                    field,
                } => format!(
                    "forbid (principal, action == Steward::Action::\"write_with_approval\", \
                     resource) when {{ resource.name == \"{field}\" }};"
                ),
                Frag::ForbidValue { field, value } => format!(
                    "forbid (principal, action, resource) when {{ resource.name == \"{field}\" \
                     && context.value == \"{value}\" }};"
                ),
                Frag::PermitOrError { action, field } => format!(
                    "permit (principal, action == Steward::Action::\"{action}\", resource) \
                     when {{ resource.name == \"{field}\" && 9223372036854775807 + \
                     (if context.value == \"boom\" then 1 else 0) > 0 }};"
                ),
            };
            src.push_str(&text);
            src.push('\n');
        }
        src
    }

    /// The outcome the model expects: an error anywhere in an asked action denies; a forbid
    /// beats a permit; nothing permitted is denied.
    fn model(frags: &[Frag], field: &str, value: &str) -> Outcome {
        let ask = |action: &str| -> Option<bool> {
            let errors = frags.iter().any(|f| {
                matches!(f, Frag::PermitOrError { action: a, field: g }
                    if *a == action && *g == field && value == "boom")
            });
            if errors {
                return None;
            }
            let default_guard = field == "urgency" && !["1", "2", "3"].contains(&value);
            let forbidden = default_guard
                || frags.iter().any(|f| match f {
                    Frag::Forbid {
                        any_action,
                        field: g,
                    } => *g == field && (*any_action || action == "write_with_approval"),
                    Frag::ForbidValue { field: g, value: v } => *g == field && *v == value,
                    _ => false,
                });
            let default_permit = action == "write_with_approval"
                && ["work_notes", "assignment_group", "category", "urgency"].contains(&field);
            let permitted = default_permit
                || frags.iter().any(|f| match f {
                    Frag::Permit {
                        action: a,
                        field: g,
                    }
                    | Frag::PermitOrError {
                        action: a,
                        field: g,
                    } => *a == action && *g == field,
                    _ => false,
                });
            Some(permitted && !forbidden)
        };
        match ask("write_without_approval") {
            None => Outcome::Denied,
            Some(true) => Outcome::WithoutApproval,
            Some(false) => match ask("write_with_approval") {
                Some(true) => Outcome::WithApproval,
                _ => Outcome::Denied,
            },
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn unknown_fields_are_always_denied(field in "[a-z_][a-z0-9_]{0,30}", value in ".{0,40}") {
            prop_assume!(!["work_notes", "assignment_group", "category", "urgency"]
                .contains(&field.as_str()));
            let gate = PolicyGate::new(None).unwrap();
            prop_assert_eq!(gate.decide(&request(&field, &value)).outcome, Outcome::Denied);
        }

        #[test]
        fn the_gate_never_allows_what_the_model_denies(
            frags in proptest::collection::vec(frag(), 0..6),
            field in proptest::sample::select(FIELDS),
            value in proptest::sample::select(VALUES),
        ) {
            let gate = PolicyGate::new(Some(&cedar(&frags))).unwrap();
            let d = gate.decide(&request(field, value));
            prop_assert_eq!(d.outcome, model(&frags, field, value), "{}", d.reason);
        }

        #[test]
        fn writable_answers_as_deciding_each_field_would(
            frags in proptest::collection::vec(frag(), 0..6),
            value in proptest::sample::select(VALUES),
            olds in proptest::collection::vec(proptest::sample::select(VALUES), FIELDS.len()),
            by_old_value in any::<bool>(),
            second_errs in any::<bool>(),
        ) {
            let mut src = cedar(&frags);
            if by_old_value {
                src.push_str(
                    "forbid (principal, action, resource) when { resource.name == \"category\" \
                     && context.old_value == \"x\" };\n",
                );
            }
            if second_errs {
                src.push_str(
                    "permit (principal, action == Steward::Action::\"require_second_approver\", \
                     resource) when { resource.name == \"work_notes\" && 9223372036854775807 + \
                     (if context.old_value == \"boom\" then 1 else 0) > 0 };\n",
                );
            }
            let gate = PolicyGate::new(Some(&src)).unwrap();
            let asked: Vec<(&str, &str)> =
                FIELDS.iter().copied().zip(olds.iter().copied()).collect();
            let writable = gate.writable(&request("", value), &asked);
            prop_assert_eq!(writable.len(), asked.len());
            for ((field, old_value), writable) in asked.iter().zip(writable) {
                let req = FieldRequest { old_value, ..request(field, value) };
                let d = gate.decide(&req);
                prop_assert_eq!(writable, d.outcome != Outcome::Denied, "{}: {}", field, d.reason);
            }
        }

        #[test]
        fn no_tenant_policy_lets_the_requester_approve(
            frags in proptest::collection::vec(frag(), 0..4),
            field in proptest::sample::select(FIELDS),
            widen in any::<bool>(),
        ) {
            let mut src = cedar(&frags);
            if widen {
                src.push_str("permit (principal, action, resource);\n");
            }
            let gate = PolicyGate::new(Some(&src)).unwrap();
            let every = groups(&[APPROVERS_GROUP, ESCALATION_GROUP, "leads"]);
            let mut req = approve(field, "U1", &every, true);
            req.escalated = true;
            prop_assert!(!gate.may_approve(&req).allowed);
        }

        #[test]
        fn an_engine_out_of_time_denies_every_request(
            frags in proptest::collection::vec(frag(), 0..4),
            field in proptest::sample::select(FIELDS),
            value in proptest::sample::select(VALUES),
        ) {
            let gate = PolicyGate::new(Some(&cedar(&frags))).unwrap().with_deadline(Duration::ZERO);
            prop_assert_eq!(gate.decide(&request(field, value)).outcome, Outcome::Denied);
            let listed = groups(&[APPROVERS_GROUP]);
            prop_assert!(!gate.may_approve(&approve(field, "U1", &listed, false)).allowed);
        }

        #[test]
        fn missing_entity_data_never_allows(
            frags in proptest::collection::vec(frag(), 0..4),
            field in proptest::sample::select(FIELDS),
            value in proptest::sample::select(VALUES),
            action in proptest::sample::select(WRITES),
        ) {
            // Cedar given the request but none of the entities it names: whatever the policies,
            // the answer is an error or a deny, never an allow.
            let gate = PolicyGate::new(Some(&cedar(&frags))).unwrap();
            let run = uid("Steward::Run", "r1").unwrap();
            let resource = uid("Steward::Field", &format!("incident.{field}")).unwrap();
            let action = uid("Steward::Action", action).unwrap();
            let context = Context::from_pairs([
                ("value".to_owned(), RestrictedExpression::new_string(value.into())),
                ("old_value".to_owned(), RestrictedExpression::new_string(String::new())),
            ])
            .unwrap();
            let request = Request::new(run, action, resource, context, Some(&gate.schema)).unwrap();
            let answer = gate.answer(&request, &Entities::empty());
            prop_assert!(!matches!(answer, Ok((true, _))), "{answer:?}");
        }

        #[test]
        fn text_that_is_not_a_valid_policy_set_never_loads(src in ".{0,200}") {
            // Whatever loads validated; the guards hold in whatever loads.
            if let Ok(gate) = PolicyGate::new(Some(&src)) {
                prop_assert_eq!(gate.decide(&request("urgency", "9")).outcome, Outcome::Denied);
            }
        }
    }
}
