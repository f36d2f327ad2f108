//! `POST /orders`: CampusG's create-order request, checked, turned into the input of the
//! `create_order` saga and started like any saga (see [`super::start`]).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::auth::{Access::Needs, Routes, Scope};
use super::start::{self, StartRequest};
use super::{ApiError, ApiJson, AppState, RequestTrace};
use crate::intake::Ticket;

/// The saga `POST /orders` starts.
const CREATE_ORDER: &str = "create_order";

pub fn routes() -> Routes {
    Routes::default().post("/orders", Needs(Scope::Start), create_order)
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
    // Checked by create_order's input schema and its amount computed, as for
    // `POST /sagas/create_order`: one set of rules for both fronts.
    let started = start::start(
        &app,
        StartRequest {
            saga_type: CREATE_ORDER,
            input: saga_input(&order),
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

/// The saga's input: what `sagas/create_order.toml` declares, built from CampusG's request
/// (fields it does not know are left out; the amount is computed by the saga).
fn saga_input(order: &CreateOrder) -> Map<String, Value> {
    let mut input = Map::new();
    input.insert("customer_id".into(), json!(order.customer_id));
    input.insert("order_details".into(), json!(order.order_details));
    input
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::{computed, SagaDefinition};

    fn order(items: Value, fee: f64) -> CreateOrder {
        serde_json::from_value(json!({
            "customer_id": "c-1",
            "order_details": {"foodItems": items, "storeLocation": "s", "deliveryLocation": "d", "deliveryFee": fee}
        }))
        .unwrap()
    }

    /// What the start path does with an order's input: the schema's check, then the amount.
    fn started(order: &CreateOrder) -> Result<i64, Vec<String>> {
        let topics = platform::Topics::load(None).unwrap();
        let registry = crate::saga::SagasSource::BuiltIn
            .load(&topics, platform::Contract::built_in())
            .unwrap();
        let def: &SagaDefinition = registry.latest(CREATE_ORDER).unwrap();
        let input = saga_input(order);
        registry.check_input(def, &Value::Object(input.clone()))?;
        let function = &def.computed["amount_cents"];
        Ok(computed::compute(function, &input)
            .unwrap()
            .as_i64()
            .unwrap())
    }

    #[test]
    fn the_total_is_items_plus_fee_in_cents() {
        let o = order(
            json!([{"name": "Burger", "price": 12.5, "quantity": 2}, {"name": "Tea", "price": 0.1, "quantity": 3}]),
            3.0,
        );
        assert_eq!(started(&o).unwrap(), 2500 + 30 + 300);
    }

    #[test]
    fn bad_orders_are_refused_naming_the_path() {
        let cases = [
            (json!([]), 0.0, "/order_details/foodItems: "),
            (
                json!([{"name": "A", "price": -1.0, "quantity": 1}]),
                0.0,
                "/order_details/foodItems/0/price: ",
            ),
            (
                json!([{"name": "A", "price": 1e9, "quantity": 1}]),
                0.0,
                "/order_details/foodItems/0/price: ",
            ),
            (
                json!([{"name": "A", "price": 1.0, "quantity": 0}]),
                0.0,
                "/order_details/foodItems/0/quantity: ",
            ),
            (
                json!([{"name": "A", "price": 1.0, "quantity": 5000}]),
                0.0,
                "/order_details/foodItems/0/quantity: ",
            ),
            (
                json!([{"name": " ", "price": 1.0, "quantity": 1}]),
                0.0,
                "/order_details/foodItems/0/name: ",
            ),
            (
                json!([{"name": "A", "price": 1.0, "quantity": 1}]),
                -3.0,
                "/order_details/deliveryFee: ",
            ),
            (
                json!([{"name": "A", "price": 1.0, "quantity": 1}]),
                20_000.0,
                "/order_details/deliveryFee: ",
            ),
        ];
        for (items, fee, path) in cases {
            let problems = started(&order(items.clone(), fee)).unwrap_err();
            assert!(
                problems.iter().any(|p| p.starts_with(path)),
                "{items} {fee}: {problems:?}"
            );
        }
        let mut o = order(json!([{"name": "A", "price": 1.0, "quantity": 1}]), 0.0);
        for blank in ["", "  ", "a\nb", "a\u{7}b", "\t", &"x".repeat(257)] {
            o.customer_id = blank.into();
            let problems = started(&o).unwrap_err();
            assert!(
                problems.iter().any(|p| p.starts_with("/customer_id: ")),
                "{blank:?}: {problems:?}"
            );
        }
        for fine in ["c-1", "Zoë O'Brien", " padded "] {
            o.customer_id = fine.into();
            assert!(started(&o).is_ok(), "{fine:?}");
        }
    }
}
