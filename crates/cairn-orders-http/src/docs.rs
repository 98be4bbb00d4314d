//! OpenAPI descriptions of the Order context's JSON that no Rust type writes: the bounds of
//! a price in a request, and the page of `GET /orders` (assembled from documents stored as
//! text). They are never constructed; their doc comments are the document's descriptions.
//! The read-model rows and `Money` derive `ToSchema` in `cairn-orders` (feature `openapi`).

use std::borrow::Cow;

use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

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

/// A page of `GET /orders`.
#[derive(ToSchema)]
pub struct OrderList {
    /// The orders, in id order.
    pub items: Vec<cairn_orders::projections::order_summary::OrderSummary>,
    /// Cursor for `after=`; `null` on the last page.
    pub next: Option<String>,
}
