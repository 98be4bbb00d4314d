//! The schema registry: JSON Schemas per event type and version, BACKWARD compatibility
//! between versions, and validation of every append against the current version.
//!
//! BACKWARD means every event valid under the previous version stays valid under the
//! new one. The checker refuses what can break that — a new required field, a changed or
//! narrowed type, a narrowed enum, newly forbidden extra properties — and accepts new
//! optional fields. It compares the schemas' structure (types, required, enum,
//! properties, additionalProperties, items), recursively; anything it cannot compare
//! (e.g. a new `pattern`) it reports as incompatible rather than guess.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use cairn_core::readmodel::{ReadModelError, ReadModelStore};
use cairn_core::{Append, AppendError};
use serde_json::{Map, Value};

/// One registered version.
struct Registered {
    version: u32,
    schema: Value,
    validator: Arc<jsonschema::Validator>,
    /// The fields it marks personal (sealed on append, see [`crate::vault`]).
    personal: Option<Arc<crate::vault::Personal>>,
}

fn personal_of(schema: &Value) -> Option<Arc<crate::vault::Personal>> {
    crate::vault::Personal::of_schema(schema).map(Arc::new)
}

/// Largest schema accepted, as JSON text (`413 schema_too_large`): a schema is compiled
/// and compared with its predecessor and every stored event on registration.
pub const SCHEMA_BYTES_MAX: usize = 64 * 1024;
/// Most versions of one event type's schema (`422 too_many_schemas`).
pub const SCHEMA_VERSIONS_MAX: u32 = 100;
/// Most event types with a schema (`422 too_many_schemas`); every registered version is
/// held in memory, compiled.
pub const SCHEMA_TYPES_MAX: usize = 1000;
/// Most reasons an answer lists; the last one says how many more there were.
pub const REASONS_MAX: usize = 20;
/// Longest reason, in characters: a reason may quote input (property names, enum values,
/// a stored event's value), and an answer must stay small whatever the input.
pub const REASON_CHARS_MAX: usize = 300;

/// Why a schema was not registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// Not a usable JSON Schema.
    #[error("not a valid JSON Schema: {0}")]
    Invalid(String),
    /// The version is not the next one.
    #[error("the next version is {expected}")]
    Version {
        /// The version that would be accepted.
        expected: u32,
    },
    /// Not BACKWARD compatible with the previous version.
    #[error("not BACKWARD compatible")]
    Incompatible(Vec<String>),
    /// The type has [`SCHEMA_VERSIONS_MAX`] versions already.
    #[error("the type has {max} schema versions, the most kept")]
    TooManyVersions {
        /// [`SCHEMA_VERSIONS_MAX`].
        max: u32,
    },
    /// [`SCHEMA_TYPES_MAX`] types have a schema already.
    #[error("{max} event types have a schema, the most kept")]
    TooManyTypes {
        /// [`SCHEMA_TYPES_MAX`].
        max: usize,
    },
    /// Storage failed.
    #[error(transparent)]
    Storage(ReadModelError),
}

/// `text`, cut to [`REASON_CHARS_MAX`] characters (marked with `…`).
#[must_use]
pub fn bounded(text: &str) -> String {
    match text.char_indices().nth(REASON_CHARS_MAX) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

/// `reasons`, at most [`REASONS_MAX`] of them, each [`bounded`].
#[must_use]
pub fn bounded_reasons(reasons: &[String]) -> Vec<String> {
    let total = reasons.len();
    let mut out: Vec<String> = reasons.iter().take(REASONS_MAX).map(|r| bounded(r)).collect();
    if total > REASONS_MAX {
        out.push(format!("… and {} more", total - REASONS_MAX));
    }
    out
}

/// Registered schemas, cached in memory and stored in the read-model file.
pub struct SchemaRegistry {
    store: Arc<dyn ReadModelStore>,
    schemas: RwLock<HashMap<String, Vec<Registered>>>,
}

fn compile(schema: &Value) -> Result<Arc<jsonschema::Validator>, String> {
    jsonschema::validator_for(schema).map(Arc::new).map_err(|e| e.to_string())
}

impl SchemaRegistry {
    /// Loads every stored schema.
    pub fn load(store: Arc<dyn ReadModelStore>) -> Result<Self, ReadModelError> {
        let mut schemas: HashMap<String, Vec<Registered>> = HashMap::new();
        for (event_type, version, text) in store.schemas()? {
            let schema: Value =
                serde_json::from_str(&text).map_err(|e| ReadModelError::Decode(e.to_string()))?;
            let validator = compile(&schema).map_err(ReadModelError::Decode)?;
            schemas.entry(event_type).or_default().push(Registered {
                personal: personal_of(&schema),
                version,
                schema,
                validator,
            });
        }
        Ok(Self { store, schemas: RwLock::new(schemas) })
    }

    /// `[{event_type, version, schema, versions}]`: the current version of each type.
    #[must_use]
    pub fn list(&self) -> Vec<Value> {
        let schemas = self.schemas.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<Value> = schemas
            .iter()
            .filter_map(|(t, versions)| {
                let current = versions.last()?;
                Some(serde_json::json!({
                    "event_type": t,
                    "version": current.version,
                    "schema": current.schema,
                    "versions": versions.iter().map(|r| r.version).collect::<Vec<_>>(),
                }))
            })
            .collect();
        out.sort_by(|a, b| a["event_type"].as_str().cmp(&b["event_type"].as_str()));
        out
    }

    /// Registers `version` of `event_type`'s schema: it must be the next version and
    /// BACKWARD compatible with the current one. Registering the same version with the
    /// same schema again is a no-op (idempotent).
    pub fn register(
        &self,
        event_type: &str,
        version: u32,
        schema: Value,
    ) -> Result<(), RegisterError> {
        let validator = compile(&schema).map_err(|e| RegisterError::Invalid(bounded(&e)))?;
        let mut schemas = self.schemas.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !schemas.contains_key(event_type) && schemas.len() >= SCHEMA_TYPES_MAX {
            return Err(RegisterError::TooManyTypes { max: SCHEMA_TYPES_MAX });
        }
        let versions = schemas.entry(event_type.to_owned()).or_default();
        if let Some(same) = versions.iter().find(|r| r.version == version)
            && same.schema == schema
        {
            return Ok(());
        }
        let expected = versions.last().map_or(1, |r| r.version + 1);
        if version != expected {
            return Err(RegisterError::Version { expected });
        }
        if expected > SCHEMA_VERSIONS_MAX {
            return Err(RegisterError::TooManyVersions { max: SCHEMA_VERSIONS_MAX });
        }
        if let Some(previous) = versions.last() {
            let reasons = backward_incompatibilities(&previous.schema, &schema, "");
            if !reasons.is_empty() {
                return Err(RegisterError::Incompatible(bounded_reasons(&reasons)));
            }
        }
        self.store
            .put_schema(event_type, version, &schema.to_string())
            .map_err(RegisterError::Storage)?;
        versions.push(Registered { personal: personal_of(&schema), version, schema, validator });
        Ok(())
    }

    /// The current version and validator of a type, if it has a schema.
    /// The personal fields the current schema of `event_type` marks, if any.
    #[must_use]
    pub fn personal(&self, event_type: &str) -> Option<Arc<crate::vault::Personal>> {
        let schemas = self.schemas.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        schemas.get(event_type)?.last()?.personal.clone()
    }

    fn current(&self, event_type: &str) -> Option<(u32, Arc<jsonschema::Validator>)> {
        let schemas = self.schemas.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        schemas.get(event_type)?.last().map(|r| (r.version, Arc::clone(&r.validator)))
    }

    /// The registered versions of a type, ascending (empty: no schema).
    #[must_use]
    pub fn versions(&self, event_type: &str) -> Vec<u32> {
        let schemas = self.schemas.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        schemas.get(event_type).map(|v| v.iter().map(|r| r.version).collect()).unwrap_or_default()
    }

    /// Every registered version of a type with its schema, oldest first.
    #[must_use]
    pub fn history(&self, event_type: &str) -> Vec<(u32, Value)> {
        let schemas = self.schemas.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        schemas
            .get(event_type)
            .map(|v| v.iter().map(|r| (r.version, r.schema.clone())).collect())
            .unwrap_or_default()
    }

    /// What registering `draft` as the next version of `event_type` would meet, without
    /// registering it: the reasons it does not compile or is not BACKWARD compatible with
    /// the current version (empty: it would be accepted on those grounds; `PUT
    /// /admin/schemas` also checks it against the events already stored).
    #[must_use]
    pub fn check_draft(&self, event_type: &str, draft: &Value) -> Vec<String> {
        if let Err(e) = compile(draft) {
            return vec![format!("the draft does not compile: {}", bounded(&e))];
        }
        match self.current_schema(event_type) {
            Some((_, current)) => bounded_reasons(&backward_incompatibilities(&current, draft, "")),
            None => Vec::new(),
        }
    }

    /// The current version of a type and its schema, if it has one.
    #[must_use]
    pub fn current_schema(&self, event_type: &str) -> Option<(u32, Value)> {
        let schemas = self.schemas.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        schemas.get(event_type)?.last().map(|r| (r.version, r.schema.clone()))
    }
}

/// Keywords the compatibility checker understands (or that cannot reject an instance).
const COMPARED: &[&str] = &[
    "type",
    "enum",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "description",
    "title",
    "$schema",
    "$id",
    "default",
    "examples",
    // Crypto-shredding marks (#19): they say how a field is stored, not what is valid.
    "x-cairn-personal",
    "x-cairn-subject",
];

fn types_of(schema: &Value) -> Option<Vec<String>> {
    match schema.get("type")? {
        Value::String(t) => Some(vec![t.clone()]),
        Value::Array(ts) => Some(ts.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect()),
        _ => None,
    }
}

fn string_set(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().map(Value::to_string).collect())
        .unwrap_or_default()
}

/// Everything in `new` that can reject an instance `old` accepted (empty = compatible).
#[must_use]
pub fn backward_incompatibilities(old: &Value, new: &Value, path: &str) -> Vec<String> {
    let at = if path.is_empty() { "the event".to_owned() } else { path.to_owned() };
    let mut reasons = Vec::new();
    if new == old || new == &Value::Bool(true) {
        return reasons;
    }
    let (empty, empty_new) = (Map::new(), Map::new());
    let old_obj = old.as_object().unwrap_or(&empty);
    let new_obj = new.as_object().unwrap_or(&empty_new);
    match (types_of(old), types_of(new)) {
        (Some(o), Some(n)) => {
            let lost: Vec<&String> = o
                .iter()
                .filter(|t| {
                    !(n.contains(t) || t.as_str() == "integer" && n.contains(&"number".to_owned()))
                })
                .collect();
            if !lost.is_empty() {
                reasons.push(format!("{at}: type changed from {o:?} to {n:?}"));
            }
        }
        (None, Some(n)) => reasons.push(format!("{at}: type restricted to {n:?}")),
        _ => {}
    }
    let old_enum = string_set(old_obj.get("enum"));
    let new_enum = string_set(new_obj.get("enum"));
    if new_obj.contains_key("enum") {
        let missing: Vec<&String> = old_enum.iter().filter(|v| !new_enum.contains(v)).collect();
        if !old_obj.contains_key("enum") || !missing.is_empty() {
            reasons.push(format!("{at}: enum narrowed (no longer allows {missing:?})"));
        }
    }
    let old_required = string_set(old_obj.get("required"));
    for field in string_set(new_obj.get("required")) {
        if !old_required.contains(&field) {
            reasons.push(format!("{at}: new required field {}", field.trim_matches('"')));
        }
    }
    let allows_extra = |o: &Map<String, Value>| {
        o.get("additionalProperties").is_none_or(|v| v != &Value::Bool(false))
    };
    let no_props = Map::new();
    let old_props = old_obj.get("properties").and_then(Value::as_object).unwrap_or(&no_props);
    let new_props = new_obj.get("properties").and_then(Value::as_object).unwrap_or(&no_props);
    if allows_extra(old_obj) && !allows_extra(new_obj) {
        reasons.push(format!("{at}: additional properties are no longer allowed"));
    }
    for (name, old_prop) in old_props {
        let child = format!("{}/{name}", if path.is_empty() { "" } else { path });
        match new_props.get(name) {
            Some(new_prop) => {
                reasons.extend(backward_incompatibilities(old_prop, new_prop, &child));
            }
            None if !allows_extra(new_obj) => reasons
                .push(format!("{child}: property removed while extra properties are forbidden")),
            None => {}
        }
    }
    // A new optional property is accepted (contract §6), even though an old event could
    // in theory carry a same-named field of another type: events are written by code that
    // knew the old schema, which did not have the field.
    if let (Some(o), Some(n)) = (old_obj.get("items"), new_obj.get("items")) {
        reasons.extend(backward_incompatibilities(o, n, &format!("{at}[]")));
    }
    for key in new_obj.keys() {
        if !COMPARED.contains(&key.as_str()) && new_obj.get(key) != old_obj.get(key) {
            reasons.push(format!(
                "{at}: keyword {key:?} added or changed (not checked for compatibility)"
            ));
        }
    }
    reasons
}

impl SchemaRegistry {
    /// Validates each event of a type with a registered schema and stamps
    /// `metadata.schema_version`; events of unregistered types pass untouched.
    pub fn check(&self, append: &mut Append) -> Result<(), AppendError> {
        for (index, event) in append.events.iter_mut().enumerate() {
            let Some(version) = self.validate(index, &event.event_type, event.data.get())? else {
                continue;
            };
            let mut metadata: Map<String, Value> =
                serde_json::from_str(event.metadata.get()).unwrap_or_default();
            metadata.entry("schema_version").or_insert(Value::from(version));
            event.metadata = serde_json::value::to_raw_value(&metadata).unwrap_or_default();
        }
        Ok(())
    }

    /// Validates the `data` of the `index`-th event of an append against its type's current
    /// schema: the version checked against, or `None` when the type has no schema.
    pub fn validate(
        &self,
        index: usize,
        event_type: &str,
        data: &str,
    ) -> Result<Option<u32>, AppendError> {
        let Some((version, validator)) = self.current(event_type) else { return Ok(None) };
        let data: Value = serde_json::from_str(data)
            .map_err(|e| AppendError::Invalid(format!("events[{index}].data: {e}")))?;
        let errors: Vec<(String, String)> = validator
            .iter_errors(&data)
            .map(|e| (e.instance_path().to_string(), e.to_string()))
            .collect();
        if errors.is_empty() {
            Ok(Some(version))
        } else {
            Err(AppendError::SchemaViolation {
                index,
                event_type: event_type.to_owned(),
                schema_version: version,
                errors,
            })
        }
    }
}
