//! `Order::fold_all` (what loads and `order_summary` fold long runs with) is exactly
//! `apply` one event at a time, whatever the run.

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
