//! `Order::state_json`: what a person sees of an order (state routes, the console) is the
//! state route's fields, derived ones included, with money's exact digits.

use cairn_cqrs::Aggregate;
use cairn_orders::Order;
use cairn_orders::order::{Line, OrderCommand};
use serde_json::Value;

fn run(order: &mut Order, command: &OrderCommand) {
    for event in order.handle(command).expect("accepted") {
        order.apply(&event);
    }
}

#[test]
fn an_orders_state_json_has_the_state_routes_fields_and_exact_money() {
    let mut order = Order::default();
    let line = |product_id: &str, quantity, price: &str| Line {
        product_id: product_id.into(),
        quantity,
        price: price.parse().unwrap(),
    };
    run(
        &mut order,
        &OrderCommand::Create {
            customer_id: "c1".into(),
            items: vec![line("p1", 2, "29.99"), line("p2", 1, "0.02")],
        },
    );
    let json = order.state_json().expect("an order renders");
    // Exact digits: 2 × 29.99 + 0.02 = 60.00, written as the money type writes it.
    let total = serde_json::to_string(&order.total()).unwrap();
    assert!(json.get().contains(&format!(r#""total":{total}"#)), "{}", json.get());
    let value: Value = serde_json::from_str(json.get()).unwrap();
    assert_eq!(value["status"], "pending");
    assert_eq!(value["customer_id"], "c1");
    assert_eq!(value["item_count"], 2);
    assert_eq!(value["items"][0]["product_id"], "p1");
    assert_eq!(value["items"].as_array().map(Vec::len), Some(2));
    assert!(value.get("corrections").is_some(), "{value}");
    assert_ne!(Some(json.get().to_owned()), order.to_snapshot(), "not the raw snapshot");
}
