//! The seed's Order aggregate on cqrs-es: the same commands and rules as Cairn's
//! `cairn-orders` order module, and an `order_summary` view of the same shape.
//!
//! Money is whole cents (`i64`) here where Cairn uses an exact decimal: both are exact,
//! and the benchmark's amounts never come near either's limits.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent, EventEnvelope, View};
use serde::{Deserialize, Serialize};

/// Longest free-text field (as Cairn's `TEXT_MAX_LEN`).
const TEXT_MAX_LEN: usize = 500;
/// Longest id (as Cairn's aggregate id rule).
const ID_MAX_LEN: usize = 128;
/// Largest quantity of one line (as Cairn's `QUANTITY_MAX`).
const QUANTITY_MAX: i64 = 1_000_000_000;
/// Largest price, in cents (Cairn's `PRICE_MAX` is 10^12 units).
const PRICE_MAX_CENTS: i64 = 100_000_000_000_000;

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Not created yet.
    #[default]
    New,
    /// Created; items may change.
    Pending,
    /// Confirmed.
    Confirmed,
    /// Every item reserved (Cairn's fulfillment process manager issues it).
    ReadyToShip,
    /// Handed to the carrier.
    Shipped,
    /// Cancelled.
    Cancelled,
}

impl OrderStatus {
    fn as_str(self) -> &'static str {
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
pub struct Line {
    /// The product.
    pub product_id: String,
    /// How many.
    pub quantity: i64,
    /// Unit price in cents.
    pub price: i64,
}

/// Every event of an order (the same names and payloads as Cairn's, money in cents).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderEvent {
    /// Created with its initial lines.
    OrderCreated {
        /// Who ordered.
        customer_id: String,
        /// Initial lines.
        items: Vec<Line>,
        /// Sum of the lines.
        total: i64,
    },
    /// A line added, or more of an existing one.
    ItemAdded {
        /// The product.
        product_id: String,
        /// How many more.
        quantity: i64,
        /// Unit price.
        price: i64,
    },
    /// A product's line removed.
    ItemRemoved {
        /// The product.
        product_id: String,
        /// The line's quantity when removed.
        quantity: i64,
        /// Its unit price.
        price: i64,
    },
    /// Confirmed, with what fulfillment needs.
    OrderConfirmed {
        /// The lines at confirmation.
        items: Vec<Line>,
        /// The total at confirmation.
        total: i64,
    },
    /// Every item reserved.
    OrderReadyToShip,
    /// Shipped.
    OrderShipped {
        /// Carrier's tracking number.
        tracking_number: String,
        /// Carrier.
        carrier: String,
        /// The lines shipped.
        items: Vec<Line>,
        /// The total at shipping.
        total: i64,
    },
    /// Cancelled.
    OrderCancelled {
        /// Why.
        reason: String,
        /// The status it was cancelled from.
        previous_status: OrderStatus,
    },
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> String {
        match self {
            Self::OrderCreated { .. } => "OrderCreated",
            Self::ItemAdded { .. } => "ItemAdded",
            Self::ItemRemoved { .. } => "ItemRemoved",
            Self::OrderConfirmed { .. } => "OrderConfirmed",
            Self::OrderReadyToShip => "OrderReadyToShip",
            Self::OrderShipped { .. } => "OrderShipped",
            Self::OrderCancelled { .. } => "OrderCancelled",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// What can be asked of an order.
// The workloads send create, add item and confirm; the others keep the aggregate's rules
// those of Cairn's order.
#[allow(dead_code)]
#[derive(Debug, Clone)]
pub enum OrderCommand {
    /// Create it (items may be empty; repeated products are merged).
    Create {
        /// Who orders.
        customer_id: String,
        /// Initial items.
        items: Vec<Line>,
    },
    /// Add an item (or more of one).
    AddItem(Line),
    /// Remove a product's line.
    RemoveItem {
        /// The product.
        product_id: String,
    },
    /// Confirm (needs at least one item).
    Confirm,
    /// Mark every item reserved.
    MarkReadyToShip,
    /// Ship (needs ready to ship).
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
}

/// A broken rule (Cairn's `422 rule_violation`).
#[derive(Debug)]
pub struct RuleViolation(pub String);

impl std::fmt::Display for RuleViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RuleViolation {}

fn rule(message: impl Into<String>) -> RuleViolation {
    RuleViolation(message.into())
}

fn check_id(field: &str, id: &str) -> Result<(), RuleViolation> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._:@-".contains(c);
    if (1..=ID_MAX_LEN).contains(&id.len()) && id.chars().all(allowed) {
        Ok(())
    } else {
        Err(rule(format!("{field} must match [A-Za-z0-9._:@-]{{1,{ID_MAX_LEN}}}")))
    }
}

fn check_quantity(quantity: i64) -> Result<(), RuleViolation> {
    if (1..=QUANTITY_MAX).contains(&quantity) {
        Ok(())
    } else {
        Err(rule(format!("quantity must be between 1 and {QUANTITY_MAX}, got {quantity}")))
    }
}

fn check_price(price: i64) -> Result<(), RuleViolation> {
    if (0..=PRICE_MAX_CENTS).contains(&price) {
        Ok(())
    } else {
        Err(rule(format!("price must be between 0 and {PRICE_MAX_CENTS} cents, got {price}")))
    }
}

fn check_text(field: &str, text: &str) -> Result<(), RuleViolation> {
    if text.trim().is_empty() || text.len() > TEXT_MAX_LEN {
        Err(rule(format!("{field} must be 1 to {TEXT_MAX_LEN} characters")))
    } else if text.chars().any(char::is_control) {
        Err(rule(format!("{field} must not contain control characters")))
    } else {
        Ok(())
    }
}

fn check_line(line: &Line) -> Result<(), RuleViolation> {
    check_id("product_id", &line.product_id)?;
    check_quantity(line.quantity)?;
    check_price(line.price)
}

/// Merges repeated products into one line each (prices must agree).
fn merge_lines(items: &[Line]) -> Result<Vec<Line>, RuleViolation> {
    let mut merged: Vec<Line> = Vec::with_capacity(items.len());
    for item in items {
        check_line(item)?;
        match merged.iter_mut().find(|l| l.product_id == item.product_id) {
            Some(l) if l.price != item.price => {
                return Err(rule(format!(
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

fn total(items: &[Line]) -> i64 {
    items.iter().map(|l| l.price.saturating_mul(l.quantity)).fold(0, i64::saturating_add)
}

/// Folds a line change into `items` (shared by the aggregate and the view).
fn apply_lines(items: &mut Vec<Line>, event: &OrderEvent) {
    match event {
        OrderEvent::OrderCreated { items: initial, .. } => items.clone_from(initial),
        OrderEvent::ItemAdded { product_id, quantity, price } => {
            match items.iter_mut().find(|l| l.product_id == *product_id) {
                Some(l) => l.quantity += quantity,
                None => items.push(Line {
                    product_id: product_id.clone(),
                    quantity: *quantity,
                    price: *price,
                }),
            }
        }
        OrderEvent::ItemRemoved { product_id, .. } => items.retain(|l| l.product_id != *product_id),
        _ => {}
    }
}

/// The state of an order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Order {
    status: OrderStatus,
    customer_id: String,
    items: Vec<Line>,
}

impl Order {
    fn require(&self, allowed: &[OrderStatus], what: &str) -> Result<(), RuleViolation> {
        if allowed.contains(&self.status) {
            Ok(())
        } else {
            Err(rule(format!("{what} is not allowed while the order is {}", self.status.as_str())))
        }
    }

    fn line(&self, product_id: &str) -> Option<&Line> {
        self.items.iter().find(|l| l.product_id == product_id)
    }

    fn decide(&self, command: OrderCommand) -> Result<OrderEvent, RuleViolation> {
        use OrderStatus::{Cancelled, Confirmed, New, Pending, ReadyToShip, Shipped};
        match (&command, self.status) {
            (OrderCommand::Create { .. }, New) => {}
            (OrderCommand::Create { .. }, _) => return Err(rule("the order already exists")),
            (_, New) => return Err(rule("the order does not exist")),
            _ => {}
        }
        Ok(match command {
            OrderCommand::Create { customer_id, items } => {
                check_id("customer_id", &customer_id)?;
                let items = merge_lines(&items)?;
                let total = total(&items);
                OrderEvent::OrderCreated { customer_id, items, total }
            }
            OrderCommand::AddItem(line) => {
                self.require(&[Pending], "changing items")?;
                check_line(&line)?;
                if let Some(existing) = self.line(&line.product_id) {
                    if existing.price != line.price {
                        return Err(rule(format!(
                            "product {} is on the order at price {}; it cannot be added at {}",
                            line.product_id, existing.price, line.price
                        )));
                    }
                    check_quantity(existing.quantity + line.quantity)?;
                }
                OrderEvent::ItemAdded {
                    product_id: line.product_id,
                    quantity: line.quantity,
                    price: line.price,
                }
            }
            OrderCommand::RemoveItem { product_id } => {
                self.require(&[Pending], "changing items")?;
                let line = self
                    .line(&product_id)
                    .ok_or_else(|| rule(format!("product {product_id} is not on the order")))?;
                OrderEvent::ItemRemoved {
                    product_id: line.product_id.clone(),
                    quantity: line.quantity,
                    price: line.price,
                }
            }
            OrderCommand::Confirm => {
                self.require(&[Pending], "confirming")?;
                if self.items.is_empty() {
                    return Err(rule("an order needs at least one item to be confirmed"));
                }
                OrderEvent::OrderConfirmed { items: self.items.clone(), total: total(&self.items) }
            }
            OrderCommand::MarkReadyToShip => {
                self.require(&[Confirmed], "marking ready to ship")?;
                OrderEvent::OrderReadyToShip
            }
            OrderCommand::Ship { tracking_number, carrier } => {
                self.require(&[ReadyToShip], "shipping")?;
                check_text("tracking_number", &tracking_number)?;
                check_text("carrier", &carrier)?;
                OrderEvent::OrderShipped {
                    tracking_number,
                    carrier,
                    items: self.items.clone(),
                    total: total(&self.items),
                }
            }
            OrderCommand::Cancel { reason } => {
                if self.status == Shipped {
                    return Err(rule("a shipped order cannot be cancelled"));
                }
                if self.status == Cancelled {
                    return Err(rule("the order is already cancelled"));
                }
                check_text("reason", &reason)?;
                OrderEvent::OrderCancelled { reason, previous_status: self.status }
            }
        })
    }
}

impl Aggregate for Order {
    const TYPE: &'static str = "Order";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = RuleViolation;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = self.decide(command)?;
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        apply_lines(&mut self.items, &event);
        match event {
            OrderEvent::OrderCreated { customer_id, .. } => {
                self.status = OrderStatus::Pending;
                self.customer_id = customer_id;
            }
            OrderEvent::OrderConfirmed { .. } => self.status = OrderStatus::Confirmed,
            OrderEvent::OrderReadyToShip => self.status = OrderStatus::ReadyToShip,
            OrderEvent::OrderShipped { .. } => self.status = OrderStatus::Shipped,
            OrderEvent::OrderCancelled { .. } => self.status = OrderStatus::Cancelled,
            OrderEvent::ItemAdded { .. } | OrderEvent::ItemRemoved { .. } => {}
        }
    }
}

/// The `order_summary` view: one row per order, as Cairn's projection writes it. Like
/// Cairn's (which keeps `order_summary_state`), it keeps the lines to count them and
/// total them.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct OrderSummary {
    order_id: String,
    customer_id: String,
    status: String,
    item_count: usize,
    total: i64,
    tracking_number: Option<String>,
    carrier: Option<String>,
    version: usize,
    lines: Vec<Line>,
}

impl View<Order> for OrderSummary {
    fn update(&mut self, event: &EventEnvelope<Order>) {
        apply_lines(&mut self.lines, &event.payload);
        match &event.payload {
            OrderEvent::OrderCreated { customer_id, .. } => {
                self.order_id.clone_from(&event.aggregate_id);
                self.customer_id.clone_from(customer_id);
                self.status = OrderStatus::Pending.as_str().to_owned();
            }
            OrderEvent::OrderConfirmed { .. } => {
                self.status = OrderStatus::Confirmed.as_str().to_owned();
            }
            OrderEvent::OrderReadyToShip => {
                self.status = OrderStatus::ReadyToShip.as_str().to_owned();
            }
            OrderEvent::OrderShipped { tracking_number, carrier, .. } => {
                self.status = OrderStatus::Shipped.as_str().to_owned();
                self.tracking_number = Some(tracking_number.clone());
                self.carrier = Some(carrier.clone());
            }
            OrderEvent::OrderCancelled { .. } => {
                self.status = OrderStatus::Cancelled.as_str().to_owned();
            }
            OrderEvent::ItemAdded { .. } | OrderEvent::ItemRemoved { .. } => {}
        }
        self.item_count = self.lines.len();
        self.total = total(&self.lines);
        self.version = event.sequence;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(product: &str, quantity: i64, price: i64) -> Line {
        Line { product_id: product.to_owned(), quantity, price }
    }

    fn created() -> Order {
        let mut order = Order::default();
        let event = order
            .decide(OrderCommand::Create { customer_id: "c".into(), items: vec![] })
            .expect("create");
        order.apply(event);
        order
    }

    #[test]
    fn confirm_needs_items_and_ship_needs_ready() {
        let mut order = created();
        assert!(order.decide(OrderCommand::Confirm).is_err());
        let added = order.decide(OrderCommand::AddItem(line("p", 2, 2999))).expect("add");
        order.apply(added);
        let ship = || OrderCommand::Ship { tracking_number: "T".into(), carrier: "C".into() };
        assert!(order.decide(ship()).is_err());
        let confirmed = order.decide(OrderCommand::Confirm).expect("confirm");
        assert_eq!(
            confirmed,
            OrderEvent::OrderConfirmed { items: vec![line("p", 2, 2999)], total: 5998 }
        );
        order.apply(confirmed);
        assert!(order.decide(ship()).is_err());
        assert!(order.decide(OrderCommand::AddItem(line("q", 1, 1))).is_err());
        let ready = order.decide(OrderCommand::MarkReadyToShip).expect("ready");
        order.apply(ready);
        assert!(order.decide(ship()).is_ok());
    }

    #[test]
    fn rules_match_cairn() {
        let order = created();
        assert!(order.decide(OrderCommand::AddItem(line("p", 0, 1))).is_err());
        assert!(order.decide(OrderCommand::AddItem(line("bad id", 1, 1))).is_err());
        assert!(order.decide(OrderCommand::AddItem(line("p", 1, -1))).is_err());
        assert!(
            order.decide(OrderCommand::Create { customer_id: "c".into(), items: vec![] }).is_err()
        );
        let merged = merge_lines(&[line("p", 1, 5), line("p", 2, 5)]).expect("merge");
        assert_eq!(merged, vec![line("p", 3, 5)]);
        assert!(merge_lines(&[line("p", 1, 5), line("p", 2, 6)]).is_err());
        assert!(Order::default().decide(OrderCommand::Confirm).is_err());
    }
}
