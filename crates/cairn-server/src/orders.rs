//! The Order Management module: the reference domain's aggregates, schemas, consumers and
//! the contract's Order routes. It lives here until it moves to its own crate
//! (`cairn-orders-http`, docs/design/modules.md step 6); the server's own code reaches it
//! only through [`module`].

use std::sync::Arc;

use axum::http::Method;
use cairn_orders::fulfillment::OrderFulfillment;
use cairn_orders::{Customer, Inventory, Order};

use crate::domain_schemas::{DOMAIN_SCHEMAS, INTEGRATION_SCHEMAS};
use crate::module::{IntegrationEvents, Module, Permission, Route};
use crate::routes::{commands, queries};

/// The module's name.
pub const NAME: &str = "orders";

/// The Order Management context as a module.
#[must_use]
pub fn module() -> Module {
    let mut builder = Module::builder(NAME)
        .aggregate::<Order>()
        .aggregate::<Inventory>()
        .aggregate::<Customer>()
        .schemas(DOMAIN_SCHEMAS)
        .integration_events(IntegrationEvents {
            subject_prefix: "public.orders",
            schemas: INTEGRATION_SCHEMAS,
            translate: Arc::new(cairn_orders::integration::translate),
        })
        .process_manager(Arc::new(OrderFulfillment));
    for projection in cairn_orders::projections() {
        builder = builder.projection(projection);
    }
    for route in routes() {
        builder = builder.route(route);
    }
    builder.build()
}

/// The contract's Order routes: queries read, commands write. The commands that existed
/// over NATS before modules keep their names (`cairn.commands.<name>[.<id>]` is a
/// published interface); `remove_item` was never one.
fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::POST, "/customers", commands::register_customer, Permission::Write)
            .nats("register_customer"),
        Route::new(
            Method::GET,
            "/customers/{aggregate_id}",
            queries::get_customer,
            Permission::Read,
        ),
        Route::new(
            Method::POST,
            "/customers/{aggregate_id}/email",
            commands::change_email,
            Permission::Write,
        )
        .nats("change_email"),
        Route::new(
            Method::GET,
            "/inventory/{aggregate_id}",
            queries::get_inventory,
            Permission::Read,
        ),
        Route::new(
            Method::POST,
            "/inventory/{aggregate_id}/restock",
            commands::restock,
            Permission::Write,
        )
        .nats("restock"),
        Route::new(Method::POST, "/orders", commands::create_order, Permission::Write)
            .nats("create_order"),
        Route::new(Method::GET, "/orders", queries::list_orders, Permission::Read),
        Route::new(Method::GET, "/orders/{aggregate_id}", queries::get_order, Permission::Read),
        Route::new(
            Method::POST,
            "/orders/{aggregate_id}/items",
            commands::add_item,
            Permission::Write,
        )
        .nats("add_item"),
        Route::new(
            Method::DELETE,
            "/orders/{aggregate_id}/items/{product_id}",
            commands::remove_item,
            Permission::Write,
        ),
        Route::new(
            Method::POST,
            "/orders/{aggregate_id}/confirm",
            commands::confirm,
            Permission::Write,
        )
        .nats("confirm_order"),
        Route::new(Method::POST, "/orders/{aggregate_id}/ship", commands::ship, Permission::Write)
            .nats("ship_order"),
        Route::new(
            Method::POST,
            "/orders/{aggregate_id}/cancel",
            commands::cancel,
            Permission::Write,
        )
        .nats("cancel_order"),
        Route::new(
            Method::POST,
            "/orders/{aggregate_id}/correct-total",
            commands::correct_total,
            Permission::Write,
        )
        .nats("correct_total"),
        Route::new(
            Method::GET,
            "/orders/{aggregate_id}/events",
            queries::order_events,
            Permission::Read,
        ),
        Route::new(
            Method::GET,
            "/orders/{aggregate_id}/state",
            queries::order_state,
            Permission::Read,
        ),
        Route::new(
            Method::GET,
            "/shipped-orders/{aggregate_id}",
            queries::get_shipped_order,
            Permission::Read,
        ),
    ]
}
