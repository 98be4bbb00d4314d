//! Crypto-shredding (#19): the personal fields of an event are stored encrypted with its
//! subject's key; deleting the key (`DELETE /admin/subjects/{subject}`) erases them in
//! every copy of the log at once — backups, exports of ciphertext — while the events, their
//! positions and everything else about them stay.
//!
//! A registered schema marks the fields: `"x-cairn-personal": true` on a top-level
//! property, and optionally `"x-cairn-subject": "/customer_id"` at its root (a JSON
//! pointer to the subject's id in the event's data; without it the subject is the
//! aggregate id). On append each marked field's JSON is sealed with AES-256-GCM (`ring`,
//! the tree's one crypto provider) and replaced by `{"$cairn_enc": {"s": subject, "t":
//! JSON type, "c": base64url(ciphertext and tag)}}`. The nonce is derived from the event id
//! and the field (a retried append seals to the same bytes, so the store still recognises
//! the retry; each (event, field) is sealed once under its subject's key); the associated
//! data binds the ciphertext to its stream, event type and field. Every read through the
//! server's store opens them again (the NATS relay reads the backend's log, so the bus
//! carries them sealed, as every other copy of the log); once the key is gone the field reads as a placeholder
//! of its JSON type (`"[erased]"`, `0`, `false`, `[]`, `{}`, `null`) so that every reader
//! — aggregates, projections, process managers — keeps decoding the event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cairn_core::readmodel::{ReadModelError, ReadModelStore, SUBJECT_KEY_LEN};
use cairn_core::{AppendError, NewEvent, RecordedEvent};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// The key of a sealed field's envelope.
pub const SEALED: &str = "$cairn_enc";
/// What an erased string field reads as.
pub const ERASED_STRING: &str = "[erased]";
/// How long a process trusts a key it looked up (or its absence): a key deleted by
/// another process sharing the store stops opening fields here within this time; one
/// deleted by this process, at once.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);
/// Most subjects whose keys a process keeps in memory (cleared when it grows past this).
const KEY_CACHE_MAX: usize = 10_000;

/// The personal fields of one event type, as its current schema marks them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Personal {
    /// Top-level properties marked `"x-cairn-personal": true`.
    pub fields: Vec<String>,
    /// `x-cairn-subject`: a JSON pointer to the subject's id in the data (`None`: the
    /// aggregate id).
    pub subject: Option<String>,
}

impl Personal {
    /// The marks of `schema`, if it has any.
    #[must_use]
    pub fn of_schema(schema: &Value) -> Option<Self> {
        let fields: Vec<String> = schema
            .get("properties")?
            .as_object()?
            .iter()
            .filter(|(_, p)| p.get("x-cairn-personal") == Some(&Value::Bool(true)))
            .map(|(name, _)| name.clone())
            .collect();
        let subject = schema.get("x-cairn-subject").and_then(Value::as_str).map(str::to_owned);
        (!fields.is_empty()).then_some(Self { fields, subject })
    }
}

/// What a process knows of a subject's key.
#[derive(Clone)]
enum Known {
    /// The key.
    Key(Arc<LessSafeKey>),
    /// The subject has no key: never had one, or erased.
    Absent,
}

impl Known {
    fn of(key: Option<Arc<LessSafeKey>>) -> Self {
        key.map_or(Self::Absent, Self::Key)
    }
}

/// Keys looked up, and when.
type KeyCache = HashMap<String, (Known, Instant)>;

/// Seals and opens personal fields; keeps subjects' keys in the read-model store.
pub struct Vault {
    keys: Arc<dyn ReadModelStore>,
    cache: Mutex<KeyCache>,
}

fn key_of(bytes: &[u8]) -> Option<Arc<LessSafeKey>> {
    UnboundKey::new(&AES_256_GCM, bytes).ok().map(|k| Arc::new(LessSafeKey::new(k)))
}

fn aad(aggregate_id: &str, event_type: &str, field: &str) -> Vec<u8> {
    format!("{aggregate_id}\n{event_type}\n{field}").into_bytes()
}

fn nonce(event_id: &uuid::Uuid, field: &str) -> Nonce {
    let digest = Sha256::new().chain_update(event_id.as_bytes()).chain_update(field).finalize();
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(&digest[..NONCE_LEN]);
    Nonce::assume_unique_for_key(n)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn placeholder(json_type: &str) -> Value {
    match json_type {
        "string" => Value::from(ERASED_STRING),
        "number" => Value::from(0),
        "boolean" => Value::Bool(false),
        "array" => Value::Array(Vec::new()),
        "object" => Value::Object(Map::new()),
        _ => Value::Null,
    }
}

fn unavailable(e: impl std::fmt::Display) -> AppendError {
    AppendError::Unavailable(format!("subject keys: {e}"))
}

impl Vault {
    /// A vault keeping its keys in `keys`.
    #[must_use]
    pub fn new(keys: Arc<dyn ReadModelStore>) -> Self {
        Self { keys, cache: Mutex::new(HashMap::new()) }
    }

    fn cached(&self, subject: &str) -> Option<Known> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        cache.get(subject).filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL).map(|(k, _)| k.clone())
    }

    fn remember(&self, subject: &str, key: Known) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= KEY_CACHE_MAX {
            cache.clear();
        }
        cache.insert(subject.to_owned(), (key, Instant::now()));
    }

    /// The subject's key, created when it has none.
    async fn key_for_sealing(&self, subject: &str) -> Result<Arc<LessSafeKey>, AppendError> {
        if let Some(Known::Key(key)) = self.cached(subject) {
            return Ok(key);
        }
        let mut candidate = [0u8; SUBJECT_KEY_LEN];
        getrandom::fill(&mut candidate).map_err(unavailable)?;
        let (keys, owned) = (Arc::clone(&self.keys), subject.to_owned());
        let bytes = tokio::task::spawn_blocking(move || keys.subject_key(&owned, &candidate))
            .await
            .map_err(unavailable)?
            .map_err(unavailable)?;
        let key = key_of(&bytes).ok_or_else(|| unavailable("a stored key is not 32 bytes"))?;
        self.remember(subject, Known::Key(Arc::clone(&key)));
        Ok(key)
    }

    /// Seals the personal fields of `event` (of stream `aggregate_id`).
    pub async fn seal(
        &self,
        aggregate_id: &str,
        event: &mut NewEvent,
        personal: &Personal,
    ) -> Result<(), AppendError> {
        let Ok(Value::Object(mut data)) = serde_json::from_str::<Value>(event.data.get()) else {
            return Ok(());
        };
        let subject = match &personal.subject {
            Some(pointer) => match Value::Object(data.clone()).pointer(pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => aggregate_id.to_owned(),
            },
            None => aggregate_id.to_owned(),
        };
        let mut key = None;
        for field in &personal.fields {
            let Some(value) = data.get(field) else { continue };
            if value.get(SEALED).is_some() {
                continue;
            }
            let key = if let Some(k) = &key {
                Arc::clone(k)
            } else {
                let k = self.key_for_sealing(&subject).await?;
                key = Some(Arc::clone(&k));
                k
            };
            let mut buf = serde_json::to_vec(value).map_err(unavailable)?;
            let kind = json_type(value);
            key.seal_in_place_append_tag(
                nonce(&event.event_id, field),
                Aad::from(aad(aggregate_id, &event.event_type, field)),
                &mut buf,
            )
            .map_err(|_| unavailable("sealing failed"))?;
            let sealed =
                json!({ SEALED: { "s": subject, "t": kind, "c": URL_SAFE_NO_PAD.encode(&buf) } });
            data.insert(field.clone(), sealed);
        }
        if key.is_some() {
            event.data = serde_json::value::to_raw_value(&data).map_err(unavailable)?;
        }
        Ok(())
    }

    /// Opens the sealed fields of `events` in place (erased ones become placeholders).
    pub async fn open(&self, events: &mut [RecordedEvent]) {
        let sealed: Vec<usize> =
            (0..events.len()).filter(|&i| events[i].data.get().contains(SEALED)).collect();
        if sealed.is_empty() {
            return;
        }
        // Every subject not in the cache, looked up at once.
        let mut missing: Vec<String> = Vec::new();
        let mut parsed: Vec<(usize, Map<String, Value>)> = Vec::with_capacity(sealed.len());
        for i in sealed {
            let Ok(Value::Object(data)) = serde_json::from_str::<Value>(events[i].data.get())
            else {
                continue;
            };
            for v in data.values() {
                if let Some(s) = v.get(SEALED).and_then(|e| e.get("s")).and_then(Value::as_str)
                    && self.cached(s).is_none()
                    && !missing.iter().any(|m| m == s)
                {
                    missing.push(s.to_owned());
                }
            }
            parsed.push((i, data));
        }
        if !missing.is_empty() {
            let keys = Arc::clone(&self.keys);
            let found = tokio::task::spawn_blocking(move || {
                missing
                    .into_iter()
                    .map(|s| keys.find_subject_key(&s).map(|k| (s, k)))
                    .collect::<Result<Vec<_>, ReadModelError>>()
            })
            .await;
            match found {
                Ok(Ok(found)) => {
                    for (subject, key) in found {
                        self.remember(&subject, Known::of(key.as_deref().and_then(key_of)));
                    }
                }
                // Unknown is not erased: the fields stay sealed this time.
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "subject keys unavailable; fields stay sealed");
                }
                Err(e) => tracing::warn!(error = %e, "subject key lookup failed"),
            }
        }
        for (i, mut data) in parsed {
            let e = &events[i];
            let mut changed = false;
            for (field, v) in &mut data {
                let Some(envelope) = v.get(SEALED) else { continue };
                let subject = envelope.get("s").and_then(Value::as_str).unwrap_or_default();
                let kind = envelope.get("t").and_then(Value::as_str).unwrap_or("null").to_owned();
                let Some(known) = self.cached(subject) else { continue };
                let key = match known {
                    Known::Key(key) => Some(key),
                    Known::Absent => None,
                };
                let opened = key.and_then(|key| {
                    let mut buf = URL_SAFE_NO_PAD
                        .decode(envelope.get("c").and_then(Value::as_str).unwrap_or_default())
                        .ok()?;
                    let plain = key
                        .open_in_place(
                            nonce(&e.event_id, field),
                            Aad::from(aad(&e.aggregate_id, &e.event_type, field)),
                            &mut buf,
                        )
                        .ok()?;
                    serde_json::from_slice::<Value>(plain).ok()
                });
                *v = opened.unwrap_or_else(|| placeholder(&kind));
                changed = true;
            }
            if changed && let Ok(raw) = serde_json::value::to_raw_value(&data) {
                events[i].data = raw;
            }
        }
    }

    /// Deletes the subject's key: its personal fields read as erased from now on, on this
    /// process at once, on others sharing the store within [`KEY_CACHE_TTL`]. `false` when
    /// the subject had no key.
    pub async fn erase(&self, subject: &str) -> Result<bool, ReadModelError> {
        let (keys, owned) = (Arc::clone(&self.keys), subject.to_owned());
        let deleted = tokio::task::spawn_blocking(move || keys.delete_subject_key(&owned))
            .await
            .map_err(|e| ReadModelError::Storage(e.to_string()))??;
        self.remember(subject, Known::Absent);
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use cairn_core::readmodel::MemoryReadModels;
    use cairn_core::timestamp::Timestamp;

    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "name": {"type": "string"},
            "email": {"type": "string", "x-cairn-personal": true},
            "age": {"type": "number", "x-cairn-personal": true}
        }})
    }

    fn recorded(e: &NewEvent) -> RecordedEvent {
        RecordedEvent {
            event_id: e.event_id,
            aggregate_id: "c-1".into(),
            aggregate_type: "Customer".into(),
            event_type: e.event_type.clone(),
            version: 1,
            position: 1,
            timestamp: Timestamp::now(),
            data: e.data.clone(),
            metadata: e.metadata.clone(),
        }
    }

    #[tokio::test]
    async fn sealed_fields_open_until_the_key_is_erased_and_retries_seal_alike() {
        let vault = Vault::new(Arc::new(MemoryReadModels::new()));
        let personal = Personal::of_schema(&schema()).unwrap();
        assert_eq!(personal.fields.len(), 2);
        let data = r#"{"name":"Ann","email":"ann@example.com","age":41}"#;
        let original = NewEvent::new(
            "CustomerRegistered",
            serde_json::value::RawValue::from_string(data.into()).unwrap(),
        );
        let mut event = original.clone();
        vault.seal("c-1", &mut event, &personal).await.unwrap();
        assert!(!event.data.get().contains("ann@example.com"), "{}", event.data.get());
        assert!(event.data.get().contains("Ann"), "unmarked fields stay plain");
        let mut again = original.clone();
        vault.seal("c-1", &mut again, &personal).await.unwrap();
        assert_eq!(event.data.get(), again.data.get(), "a retry seals to the same bytes");

        let mut events = vec![recorded(&event)];
        vault.open(&mut events).await;
        let opened: Value = serde_json::from_str(events[0].data.get()).unwrap();
        assert_eq!(opened, serde_json::from_str::<Value>(data).unwrap());

        // Moved to another stream, a sealed field does not open.
        let mut moved = vec![RecordedEvent { aggregate_id: "c-2".into(), ..recorded(&event) }];
        vault.open(&mut moved).await;
        let moved: Value = serde_json::from_str(moved[0].data.get()).unwrap();
        assert_eq!(moved["email"], ERASED_STRING);

        assert!(vault.erase("c-1").await.unwrap());
        assert!(!vault.erase("c-1").await.unwrap());
        let mut events = vec![recorded(&event)];
        vault.open(&mut events).await;
        let erased: Value = serde_json::from_str(events[0].data.get()).unwrap();
        assert_eq!(erased, json!({"name": "Ann", "email": ERASED_STRING, "age": 0}));
    }
}
