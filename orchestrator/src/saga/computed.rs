//! Input fields a saga computes from the rest of its input, declared in its file
//! (`computed = { amount_cents = "order_total" }`): a client never sets them, so an order's
//! amount is what its items cost, not what the request says it costs.

use serde_json::{Map, Value};

/// The functions a definition may name, and what each computes.
pub const FUNCTIONS: &[(&str, &str)] = &[(
    "order_total",
    "order_details.foodItems' price x quantity plus order_details.deliveryFee, in integer cents",
)];

/// Whether `function` is one of [`FUNCTIONS`].
pub fn exists(function: &str) -> bool {
    FUNCTIONS.iter().any(|(name, _)| *name == function)
}

/// `function` over `input` (already checked against the saga's input schema), or why it cannot
/// be computed.
pub fn compute(function: &str, input: &Map<String, Value>) -> Result<Value, String> {
    match function {
        "order_total" => order_total(input).map(Value::from),
        other => Err(format!("no computed function {other:?}")),
    }
}

/// The largest total taken, in cents: far inside i64 and inside JSON's exact integers.
const MAX_TOTAL_CENTS: i64 = 1 << 52;

/// Each item's price rounded to the cent times its quantity, plus the delivery fee rounded to
/// the cent (12.345 is 1235 cents).
fn order_total(input: &Map<String, Value>) -> Result<i64, String> {
    let details = input
        .get("order_details")
        .and_then(Value::as_object)
        .ok_or("order_total needs an order_details object")?;
    let items = details
        .get("foodItems")
        .and_then(Value::as_array)
        .ok_or("order_total needs order_details.foodItems")?;
    let mut total: i64 = 0;
    for (i, item) in items.iter().enumerate() {
        let price = item.get("price").and_then(Value::as_f64);
        let quantity = item.get("quantity").and_then(Value::as_i64);
        let (Some(price), Some(quantity)) = (price, quantity) else {
            return Err(format!(
                "order_total needs a price and an integer quantity in foodItems/{i}"
            ));
        };
        total = cents(price)
            .and_then(|c| c.checked_mul(quantity))
            .and_then(|c| total.checked_add(c))
            .ok_or("the order's total is out of range")?;
    }
    let fee = match details.get("deliveryFee") {
        None | Some(Value::Null) => 0,
        Some(fee) => fee
            .as_f64()
            .and_then(cents)
            .ok_or("order_details.deliveryFee must be a number")?,
    };
    total = total
        .checked_add(fee)
        .filter(|t| (0..=MAX_TOTAL_CENTS).contains(t))
        .ok_or("the order's total is out of range")?;
    Ok(total)
}

fn cents(amount: f64) -> Option<i64> {
    let c = (amount * 100.0).round();
    (c.is_finite() && c.abs() <= MAX_TOTAL_CENTS as f64).then_some(c as i64)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn total(input: Value) -> Result<Value, String> {
        compute("order_total", input.as_object().unwrap())
    }

    #[test]
    fn an_order_total_is_its_items_plus_the_fee_in_cents() {
        let order = json!({"order_details": {
            "foodItems": [{"name": "Burger", "price": 12.5, "quantity": 2}, {"name": "Tea", "price": 0.1, "quantity": 3}],
            "deliveryFee": 3.0
        }});
        assert_eq!(total(order), Ok(json!(2500 + 30 + 300)));
        let rounded = json!({"order_details": {"foodItems": [{"price": 0.295, "quantity": 1}]}});
        assert_eq!(total(rounded), Ok(json!(30)), "to the nearest cent, no fee");
    }

    #[test]
    fn what_cannot_be_totalled_is_refused_with_why() {
        for (input, needle) in [
            (json!({}), "order_details"),
            (json!({"order_details": {}}), "foodItems"),
            (
                json!({"order_details": {"foodItems": [{"price": 1}]}}),
                "foodItems/0",
            ),
            (
                json!({"order_details": {"foodItems": [{"price": 1e300, "quantity": 9}]}}),
                "range",
            ),
            (
                json!({"order_details": {"foodItems": [], "deliveryFee": "1"}}),
                "deliveryFee",
            ),
            (
                json!({"order_details": {"foodItems": [], "deliveryFee": -1}}),
                "range",
            ),
        ] {
            let err = total(input.clone()).unwrap_err();
            assert!(err.contains(needle), "{input}: {err}");
        }
        assert!(compute("no_such", &Map::new()).is_err());
        assert!(exists("order_total") && !exists("no_such"));
    }
}
