//! The Order aggregate: lines, status life-cycle, totals and corrections.

use cairn_cqrs::{Aggregate, DomainError, Existence};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::money::Money;
use crate::rules::{check_id, check_price, check_quantity, check_text};

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Not created yet.
    #[default]
    New,
    /// Created; items may change.
    Pending,
    /// Confirmed by the customer; fulfillment reserves stock.
    Confirmed,
    /// Every item reserved.
    ReadyToShip,
    /// Handed to the carrier.
    Shipped,
    /// Cancelled.
    Cancelled,
}

impl OrderStatus {
    /// The contract's name for it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Pending => "pending",
            Self::Confirmed => "confirmed",
            Self::ReadyToShip => "ready_to_ship",
            Self::Shipped => "shipped",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One order line: one per product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = OrderLine))]
pub struct Line {
    /// The product (an Inventory aggregate id).
    pub product_id: String,
    /// How many.
    pub quantity: i64,
    /// Unit price.
    pub price: Money,
}

/// `OrderCreated`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCreated {
    /// Who ordered.
    pub customer_id: String,
    /// Initial lines (one per product).
    pub items: Vec<Line>,
    /// Sum of the lines.
    pub total: Money,
}

/// `ItemAdded`: adds a line, or adds to an existing line's quantity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemAdded {
    /// The product.
    pub product_id: String,
    /// How many more.
    pub quantity: i64,
    /// Unit price (equal to the line's when the line exists).
    pub price: Money,
}

/// `ItemRemoved`: the whole line goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRemoved {
    /// The product.
    pub product_id: String,
    /// The line's quantity when removed.
    pub quantity: i64,
    /// Its unit price.
    pub price: Money,
}

/// `OrderConfirmed`, with what fulfillment needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderConfirmed {
    /// The lines at confirmation.
    pub items: Vec<Line>,
    /// The total at confirmation.
    pub total: Money,
}

/// `OrderReadyToShip`: every item is reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct OrderReadyToShip {}

/// `OrderShipped`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderShipped {
    /// Carrier's tracking number.
    pub tracking_number: String,
    /// Carrier.
    pub carrier: String,
    /// The lines shipped.
    pub items: Vec<Line>,
    /// The total at shipping.
    pub total: Money,
}

/// `OrderCancelled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    /// Why (`out_of_stock` when fulfillment could not reserve).
    pub reason: String,
    /// The status it was cancelled from.
    pub previous_status: OrderStatus,
}

/// `OrderTotalCorrected`: a correction, never an edit of the past.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderTotalCorrected {
    /// The total before.
    pub previous_total: Money,
    /// The total after.
    pub corrected_total: Money,
    /// Why.
    pub reason: String,
}

/// Every event of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderEvent {
    /// See [`OrderCreated`].
    OrderCreated(OrderCreated),
    /// See [`ItemAdded`].
    ItemAdded(ItemAdded),
    /// See [`ItemRemoved`].
    ItemRemoved(ItemRemoved),
    /// See [`OrderConfirmed`].
    OrderConfirmed(OrderConfirmed),
    /// See [`OrderReadyToShip`].
    OrderReadyToShip(OrderReadyToShip),
    /// See [`OrderShipped`].
    OrderShipped(OrderShipped),
    /// See [`OrderCancelled`].
    OrderCancelled(OrderCancelled),
    /// See [`OrderTotalCorrected`].
    OrderTotalCorrected(OrderTotalCorrected),
}

cairn_cqrs::domain_events!(OrderEvent {
    OrderCreated,
    ItemAdded,
    ItemRemoved,
    OrderConfirmed,
    OrderReadyToShip,
    OrderShipped,
    OrderCancelled,
    OrderTotalCorrected,
} upcast: history);

/// The schema history of the order's events, and the upcasters between versions.
pub mod history {
    use cairn_cqrs::DecodeError;
    use serde_json::Value;

    use crate::money::Money;

    /// Current schema version per event type. `OrderCreated` v2 added `total`; v1 events
    /// (prices written as strings, no total) are upcast on every read path.
    #[must_use]
    pub fn schema_version(event_type: &str) -> u32 {
        if event_type == "OrderCreated" { 2 } else { 1 }
    }

    /// Upcasts one version step.
    pub fn upcast(event_type: &str, version: u32, mut data: Value) -> Result<Value, DecodeError> {
        let invalid =
            |message: String| DecodeError::Invalid { event_type: event_type.to_owned(), message };
        match (event_type, version) {
            ("OrderCreated", 1) => {
                let mut total = Money::ZERO;
                for item in data.get("items").and_then(Value::as_array).into_iter().flatten() {
                    let price: Money = match item.get("price") {
                        Some(Value::String(s)) => s.parse().map_err(invalid)?,
                        Some(Value::Number(n)) => n.to_string().parse().map_err(invalid)?,
                        _ => return Err(invalid("an item has no price".into())),
                    };
                    let quantity = item
                        .get("quantity")
                        .and_then(Value::as_i64)
                        .ok_or_else(|| invalid("an item has no quantity".into()))?;
                    total = price
                        .checked_times(quantity)
                        .and_then(|line| total.checked_add(line))
                        .ok_or_else(|| invalid("the total cannot be represented".into()))?;
                }
                // As a string: exact, and `Money` reads strings as well as numbers.
                if let Some(obj) = data.as_object_mut() {
                    obj.insert("total".into(), Value::String(total.to_string()));
                }
                Ok(data)
            }
            _ => Err(invalid(format!("no upcaster from schema version {version}"))),
        }
    }
}

/// What can be asked of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    /// Create it.
    Create {
        /// Who orders.
        customer_id: String,
        /// Initial items (may be empty; repeated products are merged).
        items: Vec<Line>,
    },
    /// Add an item (or more of one).
    AddItem(Line),
    /// Remove a product's line.
    RemoveItem {
        /// The product.
        product_id: String,
    },
    /// Confirm.
    Confirm,
    /// Mark every item reserved (issued by fulfillment).
    MarkReadyToShip,
    /// Ship.
    Ship {
        /// Tracking number.
        tracking_number: String,
        /// Carrier.
        carrier: String,
    },
    /// Cancel.
    Cancel {
        /// Why.
        reason: String,
    },
    /// Correct the total.
    CorrectTotal {
        /// The right total.
        corrected_total: Money,
        /// Why.
        reason: String,
    },
}

/// The state of an order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Life-cycle status.
    pub status: OrderStatus,
    /// Who ordered.
    pub customer_id: String,
    /// One line per product, in the order they were added.
    pub items: Vec<Line>,
    /// Sum of corrections (corrected minus previous totals).
    pub corrections: Money,
}

impl Order {
    /// Sum of the lines plus corrections.
    #[must_use]
    pub fn total(&self) -> Money {
        self.items.iter().map(|l| l.price.times(l.quantity)).sum::<Money>() + self.corrections
    }

    /// The total, or `None` when it cannot be represented (only reachable with amounts the
    /// rules refuse, e.g. appended through the store API before the schemas bounded them).
    #[must_use]
    pub fn checked_total(&self) -> Option<Money> {
        self.items
            .iter()
            .try_fold(Money::ZERO, |sum, l| sum.checked_add(l.price.checked_times(l.quantity)?))?
            .checked_add(self.corrections)
    }

    /// Folds `events` in order, exactly as [`Aggregate::apply`] one by one would, in time
    /// linear in the lines and the events: `apply` finds a line by scanning the lines, so
    /// folding a long run of `ItemAdded` into an order of n lines one by one costs O(n)
    /// per event; here each run of additions shares one index of the lines.
    pub fn fold_all<'a>(&mut self, events: impl IntoIterator<Item = &'a OrderEvent>) {
        // Product -> its first line (the one `apply` would find); built when first needed.
        let mut index: Option<std::collections::HashMap<String, usize>> = None;
        for event in events {
            let OrderEvent::ItemAdded(e) = event else {
                self.apply(event);
                // Creating and removing replace or shift the lines: index them afresh.
                if matches!(event, OrderEvent::OrderCreated(_) | OrderEvent::ItemRemoved(_)) {
                    index = None;
                }
                continue;
            };
            let index = index.get_or_insert_with(|| {
                let mut index = std::collections::HashMap::with_capacity(self.items.len());
                for (i, l) in self.items.iter().enumerate() {
                    index.entry(l.product_id.clone()).or_insert(i);
                }
                index
            });
            if let Some(&i) = index.get(&e.product_id) {
                self.items[i].quantity += e.quantity;
            } else {
                index.insert(e.product_id.clone(), self.items.len());
                self.items.push(Line {
                    product_id: e.product_id.clone(),
                    quantity: e.quantity,
                    price: e.price,
                });
            }
        }
    }

    fn line(&self, product_id: &str) -> Option<&Line> {
        self.items.iter().find(|l| l.product_id == product_id)
    }

    fn require_existence(&self, command: &OrderCommand) -> Result<(), DomainError> {
        match (command, self.status) {
            (OrderCommand::Create { .. }, OrderStatus::New) => Ok(()),
            (OrderCommand::Create { .. }, _) => Err(DomainError::rule("the order already exists")),
            (_, OrderStatus::New) => Err(DomainError::rule("the order does not exist")),
            _ => Ok(()),
        }
    }

    fn remove_item(&self, product_id: &str) -> Result<OrderEvent, DomainError> {
        self.require(&[OrderStatus::Pending], "changing items")?;
        let line = self.line(product_id).ok_or_else(|| {
            DomainError::rule(format!("product {product_id} is not on the order"))
        })?;
        // A correction is a fixed amount on top of the lines: removing a line after
        // one must not push the total below zero.
        if self.total() < line.price.times(line.quantity) {
            return Err(DomainError::rule(format!(
                "removing {product_id} would make the corrected total negative"
            )));
        }
        Ok(OrderEvent::ItemRemoved(ItemRemoved {
            product_id: line.product_id.clone(),
            quantity: line.quantity,
            price: line.price,
        }))
    }

    fn require(&self, allowed: &[OrderStatus], what: &str) -> Result<(), DomainError> {
        if allowed.contains(&self.status) {
            Ok(())
        } else {
            Err(DomainError::rule(format!(
                "{what} is not allowed while the order is {}",
                self.status.as_str()
            )))
        }
    }
}

fn check_line(line: &Line) -> Result<(), DomainError> {
    check_id("product_id", &line.product_id)?;
    check_quantity(line.quantity)?;
    check_price("price", line.price)
}

/// Merges repeated products into one line each (prices must agree).
fn merge_lines(items: &[Line]) -> Result<Vec<Line>, DomainError> {
    let mut merged: Vec<Line> = Vec::with_capacity(items.len());
    for item in items {
        check_line(item)?;
        match merged.iter_mut().find(|l| l.product_id == item.product_id) {
            Some(l) if l.price != item.price => {
                return Err(DomainError::rule(format!(
                    "product {} appears with two prices ({} and {})",
                    item.product_id, l.price, item.price
                )));
            }
            Some(l) => {
                l.quantity += item.quantity;
                check_quantity(l.quantity)?;
            }
            None => merged.push(item.clone()),
        }
    }
    Ok(merged)
}

impl Aggregate for Order {
    const TYPE: &'static str = "Order";
    type Event = OrderEvent;
    type Command = OrderCommand;

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderCreated(e) => {
                self.status = OrderStatus::Pending;
                self.customer_id.clone_from(&e.customer_id);
                self.items.clone_from(&e.items);
            }
            OrderEvent::ItemAdded(e) => {
                match self.items.iter_mut().find(|l| l.product_id == e.product_id) {
                    Some(l) => l.quantity += e.quantity,
                    None => self.items.push(Line {
                        product_id: e.product_id.clone(),
                        quantity: e.quantity,
                        price: e.price,
                    }),
                }
            }
            OrderEvent::ItemRemoved(e) => self.items.retain(|l| l.product_id != e.product_id),
            OrderEvent::OrderConfirmed(_) => self.status = OrderStatus::Confirmed,
            OrderEvent::OrderReadyToShip(_) => self.status = OrderStatus::ReadyToShip,
            OrderEvent::OrderShipped(_) => self.status = OrderStatus::Shipped,
            OrderEvent::OrderCancelled(_) => self.status = OrderStatus::Cancelled,
            OrderEvent::OrderTotalCorrected(e) => {
                self.corrections = self.corrections + (e.corrected_total - e.previous_total);
            }
        }
    }

    fn apply_all(&mut self, events: &[OrderEvent]) {
        self.fold_all(events);
    }

    fn handle(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, DomainError> {
        use OrderStatus::{Cancelled, Confirmed, Pending, ReadyToShip, Shipped};
        // The repository already answers 409/404 for these; the aggregate does not rely on it.
        self.require_existence(command)?;
        let event = match command {
            OrderCommand::Create { customer_id, items } => {
                check_id("customer_id", customer_id)?;
                let items = merge_lines(items)?;
                let total = items.iter().map(|l| l.price.times(l.quantity)).sum();
                OrderEvent::OrderCreated(OrderCreated {
                    customer_id: customer_id.clone(),
                    items,
                    total,
                })
            }
            OrderCommand::AddItem(line) => {
                self.require(&[Pending], "changing items")?;
                check_line(line)?;
                if let Some(existing) = self.line(&line.product_id) {
                    if existing.price != line.price {
                        return Err(DomainError::rule(format!(
                            "product {} is on the order at price {}; it cannot be added at {}",
                            line.product_id, existing.price, line.price
                        )));
                    }
                    check_quantity(existing.quantity + line.quantity)?;
                }
                OrderEvent::ItemAdded(ItemAdded {
                    product_id: line.product_id.clone(),
                    quantity: line.quantity,
                    price: line.price,
                })
            }
            OrderCommand::RemoveItem { product_id } => self.remove_item(product_id)?,
            OrderCommand::Confirm => {
                self.require(&[Pending], "confirming")?;
                if self.items.is_empty() {
                    return Err(DomainError::rule(
                        "an order needs at least one item to be confirmed",
                    ));
                }
                OrderEvent::OrderConfirmed(OrderConfirmed {
                    items: self.items.clone(),
                    total: self.total(),
                })
            }
            OrderCommand::MarkReadyToShip => {
                self.require(&[Confirmed], "marking ready to ship")?;
                OrderEvent::OrderReadyToShip(OrderReadyToShip {})
            }
            OrderCommand::Ship { tracking_number, carrier } => {
                self.require(&[ReadyToShip], "shipping")?;
                check_text("tracking_number", tracking_number)?;
                check_text("carrier", carrier)?;
                OrderEvent::OrderShipped(OrderShipped {
                    tracking_number: tracking_number.clone(),
                    carrier: carrier.clone(),
                    items: self.items.clone(),
                    total: self.total(),
                })
            }
            OrderCommand::Cancel { reason } => {
                if self.status == Shipped {
                    return Err(DomainError::rule("a shipped order cannot be cancelled"));
                }
                if self.status == Cancelled {
                    return Err(DomainError::rule("the order is already cancelled"));
                }
                check_text("reason", reason)?;
                OrderEvent::OrderCancelled(OrderCancelled {
                    reason: reason.clone(),
                    previous_status: self.status,
                })
            }
            OrderCommand::CorrectTotal { corrected_total, reason } => {
                if self.status == Cancelled {
                    return Err(DomainError::rule("a cancelled order's total cannot be corrected"));
                }
                check_price("corrected_total", *corrected_total)?;
                check_text("reason", reason)?;
                OrderEvent::OrderTotalCorrected(OrderTotalCorrected {
                    previous_total: self.total(),
                    corrected_total: *corrected_total,
                    reason: reason.clone(),
                })
            }
        };
        Ok(vec![event])
    }

    cairn_cqrs::serde_snapshots!();

    /// The fields of `GET /orders/{id}/state` that come from the order itself, derived
    /// ones included (`total`, `item_count`): people read totals, not the snapshot's
    /// `corrections`-only shape. `total` is `null` when it cannot be represented.
    fn state_json(&self) -> Option<Box<RawValue>> {
        #[derive(Serialize)]
        struct OrderView<'a> {
            status: &'static str,
            customer_id: &'a str,
            items: &'a [Line],
            item_count: usize,
            total: Option<Money>,
            corrections: Money,
        }
        serde_json::value::to_raw_value(&OrderView {
            status: self.status.as_str(),
            customer_id: &self.customer_id,
            items: &self.items,
            item_count: self.items.len(),
            total: self.checked_total(),
            corrections: self.corrections,
        })
        .ok()
    }

    fn existence(command: &OrderCommand) -> Existence {
        match command {
            OrderCommand::Create { .. } => Existence::MustNotExist,
            _ => Existence::MustExist,
        }
    }
}
