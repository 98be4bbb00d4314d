//! The reference Order Management context as a Cairn module: the domain of `cairn-orders`
//! (which knows no HTTP) with the contract's Order routes (§3 commands, §4 queries), their
//! OpenAPI documentation, the event schemas, the projections, `OrderFulfillment` and the
//! public integration events. `cairn serve` is `cairn_cli::run(vec![module()])`.

mod commands;
pub mod docs;
mod queries;

use std::sync::Arc;

use axum::http::Method;
use cairn_orders::fulfillment::OrderFulfillment;
use cairn_orders::{Customer, Inventory, Order};
use utoipa::OpenApi;

use cairn_orders::schemas::{EVENTS, PUBLIC};
use cairn_server::{IntegrationEvents, Module, Permission, Route};

/// The module's name.
pub const NAME: &str = "orders";

/// The Order Management context as a module.
#[must_use]
pub fn module() -> Module {
    let mut builder = Module::builder(NAME)
        .aggregate::<Order>()
        .aggregate::<Inventory>()
        .aggregate::<Customer>()
        .schemas(EVENTS)
        .integration_events(IntegrationEvents {
            subject_prefix: "public.orders",
            schemas: PUBLIC,
            translate: Arc::new(cairn_orders::integration::translate),
        })
        .process_manager(Arc::new(OrderFulfillment))
        .openapi(documentation());
    for projection in cairn_orders::projections() {
        builder = builder.projection(projection);
    }
    for route in routes() {
        builder = builder.route(route);
    }
    builder.build()
}

/// Declares every Order route exactly once: its method, path, handler (whose
/// `#[utoipa::path]` documents it), permission and, for a command that existed over NATS
/// before modules, its NATS name (`cairn.commands.<name>[.<id>]` is a published interface;
/// `remove_item` was never one). [`routes`] and [`OrdersDoc`] are generated from it, so a
/// route and its documentation cannot part.
macro_rules! route_table {
    ($(
        $method:ident $path:literal => $module:ident :: $handler:ident, $permission:ident
        $(, nats $nats:literal)?
    );+ $(;)?) => {
        /// The contract's Order routes: queries read, commands write.
        fn routes() -> Vec<Route> {
            vec![$(
                Route::new(Method::$method, $path, $module::$handler, Permission::$permission)
                    $(.nats($nats))?
            ),+]
        }

        /// The documentation of the Order routes.
        #[derive(OpenApi)]
        #[openapi(
            paths($($module::$handler),+),
            tags(
                (name = "commands", description = "Order Management commands (contract §3)"),
                (name = "queries", description = "Read models and write-model queries (contract §4)"),
            )
        )]
        struct OrdersDoc;
    };
}

route_table! {
    POST "/customers" => commands::register_customer, Write, nats "register_customer";
    GET "/customers/{aggregate_id}" => queries::get_customer, Read;
    POST "/customers/{aggregate_id}/email" => commands::change_email, Write, nats "change_email";
    GET "/inventory/{aggregate_id}" => queries::get_inventory, Read;
    POST "/inventory/{aggregate_id}/restock" => commands::restock, Write, nats "restock";
    POST "/orders" => commands::create_order, Write, nats "create_order";
    GET "/orders" => queries::list_orders, Read;
    GET "/orders/{aggregate_id}" => queries::get_order, Read;
    POST "/orders/{aggregate_id}/items" => commands::add_item, Write, nats "add_item";
    DELETE "/orders/{aggregate_id}/items/{product_id}" => commands::remove_item, Write, nats "remove_item";
    POST "/orders/{aggregate_id}/confirm" => commands::confirm, Write, nats "confirm_order";
    POST "/orders/{aggregate_id}/ship" => commands::ship, Write, nats "ship_order";
    POST "/orders/{aggregate_id}/cancel" => commands::cancel, Write, nats "cancel_order";
    POST "/orders/{aggregate_id}/correct-total" => commands::correct_total, Write, nats "correct_total";
    GET "/orders/{aggregate_id}/events" => queries::order_events, Read;
    GET "/orders/{aggregate_id}/state" => queries::order_state, Read;
    GET "/shipped-orders/{aggregate_id}" => queries::get_shipped_order, Read;
}

/// [`OrdersDoc`] with its links: a command's answer names the aggregate the reads and the
/// next commands need, and its `position` is the `min_position` that makes a read of the
/// read model see the command (contract §4, read-your-writes).
fn documentation() -> utoipa::openapi::OpenApi {
    use cairn_server::openapi::link;
    let mut doc = OrdersDoc::openapi();
    let id = ("aggregate_id", "$response.body#/aggregate_id");
    let seen = ("min_position", "$response.body#/position");
    let customer =
        [("post", "/customers", "201"), ("post", "/customers/{aggregate_id}/email", "200")];
    for from in customer {
        link(&mut doc, from, "get_customer", &[id, seen]);
    }
    link(&mut doc, customer[0], "change_email", &[id]);
    let restocked = ("post", "/inventory/{aggregate_id}/restock", "200");
    link(&mut doc, restocked, "get_inventory", &[id, seen]);
    link(&mut doc, restocked, "restock", &[id]);
    let created = ("post", "/orders", "201");
    let order_commands = [
        created,
        ("post", "/orders/{aggregate_id}/items", "200"),
        ("delete", "/orders/{aggregate_id}/items/{product_id}", "200"),
        ("post", "/orders/{aggregate_id}/confirm", "200"),
        ("post", "/orders/{aggregate_id}/ship", "200"),
        ("post", "/orders/{aggregate_id}/cancel", "200"),
        ("post", "/orders/{aggregate_id}/correct-total", "200"),
    ];
    for from in order_commands {
        link(&mut doc, from, "get_order", &[id, seen]);
        link(&mut doc, from, "order_events", &[id]);
        link(&mut doc, from, "order_state", &[id]);
    }
    link(&mut doc, created, "list_orders", &[("customer_id", "$request.body#/customer_id"), seen]);
    for next in ["add_item", "confirm", "cancel", "correct_total"] {
        link(&mut doc, created, next, &[id]);
    }
    let added = order_commands[1];
    link(&mut doc, added, "remove_item", &[id, ("product_id", "$request.body#/product_id")]);
    link(&mut doc, added, "confirm", &[id]);
    link(&mut doc, order_commands[3], "ship", &[id]);
    let shipped = order_commands[4];
    link(&mut doc, shipped, "get_shipped_order", &[id, seen]);
    doc
}
