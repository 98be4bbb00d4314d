//! Server-side filters of `$all` reads and subscriptions: on the stream name or the
//! event type, by prefixes or a regular expression, and how often a filtered
//! subscription sends a checkpoint.

use cairn_core::RecordedEvent;
use regex::Regex;
use tonic::Status;

use crate::proto::event_store::client::streams::read_req::options::{
    FilterOption, FilterOptions, filter_options,
};

/// Longest regular expression accepted (compiled per call; bounded so that no call can
/// make the server build a huge automaton).
pub const REGEX_LEN_MAX: usize = 1024;
/// Most prefixes in one filter.
pub const PREFIXES_MAX: usize = 256;
/// Events scanned between two checkpoints when the client sets no window (`KurrentDB`'s
/// default).
pub const CHECKPOINT_WINDOW_DEFAULT: u64 = 32;
/// Compiled size limit of a filter's regular expression.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// What a filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Stream,
    EventType,
}

/// A compiled filter.
#[derive(Debug, Clone)]
pub struct EventFilter {
    target: Target,
    prefixes: Vec<String>,
    regex: Option<Regex>,
    /// Events scanned between checkpoints.
    pub checkpoint_interval: u64,
}

impl EventFilter {
    /// The filter a read asks for; `None` for no filter.
    pub fn from_options(option: Option<&FilterOption>) -> Result<Option<Self>, Status> {
        let Some(FilterOption::Filter(options)) = option else { return Ok(None) };
        Self::compile(options).map(Some)
    }

    fn compile(options: &FilterOptions) -> Result<Self, Status> {
        let (target, expression) = match &options.filter {
            Some(filter_options::Filter::StreamIdentifier(e)) => (Target::Stream, e),
            Some(filter_options::Filter::EventType(e)) => (Target::EventType, e),
            None => {
                return Err(Status::invalid_argument(
                    "a filter needs a stream or event-type expression",
                ));
            }
        };
        if expression.prefix.len() > PREFIXES_MAX {
            return Err(Status::invalid_argument(format!(
                "a filter holds at most {PREFIXES_MAX} prefixes"
            )));
        }
        let regex = if expression.regex.is_empty() {
            None
        } else {
            if expression.regex.len() > REGEX_LEN_MAX {
                return Err(Status::invalid_argument(format!(
                    "a filter's regular expression is at most {REGEX_LEN_MAX} bytes"
                )));
            }
            let regex = regex::RegexBuilder::new(&expression.regex)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| Status::invalid_argument(format!("filter regex: {e}")))?;
            Some(regex)
        };
        let window = match options.window {
            Some(filter_options::Window::Max(max)) if max > 0 => u64::from(max),
            _ => CHECKPOINT_WINDOW_DEFAULT,
        };
        let multiplier = u64::from(options.checkpoint_interval_multiplier.max(1));
        Ok(Self {
            target,
            prefixes: expression.prefix.clone(),
            regex,
            checkpoint_interval: window.saturating_mul(multiplier),
        })
    }

    /// Whether `event` passes: a prefix or the expression matches (no prefix and no
    /// expression lets everything through).
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        let text = match self.target {
            Target::Stream => event.aggregate_id.as_str(),
            Target::EventType => event.event_type.as_str(),
        };
        if self.prefixes.is_empty() && self.regex.is_none() {
            return true;
        }
        self.prefixes.iter().any(|p| text.starts_with(p.as_str()))
            || self.regex.as_ref().is_some_and(|r| r.is_match(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::event_store::client::streams::read_req::options::filter_options::{
        Expression, Filter,
    };

    fn event(stream: &str, event_type: &str) -> RecordedEvent {
        serde_json::from_value(serde_json::json!({
            "event_id": "0190b6a8-0000-7000-8000-000000000000",
            "aggregate_id": stream, "aggregate_type": "t", "event_type": event_type,
            "version": 1, "position": 1, "timestamp": "2026-01-01T00:00:00.000000Z",
            "data": {}, "metadata": {}
        }))
        .unwrap()
    }

    fn filter(filter: Filter) -> EventFilter {
        let options =
            FilterOptions { filter: Some(filter), window: None, checkpoint_interval_multiplier: 0 };
        EventFilter::compile(&options).unwrap()
    }

    #[test]
    fn prefixes_and_regexes_pick_streams_or_types() {
        let by_stream = filter(Filter::StreamIdentifier(Expression {
            regex: String::new(),
            prefix: vec!["order-".into()],
        }));
        assert!(by_stream.matches(&event("order-1", "X")));
        assert!(!by_stream.matches(&event("customer-1", "X")));
        let by_type = filter(Filter::EventType(Expression {
            regex: "^Order(Paid|Shipped)$".into(),
            prefix: vec![],
        }));
        assert!(by_type.matches(&event("a", "OrderPaid")));
        assert!(!by_type.matches(&event("a", "OrderCreated")));
        assert_eq!(by_type.checkpoint_interval, CHECKPOINT_WINDOW_DEFAULT);
    }

    #[test]
    fn a_bad_regex_is_a_clear_error() {
        let options = FilterOptions {
            filter: Some(Filter::EventType(Expression { regex: "(".into(), prefix: vec![] })),
            window: None,
            checkpoint_interval_multiplier: 1,
        };
        assert_eq!(
            EventFilter::compile(&options).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
