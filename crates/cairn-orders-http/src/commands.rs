//! The command API of the reference domain (contract §3).

use axum::extract::{Path, State};
use axum::response::Response;
use cairn_orders::customer::CustomerCommand;
use cairn_orders::inventory::InventoryCommand;
use cairn_orders::order::{Line, OrderCommand};
use cairn_orders::{Customer, Inventory, Money, Order};
use serde::Deserialize;

use cairn_server::error::ApiError;
use cairn_server::extract::{AggregateIdPath, CommandHeaders, JsonBody, check_id, id_or_mint};
use cairn_server::openapi::{self, CommandOutcome, ErrorBody};
use cairn_server::{AppState, command};

use crate::docs::Price as PriceSchema;

/// `POST /customers` body.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct RegisterCustomer {
    /// Minted as `cust-<uuid v7>` when absent.
    #[schema(pattern = "^[A-Za-z0-9._:@-]{1,128}$", min_length = 1, max_length = 128)]
    customer_id: Option<String>,
    /// Name.
    name: String,
    /// E-mail address.
    email: String,
}

/// Registers a customer (`CustomerRegistered`).
#[utoipa::path(
    post,
    path = "/customers",
    tag = "commands",
    params(openapi::CommandHeaders),
    request_body = RegisterCustomer,
    responses(
        (status = 201, description = "Registered", body = CommandOutcome),
        (status = 400, description = "`bad_request`", body = ErrorBody),
        (status = 409, description = "`wrong_expected_version`: the customer exists", body = ErrorBody),
        (status = 422, description = "`rule_violation`", body = ErrorBody),
    )
)]
pub async fn register_customer(
    State(state): State<AppState>,
    headers: CommandHeaders,
    JsonBody(body): JsonBody<RegisterCustomer>,
) -> Result<Response, ApiError> {
    // A replayed key answers before a fresh id is minted.
    let id = id_or_mint(body.customer_id, "cust")?;
    let command = CustomerCommand::Register { name: body.name, email: body.email };
    command::run::<Customer>(&state, "register_customer", &id, command, headers).await
}

/// `POST /customers/{id}/email` body.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct ChangeEmail {
    /// The new address.
    email: String,
}

/// Changes a customer's e-mail address (`CustomerEmailChanged`; nothing when unchanged).
#[utoipa::path(
    post,
    path = "/customers/{aggregate_id}/email",
    tag = "commands",
    params(("aggregate_id" = String, Path, description = "The customer"), openapi::CommandHeaders),
    request_body = ChangeEmail,
    responses(
        (status = 200, description = "Changed", body = CommandOutcome),
        (status = 400, description = "`bad_request`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such customer", body = ErrorBody),
        (status = 409, description = "`wrong_expected_version`", body = ErrorBody),
        (status = 422, description = "`rule_violation`", body = ErrorBody),
    )
)]
pub async fn change_email(
    State(state): State<AppState>,
    AggregateIdPath(id): AggregateIdPath,
    headers: CommandHeaders,
    JsonBody(body): JsonBody<ChangeEmail>,
) -> Result<Response, ApiError> {
    command::run::<Customer>(
        &state,
        "change_email",
        &id,
        CustomerCommand::ChangeEmail { email: body.email },
        headers,
    )
    .await
}

/// `POST /inventory/{product_id}/restock` body.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct Restock {
    /// How many arrived (at least 1).
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    #[serde(deserialize_with = "cairn_core::whole::deserialize")]
    quantity: i64,
}

/// Adds stock to a product (`StockAdded`); the first restock creates it.
#[utoipa::path(
    post,
    path = "/inventory/{aggregate_id}/restock",
    tag = "commands",
    params(("aggregate_id" = String, Path, description = "The product id"), openapi::CommandHeaders),
    request_body = Restock,
    responses(
        (status = 200, description = "Restocked", body = CommandOutcome),
        (status = 400, description = "`bad_request`", body = ErrorBody),
        (status = 409, description = "`wrong_expected_version`", body = ErrorBody),
        (status = 422, description = "`rule_violation`", body = ErrorBody),
    )
)]
pub async fn restock(
    State(state): State<AppState>,
    AggregateIdPath(id): AggregateIdPath,
    headers: CommandHeaders,
    JsonBody(body): JsonBody<Restock>,
) -> Result<Response, ApiError> {
    command::run::<Inventory>(
        &state,
        "restock",
        &id,
        InventoryCommand::Restock { quantity: body.quantity },
        headers,
    )
    .await
}

/// An order line in a request.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct LineBody {
    /// The product.
    #[schema(pattern = "^[A-Za-z0-9._:@-]{1,128}$", min_length = 1, max_length = 128)]
    product_id: String,
    /// How many (at least 1).
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    #[serde(deserialize_with = "cairn_core::whole::deserialize")]
    quantity: i64,
    /// Unit price: at least 0, at most 2 decimals.
    #[schema(value_type = PriceSchema)]
    price: Money,
}

impl From<LineBody> for Line {
    fn from(l: LineBody) -> Self {
        Line { product_id: l.product_id, quantity: l.quantity, price: l.price }
    }
}

/// `POST /orders` body.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct CreateOrder {
    /// Minted as `order-<uuid v7>` when absent.
    #[schema(pattern = "^[A-Za-z0-9._:@-]{1,128}$", min_length = 1, max_length = 128)]
    order_id: Option<String>,
    /// Who orders.
    #[schema(pattern = "^[A-Za-z0-9._:@-]{1,128}$", min_length = 1, max_length = 128)]
    customer_id: String,
    /// Initial lines; repeated products are merged into one line.
    #[serde(default)]
    items: Vec<LineBody>,
}

/// Creates an order (`OrderCreated`).
#[utoipa::path(
    post,
    path = "/orders",
    tag = "commands",
    params(openapi::CommandHeaders),
    request_body = CreateOrder,
    responses(
        (status = 201, description = "Created", body = CommandOutcome),
        (status = 400, description = "`bad_request`", body = ErrorBody),
        (status = 409, description = "`wrong_expected_version`: the order exists", body = ErrorBody),
        (status = 422, description = "`rule_violation`", body = ErrorBody),
    )
)]
pub async fn create_order(
    State(state): State<AppState>,
    headers: CommandHeaders,
    JsonBody(body): JsonBody<CreateOrder>,
) -> Result<Response, ApiError> {
    let id = id_or_mint(body.order_id, "order")?;
    let command = OrderCommand::Create {
        customer_id: body.customer_id,
        items: body.items.into_iter().map(Line::from).collect(),
    };
    command::run::<Order>(&state, "create_order", &id, command, headers).await
}

/// Adds an item to a pending order (`ItemAdded`), or more of a product already on it.
#[utoipa::path(
    post,
    path = "/orders/{aggregate_id}/items",
    tag = "commands",
    params(("aggregate_id" = String, Path, description = "The order"), openapi::CommandHeaders),
    request_body = LineBody,
    responses(
        (status = 200, description = "Added", body = CommandOutcome),
        (status = 400, description = "`bad_request`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such order", body = ErrorBody),
        (status = 409, description = "`wrong_expected_version`", body = ErrorBody),
        (status = 422, description = "`rule_violation`", body = ErrorBody),
    )
)]
pub async fn add_item(
    State(state): State<AppState>,
    AggregateIdPath(id): AggregateIdPath,
    headers: CommandHeaders,
    JsonBody(body): JsonBody<LineBody>,
) -> Result<Response, ApiError> {
    command::run::<Order>(&state, "add_item", &id, OrderCommand::AddItem(body.into()), headers)
        .await
}

/// Removes a product's line from a pending order (`ItemRemoved`).
#[utoipa::path(
    delete,
    path = "/orders/{aggregate_id}/items/{product_id}",
    tag = "commands",
    params(
        ("aggregate_id" = String, Path, description = "The order"),
        ("product_id" = String, Path, pattern = "^[A-Za-z0-9._:@-]{1,128}$", min_length = 1, max_length = 128, description = "The product whose line goes"),
        openapi::CommandHeaders,
    ),
    responses(
        (status = 200, description = "Removed", body = CommandOutcome),
        (status = 400, description = "`bad_request`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such order", body = ErrorBody),
        (status = 409, description = "`wrong_expected_version`", body = ErrorBody),
        (status = 422, description = "`rule_violation`", body = ErrorBody),
    )
)]
pub async fn remove_item(
    State(state): State<AppState>,
    Path((id, product_id)): Path<(String, String)>,
    headers: CommandHeaders,
) -> Result<Response, ApiError> {
    check_id(&id)?;
    check_id(&product_id)?;
    command::run::<Order>(
        &state,
        "remove_item",
        &id,
        OrderCommand::RemoveItem { product_id },
        headers,
    )
    .await
}

/// Confirms a pending order with at least one item (`OrderConfirmed`); fulfillment then
/// reserves its stock. No body is needed.
#[utoipa::path(
    post,
    path = "/orders/{aggregate_id}/confirm",
    tag = "commands",
    params(("aggregate_id" = String, Path, description = "The order"), openapi::CommandHeaders),
    responses(
        (status = 200, description = "Confirmed", body = CommandOutcome),
        (status = 400, description = "`bad_request`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such order", body = ErrorBody),
        (status = 409, description = "`wrong_expected_version`", body = ErrorBody),
        (status = 422, description = "`rule_violation`", body = ErrorBody),
    )
)]
pub async fn confirm(
    State(state): State<AppState>,
    AggregateIdPath(id): AggregateIdPath,
    headers: CommandHeaders,
) -> Result<Response, ApiError> {
    command::run::<Order>(&state, "confirm_order", &id, OrderCommand::Confirm, headers).await
}

/// `POST /orders/{id}/ship` body.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct Ship {
    /// Carrier's tracking number.
    tracking_number: String,
    /// Carrier.
    carrier: String,
}

/// Ships an order that is ready to ship (`OrderShipped`).
#[utoipa::path(
    post,
    path = "/orders/{aggregate_id}/ship",
    tag = "commands",
    params(("aggregate_id" = String, Path, description = "The order"), openapi::CommandHeaders),
    request_body = Ship,
    responses(
        (status = 200, description = "Shipped", body = CommandOutcome),
        (status = 400, description = "`bad_request`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such order", body = ErrorBody),
        (status = 409, description = "`wrong_expected_version`", body = ErrorBody),
        (status = 422, description = "`rule_violation`", body = ErrorBody),
    )
)]
pub async fn ship(
    State(state): State<AppState>,
    AggregateIdPath(id): AggregateIdPath,
    headers: CommandHeaders,
    JsonBody(body): JsonBody<Ship>,
) -> Result<Response, ApiError> {
    let command =
        OrderCommand::Ship { tracking_number: body.tracking_number, carrier: body.carrier };
    command::run::<Order>(&state, "ship_order", &id, command, headers).await
}

/// `POST /orders/{id}/cancel` body.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct Cancel {
    /// Why.
    reason: String,
}

/// Cancels an order that has not shipped (`OrderCancelled`).
#[utoipa::path(
    post,
    path = "/orders/{aggregate_id}/cancel",
    tag = "commands",
    params(("aggregate_id" = String, Path, description = "The order"), openapi::CommandHeaders),
    request_body = Cancel,
    responses(
        (status = 200, description = "Cancelled", body = CommandOutcome),
        (status = 400, description = "`bad_request`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such order", body = ErrorBody),
        (status = 409, description = "`wrong_expected_version`", body = ErrorBody),
        (status = 422, description = "`rule_violation`", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<AppState>,
    AggregateIdPath(id): AggregateIdPath,
    headers: CommandHeaders,
    JsonBody(body): JsonBody<Cancel>,
) -> Result<Response, ApiError> {
    command::run::<Order>(
        &state,
        "cancel_order",
        &id,
        OrderCommand::Cancel { reason: body.reason },
        headers,
    )
    .await
}

/// `POST /orders/{id}/correct-total` body.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct CorrectTotal {
    /// The right total.
    #[schema(value_type = PriceSchema)]
    corrected_total: Money,
    /// Why.
    reason: String,
}

/// Corrects an order's total (`OrderTotalCorrected`): a new fact, never an edit.
#[utoipa::path(
    post,
    path = "/orders/{aggregate_id}/correct-total",
    tag = "commands",
    params(("aggregate_id" = String, Path, description = "The order"), openapi::CommandHeaders),
    request_body = CorrectTotal,
    responses(
        (status = 200, description = "Corrected", body = CommandOutcome),
        (status = 400, description = "`bad_request`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such order", body = ErrorBody),
        (status = 409, description = "`wrong_expected_version`", body = ErrorBody),
        (status = 422, description = "`rule_violation`", body = ErrorBody),
    )
)]
pub async fn correct_total(
    State(state): State<AppState>,
    AggregateIdPath(id): AggregateIdPath,
    headers: CommandHeaders,
    JsonBody(body): JsonBody<CorrectTotal>,
) -> Result<Response, ApiError> {
    let command =
        OrderCommand::CorrectTotal { corrected_total: body.corrected_total, reason: body.reason };
    command::run::<Order>(&state, "correct_total", &id, command, headers).await
}
