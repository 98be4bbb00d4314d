//! The bank as a Cairn module: what the server runs and serves. Everything here is
//! wiring; the rules live in the domain files.

use std::sync::Arc;

use cairn_server::generic::{CommandRoute, NoBody, ReadModelRoute, StateRoute};
use cairn_server::{IntegrationEvents, Module};

use crate::account::{Deposit, Open, Withdraw};
use crate::balances::{self, AccountBalance, StatementLine};
use crate::transfer::Request;
use crate::{Account, AccountCommand, Balances, Transfer, TransferCommand, TransferSaga};
use crate::{integration, schemas};

/// The module `bank` serves.
#[must_use]
pub fn module() -> Module {
    Module::builder("bank")
        .aggregate::<Account>()
        .aggregate::<Transfer>()
        .schemas(schemas::EVENTS)
        .projection(Arc::new(Balances))
        .process_manager(Arc::new(TransferSaga))
        .integration_events(IntegrationEvents {
            subject_prefix: "public.bank",
            schemas: schemas::PUBLIC,
            translate: Arc::new(integration::translate),
        })
        .route(
            CommandRoute::<Account, Open>::post(
                "/accounts/{aggregate_id}/open",
                "open_account",
                AccountCommand::Open,
            )
            .nats(),
        )
        .route(
            CommandRoute::<Account, Deposit>::post(
                "/accounts/{aggregate_id}/deposit",
                "deposit",
                AccountCommand::Deposit,
            )
            .nats(),
        )
        .route(
            CommandRoute::<Account, Withdraw>::post(
                "/accounts/{aggregate_id}/withdraw",
                "withdraw",
                AccountCommand::Withdraw,
            )
            .nats(),
        )
        .route(
            CommandRoute::<Account, NoBody>::post_empty(
                "/accounts/{aggregate_id}/close",
                "close_account",
                || AccountCommand::Close,
            )
            .nats(),
        )
        .route(
            CommandRoute::<Transfer, Request>::create(
                "/transfers",
                "request_transfer",
                "tr",
                |_| None,
                TransferCommand::Request,
            )
            .nats(),
        )
        .route(
            ReadModelRoute::document("/accounts/{aggregate_id}", balances::NAME, balances::TABLE)
                .schema::<AccountBalance>(),
        )
        .route(
            ReadModelRoute::list(
                "/accounts",
                balances::NAME,
                balances::TABLE,
                &["status", "owner"],
            )
            .schema::<AccountBalance>(),
        )
        .route(
            ReadModelRoute::list(
                "/statement-lines",
                balances::NAME,
                balances::LINES,
                &["account_id"],
            )
            .schema::<StatementLine>(),
        )
        .route(StateRoute::<Account>::new("/accounts/{aggregate_id}/state"))
        .route(StateRoute::<Transfer>::new("/transfers/{aggregate_id}"))
        .build()
}
