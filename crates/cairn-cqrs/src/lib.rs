//! Cairn's CQRS framework, generic over the user's aggregates and read models.
//!
//! - [`aggregate`]: the `Aggregate` and `DomainEvent` traits a user implements.
//! - [`repository`]: loads an aggregate from its stream, decides, appends with optimistic
//!   concurrency, retries on conflict, honours idempotency keys, stamps metadata.
//! - [`projection`]: runs a projection from its checkpoint over `$all`, each batch and its
//!   checkpoint in one read-model transaction; exposes position and lag.
//! - [`process`]: runs a process manager the same way, with durable instance state.
//! - [`kind`]: [`AggregateKind`], one aggregate type with its generics erased.
//! - [`integration`]: public, versioned events made from stored ones, for other services.

pub mod aggregate;
pub mod consumer;
pub mod instance_counts;
pub mod integration;
pub mod kind;
pub mod metadata;
pub mod process;
pub mod projection;
pub mod repository;

pub use aggregate::{Aggregate, DecodeError, DomainError, DomainEvent, Existence};
pub use kind::{AggregateKind, StateAt};
pub use metadata::CommandMetadata;
pub use repository::{CommandError, CommandOptions, CommandOutcome, Repository};
