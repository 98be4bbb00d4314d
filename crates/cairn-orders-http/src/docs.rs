//! OpenAPI descriptions of the Order context's JSON: read-model documents stored as text
//! and amounts written by `cairn_orders::Money`. They are never constructed; their doc
//! comments are the document's descriptions.

use std::borrow::Cow;

use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

/// An exact decimal amount: a JSON number written with exactly its digits (`59.98`), or,
/// in requests, a string holding one (`"59.98"`).
pub struct Money;

impl PartialSchema for Money {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^-?[0-9]+(\.[0-9]+)?$")),
            )
            .description(Some(
                "An exact decimal: a JSON number with exactly its digits, or a string holding one",
            ))
            .into()
    }
}

impl ToSchema for Money {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Money")
    }
}

/// A price or a corrected total in a request: at least 0, at most 10^12, with at most two
/// decimals (contract §3; a number outside these is `422 rule_violation`), as a JSON number
/// or a string holding one.
pub struct Price;

impl PartialSchema for Price {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .minimum(Some(0))
                    .maximum(Some(1_000_000_000_000_u64))
                    .multiple_of(Some(0.01)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^[0-9]{1,13}(\.[0-9]{1,2})?$")),
            )
            .description(Some(
                "An exact decimal from 0 to 10^12 with at most 2 decimals: a JSON number, or a string holding one",
            ))
            .into()
    }
}

impl ToSchema for Price {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Price")
    }
}

/// `order_summary`: one order as the read model holds it.
#[derive(ToSchema)]
pub struct OrderSummary {
    /// The order.
    pub order_id: String,
    /// Who ordered.
    pub customer_id: String,
    /// `pending`, `confirmed`, `ready_to_ship`, `shipped` or `cancelled`.
    pub status: String,
    /// Number of order lines.
    pub item_count: u64,
    /// Sum of the lines plus corrections.
    pub total: Money,
    /// Set once shipped.
    pub tracking_number: Option<String>,
    /// Set once shipped.
    pub carrier: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, once confirmed.
    pub confirmed_at: Option<String>,
    /// RFC 3339, once shipped.
    pub shipped_at: Option<String>,
    /// RFC 3339.
    pub updated_at: String,
    /// The order's version this document reflects.
    pub version: u64,
}

/// A page of `GET /orders`.
#[derive(ToSchema)]
pub struct OrderList {
    /// The orders, in id order.
    pub items: Vec<OrderSummary>,
    /// Cursor for `after=`; `null` on the last page.
    pub next: Option<String>,
}

/// `shipped_orders_view`: a shipped order, denormalised with its customer.
#[derive(ToSchema)]
pub struct ShippedOrder {
    /// The order.
    pub order_id: String,
    /// Who ordered.
    pub customer_id: String,
    /// The customer's name.
    pub customer_name: Option<String>,
    /// The customer's current e-mail address (follows changes).
    pub customer_email: Option<String>,
    /// Number of order lines.
    pub item_count: u64,
    /// The total at shipping.
    pub total: Money,
    /// Carrier's tracking number.
    pub tracking_number: String,
    /// Carrier.
    pub carrier: String,
    /// RFC 3339.
    pub shipped_at: String,
}

/// `inventory_view`: one product's stock.
#[derive(ToSchema)]
pub struct InventoryView {
    /// The product.
    pub product_id: String,
    /// Units in the warehouse (reserved ones included).
    pub on_hand: i64,
    /// Units promised to orders.
    pub reserved: i64,
    /// `on_hand - reserved`.
    pub available: i64,
    /// The inventory aggregate's version this document reflects.
    pub version: u64,
}

/// `customer_view`: one customer and their orders' totals.
#[derive(ToSchema)]
pub struct CustomerView {
    /// The customer.
    pub customer_id: String,
    /// Name.
    pub name: Option<String>,
    /// E-mail address.
    pub email: Option<String>,
    /// Orders placed.
    pub order_count: u64,
    /// Sum of the totals of their orders.
    pub lifetime_total: Money,
}

/// An order line.
#[derive(ToSchema)]
pub struct OrderLine {
    /// The product (an Inventory aggregate id).
    pub product_id: String,
    /// How many.
    pub quantity: i64,
    /// Unit price.
    pub price: Money,
}
