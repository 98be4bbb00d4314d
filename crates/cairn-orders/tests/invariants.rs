//! Property tests of the domain invariants of `Order`, `Inventory` and `Customer`.
//!
//! Random command sequences drive each aggregate the way the repository does: the
//! existence rule is checked first, then `handle` decides on the current state and every
//! event it returns is applied (a refused command changes nothing). After every step the
//! tests check totals, lines, status transitions, stock counts and e-mail addresses
//! against values computed independently from the events.

use cairn_cqrs::aggregate::DomainEvent;
use cairn_cqrs::{Aggregate, Existence};
use cairn_orders::customer::{CustomerCommand, CustomerEvent};
use cairn_orders::inventory::{InventoryCommand, InventoryEvent};
use cairn_orders::order::{Line, OrderCommand, OrderEvent, OrderStatus};
use cairn_orders::{Customer, Inventory, Money, Order};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::Config as ProptestConfig;

// ---------------------------------------------------------------------------------------
// Driving an aggregate like the repository does
// ---------------------------------------------------------------------------------------

/// Decides `command` on `state` (at `version` events) like `Repository::execute`:
/// `None` when the command is refused (existence rule or `handle` error), else its events.
///
/// `handle` is called even when the existence rule refuses, to check it never panics.
fn decide<A>(state: &A, version: u64, command: &A::Command) -> Option<Vec<A::Event>>
where
    A: Aggregate + Clone + PartialEq + std::fmt::Debug,
    A::Event: PartialEq,
{
    let before = state.clone();
    let result = state.handle(command);
    assert_eq!(*state, before, "handle changed the state");
    let allowed = !matches!(
        (A::existence(command), version),
        (Existence::MustExist, 0) | (Existence::MustNotExist, 1..)
    );
    let events = result.ok().filter(|_| allowed)?;
    for event in &events {
        // The repository stores events as JSON and applies what it decodes.
        let decoded = A::Event::from_json(event.event_type(), event.to_json().get())
            .expect("an event decodes from its own JSON");
        assert_eq!(&decoded, event, "event JSON round trip");
    }
    Some(events)
}

fn config() -> ProptestConfig {
    ProptestConfig { failure_persistence: None, cases: 256, ..ProptestConfig::default() }
}

fn money(text: &str) -> Money {
    text.parse().expect("a decimal literal")
}

fn lines_total(lines: &[Line]) -> Money {
    lines.iter().map(|l| l.price.times(l.quantity)).sum()
}

// ---------------------------------------------------------------------------------------
// Order
// ---------------------------------------------------------------------------------------

/// Valid prices (`10.500` is `10.5`: trailing zeros do not count as decimals).
const VALID_PRICES: &[&str] = &["29.99", "10.5", "10.500", "0", "0.01"];
/// Negative or with more than two decimals.
const INVALID_PRICES: &[&str] = &["1.005", "12.345", "-1", "-0.01"];
const CORRECTED_TOTALS: &[&str] =
    &["0", "59.98", "100", "15.5", "1e2", "0.001", "12.345", "-5", "-0.01"];

fn price() -> impl Strategy<Value = Money> {
    prop_oneof![4 => select(VALID_PRICES), 1 => select(INVALID_PRICES)].prop_map(money)
}

/// Quantities in `-2..5`, mostly valid ones.
fn quantity() -> impl Strategy<Value = i64> {
    prop_oneof![4 => 1i64..5, 1 => -2i64..1]
}

fn product_id() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => select(&["p1", "p2", "p3"][..]),
        1 => Just(""),
    ]
    .prop_map(String::from)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => select(&["late", "TRK-1", "ups", "customer asked"][..]),
        1 => select(&["", "   "][..]),
    ]
    .prop_map(String::from)
}

fn line() -> impl Strategy<Value = Line> {
    (product_id(), quantity(), price()).prop_map(|(product_id, quantity, price)| Line {
        product_id,
        quantity,
        price,
    })
}

/// A line every rule accepts on its own (repeated products may still disagree on price).
fn valid_line() -> impl Strategy<Value = Line> {
    (select(&["p1", "p2", "p3"][..]), 1i64..5, select(VALID_PRICES)).prop_map(
        |(product_id, quantity, price)| Line {
            product_id: product_id.to_owned(),
            quantity,
            price: money(price),
        },
    )
}

fn create() -> impl Strategy<Value = OrderCommand> {
    (
        prop_oneof![8 => Just("c1"), 1 => Just("not an id")].prop_map(String::from),
        prop_oneof![
            3 => proptest::collection::vec(valid_line(), 0..4),
            1 => proptest::collection::vec(line(), 0..4),
        ],
    )
        .prop_map(|(customer_id, items)| OrderCommand::Create { customer_id, items })
}

fn order_command() -> impl Strategy<Value = OrderCommand> {
    prop_oneof![
        1 => create(),
        5 => line().prop_map(OrderCommand::AddItem),
        2 => product_id().prop_map(|product_id| OrderCommand::RemoveItem { product_id }),
        3 => Just(OrderCommand::Confirm),
        3 => Just(OrderCommand::MarkReadyToShip),
        3 => (text(), text()).prop_map(|(tracking_number, carrier)| OrderCommand::Ship {
            tracking_number,
            carrier
        }),
        1 => text().prop_map(|reason| OrderCommand::Cancel { reason }),
        2 => (select(CORRECTED_TOTALS), text()).prop_map(|(total, reason)| {
            OrderCommand::CorrectTotal { corrected_total: money(total), reason }
        }),
    ]
}

/// Mostly sequences that start with a `Create`, sometimes ones that do not.
fn order_commands() -> impl Strategy<Value = Vec<OrderCommand>> {
    prop_oneof![
        4 => (create(), proptest::collection::vec(order_command(), 0..40)).prop_map(
            |(first, mut rest)| {
                rest.insert(0, first);
                rest
            }
        ),
        1 => proptest::collection::vec(order_command(), 0..40),
    ]
}

/// What the test knows about an order, rebuilt from the events only.
#[derive(Default)]
struct OrderModel {
    /// Lines by the events (`OrderCreated`, `ItemAdded`, `ItemRemoved`).
    lines: Vec<Line>,
    /// Sum of `corrected_total - previous_total` of every `OrderTotalCorrected`.
    corrections: Money,
    /// Events applied so far.
    version: u64,
}

impl OrderModel {
    fn total(&self) -> Money {
        lines_total(&self.lines) + self.corrections
    }
}

/// Whether applying `event` may move an order from `from` to `to`.
fn transition_allowed(from: OrderStatus, event: &OrderEvent, to: OrderStatus) -> bool {
    use OrderStatus::{Cancelled, Confirmed, New, Pending, ReadyToShip, Shipped};
    match event {
        OrderEvent::OrderCreated(_) => from == New && to == Pending,
        OrderEvent::ItemAdded(_) | OrderEvent::ItemRemoved(_) => from == Pending && to == Pending,
        OrderEvent::OrderConfirmed(_) => from == Pending && to == Confirmed,
        OrderEvent::OrderReadyToShip(_) => from == Confirmed && to == ReadyToShip,
        OrderEvent::OrderShipped(_) => from == ReadyToShip && to == Shipped,
        OrderEvent::OrderCancelled(_) => {
            matches!(from, Pending | Confirmed | ReadyToShip) && to == Cancelled
        }
        OrderEvent::OrderTotalCorrected(_) => {
            matches!(from, Pending | Confirmed | ReadyToShip | Shipped) && to == from
        }
    }
}

/// Checks what an event says against the model before it is applied, then updates the model.
fn check_and_fold_order_event(model: &mut OrderModel, before: &Order, event: &OrderEvent) {
    match event {
        OrderEvent::OrderCreated(e) => {
            assert_eq!(e.total, lines_total(&e.items), "OrderCreated.total is its lines' sum");
            model.lines.clone_from(&e.items);
        }
        OrderEvent::ItemAdded(e) => {
            match model.lines.iter_mut().find(|l| l.product_id == e.product_id) {
                Some(l) => {
                    assert_eq!(l.price, e.price, "ItemAdded at another price than its line");
                    l.quantity += e.quantity;
                }
                None => model.lines.push(Line {
                    product_id: e.product_id.clone(),
                    quantity: e.quantity,
                    price: e.price,
                }),
            }
        }
        OrderEvent::ItemRemoved(e) => {
            let removed = model.lines.iter().find(|l| l.product_id == e.product_id);
            let removed = removed.expect("ItemRemoved names a line of the order");
            assert_eq!((removed.quantity, removed.price), (e.quantity, e.price));
            model.lines.retain(|l| l.product_id != e.product_id);
        }
        OrderEvent::OrderConfirmed(e) => {
            assert_eq!(e.items, model.lines, "OrderConfirmed.items");
            assert_eq!(e.total, model.total(), "OrderConfirmed.total");
        }
        OrderEvent::OrderShipped(e) => {
            assert_eq!(e.items, model.lines, "OrderShipped.items");
            assert_eq!(e.total, model.total(), "OrderShipped.total");
        }
        OrderEvent::OrderCancelled(e) => {
            assert_eq!(e.previous_status, before.status, "OrderCancelled.previous_status");
        }
        OrderEvent::OrderTotalCorrected(e) => {
            assert_eq!(e.previous_total, model.total(), "OrderTotalCorrected.previous_total");
            model.corrections = model.corrections + (e.corrected_total - e.previous_total);
        }
        OrderEvent::OrderReadyToShip(_) => {}
    }
    model.version += 1;
}

fn check_order_state(order: &Order, model: &OrderModel) {
    assert_eq!(order.items, model.lines, "lines differ from the ones the events describe");
    assert_eq!(order.total(), model.total(), "total is not lines + corrections");
    assert!(order.total() >= Money::ZERO, "the total went negative: {}", order.total());
    for (i, l) in order.items.iter().enumerate() {
        assert!(l.quantity >= 1, "line {l:?} has quantity < 1");
        assert!(l.price.is_valid_price(), "line {l:?} has an invalid price");
        assert!(
            order.items[..i].iter().all(|o| o.product_id != l.product_id),
            "product {} is on two lines",
            l.product_id
        );
    }
}

/// Checks the refusals a command must meet on this state, whatever else it does.
fn check_order_decision(order: &Order, command: &OrderCommand, accepted: bool) {
    let must_refuse = match command {
        OrderCommand::Confirm => order.items.is_empty() || order.status != OrderStatus::Pending,
        OrderCommand::AddItem(l) => {
            !l.price.is_valid_price() || l.quantity < 1 || order.status != OrderStatus::Pending
        }
        OrderCommand::RemoveItem { .. } => order.status != OrderStatus::Pending,
        OrderCommand::MarkReadyToShip => order.status != OrderStatus::Confirmed,
        OrderCommand::Ship { .. } => order.status != OrderStatus::ReadyToShip,
        OrderCommand::Cancel { .. } => {
            matches!(order.status, OrderStatus::Shipped | OrderStatus::Cancelled)
        }
        OrderCommand::CorrectTotal { corrected_total, .. } => {
            !corrected_total.is_valid_price() || order.status == OrderStatus::Cancelled
        }
        OrderCommand::Create { items, .. } => items.iter().any(|l| !l.price.is_valid_price()),
    };
    assert!(!(must_refuse && accepted), "{command:?} was accepted on {order:?}");
}

fn run_order(commands: &[OrderCommand]) {
    let mut order = Order::default();
    let mut model = OrderModel::default();
    for command in commands {
        let decided = decide(&order, model.version, command);
        check_order_decision(&order, command, decided.is_some());
        let Some(events) = decided else {
            // Refused: nothing is applied, the state stays as it was.
            check_order_state(&order, &model);
            continue;
        };
        for event in &events {
            let before = order.clone();
            check_and_fold_order_event(&mut model, &before, event);
            order.apply(event);
            assert!(
                transition_allowed(before.status, event, order.status),
                "{:?} moved the order from {:?} to {:?}",
                event.event_type(),
                before.status,
                order.status
            );
            if order.items != before.items {
                assert!(
                    before.status == OrderStatus::Pending
                        || matches!(event, OrderEvent::OrderCreated(_)),
                    "{} changed the items while {:?}",
                    event.event_type(),
                    before.status
                );
            }
            if let OrderEvent::OrderTotalCorrected(e) = event {
                assert_eq!(order.total(), e.corrected_total, "total after a correction");
            }
            check_order_state(&order, &model);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Inventory
// ---------------------------------------------------------------------------------------

fn order_id() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => select(&["o1", "o2", "o3"][..]),
        1 => Just("bad id"),
    ]
    .prop_map(String::from)
}

fn inventory_command() -> impl Strategy<Value = InventoryCommand> {
    prop_oneof![
        2 => (-1i64..6).prop_map(|quantity| InventoryCommand::Restock { quantity }),
        4 => (order_id(), -1i64..6)
            .prop_map(|(order_id, quantity)| InventoryCommand::Reserve { order_id, quantity }),
        1 => order_id().prop_map(|order_id| InventoryCommand::Release { order_id }),
        2 => order_id().prop_map(|order_id| InventoryCommand::Ship { order_id }),
    ]
}

fn check_inventory_state(inv: &Inventory, model_on_hand: i64) {
    assert!(inv.on_hand >= 0, "on_hand < 0: {inv:?}");
    assert!(inv.reserved >= 0, "reserved < 0: {inv:?}");
    assert!(inv.available() >= 0, "available < 0: {inv:?}");
    assert_eq!(inv.available(), inv.on_hand - inv.reserved);
    assert_eq!(inv.reserved, inv.reservations.values().sum::<i64>(), "reserved != reservations");
    assert!(inv.reservations.values().all(|&q| q >= 1), "empty reservation: {inv:?}");
    assert_eq!(inv.on_hand, model_on_hand, "on_hand differs from added - shipped");
}

fn run_inventory(commands: &[InventoryCommand]) {
    let mut inv = Inventory::default();
    let mut version = 0u64;
    // on_hand rebuilt from the events: StockAdded minus StockShipped.
    let mut model_on_hand = 0i64;
    for command in commands {
        let decided = decide(&inv, version, command);
        if let InventoryCommand::Reserve { quantity, .. } = command
            && *quantity > inv.available()
        {
            assert!(decided.is_none(), "reserving {quantity} with {} available", inv.available());
        }
        let Some(events) = decided else {
            check_inventory_state(&inv, model_on_hand);
            continue;
        };
        let before = inv.clone();
        for event in &events {
            match event {
                InventoryEvent::StockAdded(e) => model_on_hand += e.quantity,
                InventoryEvent::StockShipped(e) => {
                    assert_eq!(inv.reservations.get(&e.order_id), Some(&e.quantity));
                    model_on_hand -= e.quantity;
                }
                InventoryEvent::StockReleased(e) => {
                    assert_eq!(inv.reservations.get(&e.order_id), Some(&e.quantity));
                }
                InventoryEvent::StockReserved(_) | InventoryEvent::StockDepleted(_) => {}
            }
            inv.apply(event);
            version += 1;
            check_inventory_state(&inv, model_on_hand);
        }
        match command {
            InventoryCommand::Release { order_id } | InventoryCommand::Ship { order_id } => {
                assert!(!inv.reservations.contains_key(order_id), "{order_id} still reserved");
            }
            _ => {}
        }
        if let InventoryCommand::Ship { order_id } = command {
            let shipped = before.reservations[order_id];
            assert_eq!(before.on_hand - inv.on_hand, shipped, "on_hand after shipping");
            assert_eq!(before.reserved - inv.reserved, shipped, "reserved after shipping");
        }
        let reserved = events.iter().any(|e| matches!(e, InventoryEvent::StockReserved(_)));
        let depleted =
            events.iter().filter(|e| matches!(e, InventoryEvent::StockDepleted(_))).count();
        assert_eq!(
            depleted,
            usize::from(reserved && inv.available() == 0),
            "StockDepleted must come exactly when a reservation leaves 0 available: {events:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Customer
// ---------------------------------------------------------------------------------------

const VALID_EMAILS: &[&str] = &["a@example.com", "b@example.org", "x.y+z@d.co"];
const INVALID_EMAILS: &[&str] = &[
    "",
    "no-at-sign",
    "@example.com",
    "a@",
    "a b@example.com",
    "a@b@example.com",
    " a@example.com",
    "a@example.com\n",
    "a@exa\u{a0}mple.com",
];

fn email() -> impl Strategy<Value = String> {
    prop_oneof![3 => select(VALID_EMAILS), 2 => select(INVALID_EMAILS)].prop_map(String::from)
}

fn customer_command() -> impl Strategy<Value = CustomerCommand> {
    prop_oneof![
        1 => (prop_oneof![4 => Just("Ada"), 1 => Just(" ")], email()).prop_map(
            |(name, email)| CustomerCommand::Register { name: name.to_owned(), email }
        ),
        4 => email().prop_map(|email| CustomerCommand::ChangeEmail { email }),
    ]
}

fn run_customer(commands: &[CustomerCommand]) {
    let mut customer = Customer::default();
    let mut version = 0u64;
    let mut last_accepted = String::new();
    for command in commands {
        let decided = decide(&customer, version, command);
        let (CustomerCommand::Register { email, .. } | CustomerCommand::ChangeEmail { email }) =
            command;
        if !VALID_EMAILS.contains(&email.as_str()) {
            assert!(decided.is_none(), "{email:?} was accepted");
        }
        if let Some(events) = decided {
            if let CustomerCommand::ChangeEmail { email } = command
                && *email == customer.email
            {
                assert!(events.is_empty(), "changing to the same e-mail emits {events:?}");
            }
            for event in &events {
                if let CustomerEvent::CustomerEmailChanged(e) = event {
                    assert_eq!(e.previous_email, customer.email, "previous_email");
                }
                customer.apply(event);
                version += 1;
            }
            last_accepted.clone_from(email);
        }
        assert_eq!(customer.email, last_accepted, "e-mail is not the last accepted one");
    }
}

// ---------------------------------------------------------------------------------------
// The properties
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn order_invariants_hold_for_any_command_sequence(commands in order_commands()) {
        run_order(&commands);
    }

    #[test]
    fn inventory_invariants_hold_for_any_command_sequence(
        commands in (
            (1i64..6).prop_map(|quantity| InventoryCommand::Restock { quantity }),
            proptest::collection::vec(inventory_command(), 0..40),
        )
            .prop_map(|(first, mut rest)| {
                rest.insert(0, first);
                rest
            })
    ) {
        run_inventory(&commands);
    }

    #[test]
    fn customer_email_is_the_last_accepted_one(
        commands in proptest::collection::vec(customer_command(), 0..20)
    ) {
        run_customer(&commands);
    }
}

#[test]
fn two_items_at_29_99_total_exactly_59_98() {
    let mut order = Order::default();
    let create = OrderCommand::Create {
        customer_id: "c1".to_owned(),
        items: vec![Line { product_id: "p1".to_owned(), quantity: 2, price: money("29.99") }],
    };
    let events = order.handle(&create).expect("the order is created");
    for event in &events {
        order.apply(event);
    }
    assert_eq!(order.items.len(), 1);
    assert_eq!(serde_json::to_string(&order.total()).unwrap(), "59.98");
    let OrderEvent::OrderCreated(created) = &events[0] else { panic!("{events:?}") };
    assert_eq!(serde_json::to_string(&created.total).unwrap(), "59.98");

    // The same total reached by adding the second item later.
    let mut order = Order::default();
    let create = OrderCommand::Create {
        customer_id: "c1".to_owned(),
        items: vec![Line { product_id: "p1".to_owned(), quantity: 1, price: money("29.99") }],
    };
    let add = OrderCommand::AddItem(Line {
        product_id: "p1".to_owned(),
        quantity: 1,
        price: money("29.99"),
    });
    for command in [create, add] {
        for event in order.handle(&command).expect("accepted") {
            order.apply(&event);
        }
    }
    assert_eq!(order.items.len(), 1);
    assert_eq!(serde_json::to_string(&order.total()).unwrap(), "59.98");
}

/// `Order::fold_all` (what loads and `order_summary` fold long runs with) is exactly
/// `apply` one event at a time, whatever the run.
mod fold {
    use cairn_cqrs::Aggregate;
    use cairn_orders::Money;
    use cairn_orders::order::{
        ItemAdded, ItemRemoved, Line, Order, OrderConfirmed, OrderCreated, OrderEvent,
    };
    use proptest::prelude::*;

    fn line(product: u8, quantity: i64) -> Line {
        Line { product_id: format!("p{product}"), quantity, price: Money::from_whole(2) }
    }

    /// Few products, so that runs add to existing lines, remove them and add them again;
    /// creations may even repeat a product (the first line is the one added to).
    fn event() -> impl Strategy<Value = OrderEvent> {
        prop_oneof![
            1 => prop::collection::vec((0u8..5, 1i64..4), 0..4).prop_map(|lines| {
                OrderEvent::OrderCreated(OrderCreated {
                    customer_id: "c".into(),
                    items: lines.into_iter().map(|(p, q)| line(p, q)).collect(),
                    total: Money::ZERO,
                })
            }),
            6 => (0u8..5, 1i64..4).prop_map(|(p, q)| {
                let Line { product_id, quantity, price } = line(p, q);
                OrderEvent::ItemAdded(ItemAdded { product_id, quantity, price })
            }),
            2 => (0u8..5).prop_map(|p| {
                let Line { product_id, quantity, price } = line(p, 1);
                OrderEvent::ItemRemoved(ItemRemoved { product_id, quantity, price })
            }),
            1 => Just(OrderEvent::OrderConfirmed(OrderConfirmed { items: Vec::new(), total: Money::ZERO })),
        ]
    }

    proptest! {
        #[test]
        fn folding_a_run_is_applying_one_by_one(
            before in prop::collection::vec(event(), 0..10),
            run in prop::collection::vec(event(), 0..60),
        ) {
            let mut start = Order::default();
            for e in &before {
                start.apply(e);
            }
            let mut one_by_one = start.clone();
            for e in &run {
                one_by_one.apply(e);
            }
            let mut folded = start.clone();
            folded.fold_all(&run);
            prop_assert_eq!(&folded, &one_by_one);
            let mut through_the_trait = start;
            Aggregate::apply_all(&mut through_the_trait, &run);
            prop_assert_eq!(&through_the_trait, &one_by_one);
        }
    }
}
