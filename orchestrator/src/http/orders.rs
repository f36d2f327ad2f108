//! `POST /orders`: CampusG's create-order request, checked, turned into the input of the
//! `create_order` saga and started like any saga (see [`super::start`]).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::start::{self, StartRequest};
use super::{ApiError, ApiJson, AppState, RequestTrace};
use crate::intake::Ticket;

/// Limits that keep an order sane; past them the request is refused, not truncated.
const MAX_ITEMS: usize = 100;
const MAX_PRICE: f64 = 100_000.0;
const MAX_QUANTITY: u32 = 1_000;
const MAX_FEE: f64 = 10_000.0;
const MAX_TEXT: usize = 256;

/// The saga `POST /orders` starts.
const CREATE_ORDER: &str = "create_order";

pub fn router() -> Router<AppState> {
    Router::new().route("/orders", post(create_order))
}

/// The CampusG create-order request.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
pub struct CreateOrder {
    pub customer_id: String,
    pub order_details: OrderDetails,
}

#[derive(Debug, Deserialize, Serialize, PartialEq)]
pub struct OrderDetails {
    #[serde(rename = "foodItems")]
    pub food_items: Vec<FoodItem>,
    #[serde(
        rename = "storeLocation",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub store_location: Option<String>,
    #[serde(
        rename = "deliveryLocation",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub delivery_location: Option<String>,
    #[serde(rename = "deliveryFee", default)]
    pub delivery_fee: f64,
}

#[derive(Debug, Deserialize, Serialize, PartialEq)]
pub struct FoodItem {
    pub name: String,
    pub price: f64,
    pub quantity: u32,
}

impl CreateOrder {
    /// Checks the order and returns its total in integer cents (items plus delivery fee).
    pub fn validate(&self) -> Result<i64, ApiError> {
        let customer = self.customer_id.trim();
        if customer.is_empty() {
            return Err(ApiError::unprocessable("customer_id must not be empty"));
        }
        if self.customer_id.len() > MAX_TEXT || self.customer_id.chars().any(char::is_control) {
            return Err(ApiError::unprocessable(format!(
                "customer_id must be at most {MAX_TEXT} bytes of printable text"
            )));
        }
        let d = &self.order_details;
        if d.food_items.is_empty() {
            return Err(ApiError::unprocessable(
                "order_details.foodItems must not be empty",
            ));
        }
        if d.food_items.len() > MAX_ITEMS {
            return Err(ApiError::unprocessable(format!(
                "at most {MAX_ITEMS} food items per order"
            )));
        }
        for text in [&d.store_location, &d.delivery_location]
            .into_iter()
            .flatten()
        {
            if text.len() > MAX_TEXT {
                return Err(ApiError::unprocessable(format!(
                    "locations must be at most {MAX_TEXT} bytes"
                )));
            }
        }
        let mut total: i64 = 0;
        for (i, item) in d.food_items.iter().enumerate() {
            if item.name.trim().is_empty() || item.name.len() > MAX_TEXT {
                return Err(ApiError::unprocessable(format!(
                    "foodItems[{i}].name must be 1 to {MAX_TEXT} bytes"
                )));
            }
            if !item.price.is_finite() || item.price < 0.0 || item.price > MAX_PRICE {
                return Err(ApiError::unprocessable(format!(
                    "foodItems[{i}].price must be between 0 and {MAX_PRICE}"
                )));
            }
            if item.quantity == 0 || item.quantity > MAX_QUANTITY {
                return Err(ApiError::unprocessable(format!(
                    "foodItems[{i}].quantity must be between 1 and {MAX_QUANTITY}"
                )));
            }
            total += cents(item.price) * i64::from(item.quantity);
        }
        if !d.delivery_fee.is_finite() || d.delivery_fee < 0.0 || d.delivery_fee > MAX_FEE {
            return Err(ApiError::unprocessable(format!(
                "order_details.deliveryFee must be between 0 and {MAX_FEE}"
            )));
        }
        Ok(total + cents(d.delivery_fee))
    }
}

/// Dollars to cents, rounded to the nearest cent (12.345 → 1235). The bounds above keep every
/// total far inside i64.
fn cents(amount: f64) -> i64 {
    (amount * 100.0).round() as i64
}

/// CampusG's answer to a started order saga (`success`, `message`, `saga_id`, `status`), and
/// the saga's type.
#[derive(Debug, Serialize)]
struct Accepted {
    success: bool,
    message: &'static str,
    saga_id: Uuid,
    saga_type: &'static str,
    status: &'static str,
}

async fn create_order(
    State(app): State<AppState>,
    trace: Option<Extension<RequestTrace>>,
    ticket: Option<Extension<Ticket>>,
    headers: HeaderMap,
    ApiJson(order): ApiJson<CreateOrder>,
) -> Result<Response, ApiError> {
    let idempotency_key = start::idempotency_key(&headers)?;
    let amount_cents = order.validate()?;
    let started = start::start(
        &app,
        StartRequest {
            saga_type: CREATE_ORDER,
            input: saga_input(&order, amount_cents),
            idempotency_key,
            trace,
            ticket,
        },
    )
    .await?;
    let body = Accepted {
        success: true,
        message: if started.replayed {
            "Order saga already started with this Idempotency-Key"
        } else {
            "Order saga started"
        },
        saga_id: started.state.saga_id,
        saga_type: CREATE_ORDER,
        status: started.state.status.as_str(),
    };
    Ok(start::accepted(&started, body))
}

/// The saga's input: what `sagas/create_order.toml` declares, built from CampusG's request.
fn saga_input(order: &CreateOrder, amount_cents: i64) -> Map<String, Value> {
    let mut input = Map::new();
    input.insert("customer_id".into(), json!(order.customer_id));
    input.insert("order_details".into(), json!(order.order_details));
    input.insert("amount_cents".into(), json!(amount_cents));
    input
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(items: Value, fee: f64) -> CreateOrder {
        serde_json::from_value(json!({
            "customer_id": "c-1",
            "order_details": {"foodItems": items, "storeLocation": "s", "deliveryLocation": "d", "deliveryFee": fee}
        }))
        .unwrap()
    }

    #[test]
    fn the_total_is_items_plus_fee_in_cents() {
        let o = order(
            json!([{"name": "Burger", "price": 12.5, "quantity": 2}, {"name": "Tea", "price": 0.1, "quantity": 3}]),
            3.0,
        );
        assert_eq!(o.validate().unwrap(), 2500 + 30 + 300);
    }

    #[test]
    fn prices_round_to_the_nearest_cent() {
        let o = order(json!([{"name": "A", "price": 0.295, "quantity": 1}]), 0.0);
        assert_eq!(o.validate().unwrap(), 30);
    }

    #[test]
    fn bad_orders_are_refused_with_a_reason() {
        let cases = [
            (json!([]), 0.0, "must not be empty"),
            (
                json!([{"name": "A", "price": -1.0, "quantity": 1}]),
                0.0,
                "price",
            ),
            (
                json!([{"name": "A", "price": 1e9, "quantity": 1}]),
                0.0,
                "price",
            ),
            (
                json!([{"name": "A", "price": 1.0, "quantity": 0}]),
                0.0,
                "quantity",
            ),
            (
                json!([{"name": "A", "price": 1.0, "quantity": 5000}]),
                0.0,
                "quantity",
            ),
            (
                json!([{"name": " ", "price": 1.0, "quantity": 1}]),
                0.0,
                "name",
            ),
            (
                json!([{"name": "A", "price": 1.0, "quantity": 1}]),
                -3.0,
                "deliveryFee",
            ),
        ];
        for (items, fee, needle) in cases {
            let err = order(items.clone(), fee).validate().unwrap_err();
            assert!(err.to_string().contains(needle), "{items} {fee}: {err}");
        }
        let mut o = order(json!([{"name": "A", "price": 1.0, "quantity": 1}]), 0.0);
        o.customer_id = "  ".into();
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("customer_id"));
        o.customer_id = "a\u{0}b".into();
        assert!(o.validate().is_err());
    }
}
