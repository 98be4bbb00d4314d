//! Proof of leadership that every consumer write carries.

use std::marker::PhantomData;
use std::sync::Arc;

/// Proof that this process led `consumer` in term `epoch`: every write a consumer makes
/// takes one, and the store compares it with the consumer's current term inside the
/// write's own transaction. A deposed leader's fence names a term that is over, so its
/// writes are refused ([`super::ReadModelError::Fenced`]) and write nothing.
///
/// Obtained only from [`super::Leases::try_lead`]: making one takes a [`LeaseIssuer`],
/// which only `try_lead` creates (and hands to the backend's
/// [`super::Leases::begin_term`]), so a write without proof of leadership cannot be
/// expressed. User code cannot mint one:
///
/// ```compile_fail,E0624
/// use cairn_core::readmodel::{Fence, LeaseIssuer};
/// // `LeaseIssuer::new` is private to cairn-core: only `Leases::try_lead` calls it.
/// let fence = Fence::issued("orders", 1, LeaseIssuer::new());
/// ```
///
/// ```compile_fail,E0451
/// use cairn_core::readmodel::{Fence, LeaseIssuer};
/// // Nor can the token be built from its parts: its fields are private.
/// let fence = Fence::issued("orders", 1, LeaseIssuer { _call: std::marker::PhantomData });
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fence {
    consumer: Arc<str>,
    epoch: u64,
}

impl Fence {
    /// The fence of the term `epoch` a [`super::Leases`] backend has just durably begun
    /// (or still holds) for `consumer`, inside its [`super::Leases::begin_term`]: the
    /// `issuer` that call was given is spent on it.
    // Taken by value on purpose: spending the token is what limits it to one fence.
    #[allow(clippy::needless_pass_by_value)]
    #[must_use]
    pub fn issued(consumer: &str, epoch: u64, issuer: LeaseIssuer<'_>) -> Self {
        let LeaseIssuer { _call } = issuer;
        Self { consumer: Arc::from(consumer), epoch }
    }

    /// The consumer whose leadership it proves (never a `#rebuild` name).
    #[must_use]
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The term: grows each time any process takes the consumer.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// `Ok` when this fence covers writes made under `consumer`'s name (the consumer or
    /// its rebuild); a fence of another consumer proves nothing about this one.
    pub fn covers(&self, consumer: &str) -> Result<(), super::ReadModelError> {
        if super::leadership_key(consumer) == self.consumer() {
            Ok(())
        } else {
            Err(super::ReadModelError::NotLeader(super::leadership_key(consumer).to_owned()))
        }
    }

    /// `Ok` when the store's current term of the consumer is this fence's.
    pub fn check(&self, current: Option<u64>) -> Result<(), super::ReadModelError> {
        if current == Some(self.epoch) {
            Ok(())
        } else {
            Err(super::ReadModelError::Fenced {
                consumer: self.consumer().to_owned(),
                epoch: self.epoch,
                current: current.unwrap_or(0),
            })
        }
    }
}

/// The right to issue one [`Fence`]: created only by [`super::Leases::try_lead`], which
/// hands it to the backend's [`super::Leases::begin_term`].
///
/// Why this shape: a Rust crate cannot make a constructor public to some crates (the
/// backends, cairn-sqlite and cairn-postgres) and not to others. A cargo feature would
/// not do: features are additive, and any crate may enable one. So the capability is a
/// value that cairn-core alone creates (its constructor is private to it) and passes
/// into the one trait method that starts a term; `try_lead` is a provided method whose
/// body is cairn-core's, so a backend gets a token only by implementing
/// [`super::Leases`], and only for the duration of that call (the lifetime keeps it from
/// being stored, and it is neither `Clone` nor `Copy`: one token, one fence). Code that
/// does not implement `Leases` has no way to mint a fence. What a fence proves is still
/// checked by the store, inside each write's transaction, against its recorded term: the
/// token keeps fences from being made up by mistake, the store keeps stale ones out.
#[derive(Debug)]
pub struct LeaseIssuer<'call> {
    _call: PhantomData<&'call mut ()>,
}

impl LeaseIssuer<'_> {
    /// Only [`super::Leases::try_lead`] makes one.
    pub(super) fn new() -> Self {
        Self { _call: PhantomData }
    }
}
