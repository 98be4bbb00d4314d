//! What a server offers a message bus, without knowing one: the routes that are also
//! commands over NATS ([`NatsCommand`]), and the modules' public integration events
//! ([`IntegrationEvents`], routed by [`IntegrationRouter`]). The broker itself lives in
//! the binary (`cairn-cli`, through `cairn-nats`), so this crate stays broker-free.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::Method;
use cairn_core::RecordedEvent;
use cairn_cqrs::integration::{IntegrationEvent, TranslateError};

use crate::module::SchemaTable;

/// A module's translator: one stored event → at most one public event. Pure (the relay
/// may call it again for the same event after a failure and must get the same message).
pub type Translate =
    Arc<dyn Fn(&RecordedEvent) -> Result<Option<IntegrationEvent>, TranslateError> + Send + Sync>;

/// The public integration events a module publishes.
#[derive(Clone)]
pub struct IntegrationEvents {
    /// Every subject the module publishes starts with it (`public.orders`); the public
    /// stream gets `<namespace><prefix>.>` as one of its subjects.
    pub subject_prefix: &'static str,
    /// One schema (version 1) per public type, registered like domain schemas.
    pub schemas: SchemaTable,
    /// Called only for events of the module's own aggregate types.
    pub translate: Translate,
}

impl std::fmt::Debug for IntegrationEvents {
    // By hand: a closure prints nothing useful.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegrationEvents")
            .field("subject_prefix", &self.subject_prefix)
            .field("schemas", &self.schemas.iter().map(|(t, _)| *t).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A route also served as a command over NATS: a request on
/// `<commands prefix>.<name>[.<parameter>…]` is served as `method path`, each of the
/// path's parameters (in path order) filled from one subject token after the name:
/// `remove_item.<order id>.<product id>` for `/orders/{aggregate_id}/items/{product_id}`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsCommand {
    /// The command's name: the subject token after the prefix.
    pub name: &'static str,
    /// The route's method.
    pub method: Method,
    /// The route's path in axum's syntax (`/orders/{aggregate_id}/items`).
    pub path: String,
}

impl NatsCommand {
    /// The path's parameter names in order: the subject tokens after the command's name.
    #[must_use]
    pub fn parameters(&self) -> Vec<&str> {
        path_parameters(&self.path)
    }

    /// The subject's shape after the prefix, for docs and errors:
    /// `remove_item.<aggregate_id>.<product_id>`.
    #[must_use]
    pub fn subject_shape(&self) -> String {
        let mut shape = self.name.to_owned();
        for p in self.parameters() {
            shape.push_str(".<");
            shape.push_str(p);
            shape.push('>');
        }
        shape
    }
}

/// The parameter names of an axum path (`{name}` segments), in order.
pub(crate) fn path_parameters(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

/// Why [`IntegrationRouter::translate`] could not make a public event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IntegrationError {
    /// The module's translator failed.
    #[error("{module}: {source}")]
    Translate {
        /// The module whose translator failed.
        module: &'static str,
        /// Its error.
        #[source]
        source: TranslateError,
    },
    /// The translator made an event on a subject outside its module's prefix: the public
    /// stream does not hold that subject, so publishing it could never succeed.
    #[error("{module}: subject {subject:?} is not under the module's prefix {prefix:?}")]
    Subject {
        /// The module whose translator made it.
        module: &'static str,
        /// The subject it made.
        subject: String,
        /// The module's declared prefix.
        prefix: &'static str,
    },
}

struct Translator {
    module: &'static str,
    prefix: &'static str,
    translate: Translate,
}

/// Every module's translator, each called only for the aggregate types its module
/// registered: a module never sees (nor can publish) another module's events.
#[derive(Clone)]
pub struct IntegrationRouter {
    translators: Arc<[Translator]>,
    /// Aggregate type → index in `translators`.
    by_aggregate: Arc<BTreeMap<&'static str, usize>>,
}

impl std::fmt::Debug for IntegrationRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntegrationRouter")
            .field("subject_prefixes", &self.subject_prefixes())
            .field("by_aggregate", &self.by_aggregate)
            .finish_non_exhaustive()
    }
}

impl IntegrationRouter {
    /// From `(module, its aggregate types, its integration events)`; `None` if no module
    /// declares integration events.
    pub(crate) fn new<'a>(
        modules: impl IntoIterator<Item = (&'static str, Vec<&'static str>, &'a IntegrationEvents)>,
    ) -> Option<Self> {
        let mut translators = Vec::new();
        let mut by_aggregate = BTreeMap::new();
        for (module, aggregates, events) in modules {
            by_aggregate.extend(aggregates.into_iter().map(|a| (a, translators.len())));
            translators.push(Translator {
                module,
                prefix: events.subject_prefix,
                translate: Arc::clone(&events.translate),
            });
        }
        (!translators.is_empty())
            .then(|| Self { translators: translators.into(), by_aggregate: Arc::new(by_aggregate) })
    }

    /// The public event `event` stands for, made by the module owning its aggregate type;
    /// `Ok(None)` for events no module with integration events owns.
    pub fn translate(
        &self,
        event: &RecordedEvent,
    ) -> Result<Option<IntegrationEvent>, IntegrationError> {
        let Some(&index) = self.by_aggregate.get(event.aggregate_type.as_str()) else {
            return Ok(None);
        };
        let translator = &self.translators[index];
        let public = (translator.translate)(event)
            .map_err(|source| IntegrationError::Translate { module: translator.module, source })?;
        if let Some(public) = &public
            && !under_prefix(&public.subject, translator.prefix)
        {
            return Err(IntegrationError::Subject {
                module: translator.module,
                subject: public.subject.clone(),
                prefix: translator.prefix,
            });
        }
        Ok(public)
    }

    /// Every module's subject prefix, in registration order (the public stream's subjects
    /// are `<namespace><prefix>.>` for each).
    #[must_use]
    pub fn subject_prefixes(&self) -> Vec<&'static str> {
        self.translators.iter().map(|t| t.prefix).collect()
    }
}

/// Whether `subject` is `<prefix>.<something>` (what `<prefix>.>` matches).
fn under_prefix(subject: &str, prefix: &str) -> bool {
    subject
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|r| !r.is_empty())
}

/// A NATS subject token or dotted prefix: non-empty tokens of printable ASCII without
/// wildcards, so it can be put in a subject as it is.
pub(crate) fn valid_subject(subject: &str, dotted: bool) -> bool {
    let token_ok = |t: &str| {
        !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')
    };
    if dotted {
        subject.split('.').all(token_ok)
    } else {
        token_ok(subject) && !subject.contains('.')
    }
}

/// Whether two subject prefixes overlap (one's `.>` matches the other's subjects).
pub(crate) fn prefixes_overlap(a: &str, b: &str) -> bool {
    let (a, b): (Vec<_>, Vec<_>) = (a.split('.').collect(), b.split('.').collect());
    a.iter().zip(&b).all(|(x, y)| x == y)
}

#[cfg(test)]
mod tests {
    use super::{prefixes_overlap, under_prefix, valid_subject};

    #[test]
    fn subjects_are_under_a_prefix_only_past_a_dot() {
        assert!(under_prefix("public.orders.created.v1", "public.orders"));
        assert!(!under_prefix("public.ordersx.created", "public.orders"));
        assert!(!under_prefix("public.orders", "public.orders"));
        assert!(!under_prefix("public.orders.", "public.orders"));
    }

    #[test]
    fn prefixes_overlap_when_one_extends_the_other_by_tokens() {
        assert!(prefixes_overlap("public.orders", "public.orders"));
        assert!(prefixes_overlap("public", "public.orders"));
        assert!(!prefixes_overlap("public.orders", "public.ordersx"));
        assert!(!prefixes_overlap("public.orders", "public.bank"));
    }

    #[test]
    fn subject_tokens_have_no_wildcards_or_blanks() {
        assert!(valid_subject("create_order", false));
        assert!(!valid_subject("create.order", false));
        assert!(!valid_subject("", false));
        assert!(!valid_subject("a b", false));
        assert!(valid_subject("public.orders", true));
        assert!(!valid_subject("public..orders", true));
        assert!(!valid_subject("public.*", true));
        assert!(!valid_subject("public.>", true));
    }
}
