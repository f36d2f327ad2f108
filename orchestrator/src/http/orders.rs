//! `POST /orders`: CampusG's create-order request, checked, turned into the input of the
//! `create_order` saga and started like any saga (see [`super::start`]).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use serde::Serialize;
use serde_json::{Map, Value};
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Accepted {
    success: bool,
    message: &'static str,
    saga_id: Uuid,
    saga_type: &'static str,
    status: &'static str,
}

#[utoipa::path(
    post,
    path = "/orders",
    tag = "orders",
    summary = "CampusG's create-order front: starts a create_order saga",
    params(("Idempotency-Key" = Option<String>, Header, description = "A retried order with the same key answers with the saga the first one started")),
    request_body(content = Object, description = "The order; create_order's input schema says what it must hold"),
    responses(
        (status = 202, description = "Started (or replayed for its Idempotency-Key)", body = Accepted, headers(
            ("Location" = String, description = "`/sagas/{saga_id}`"),
            ("idempotent-replayed" = String, description = "`true` when the Idempotency-Key had started it before"),
        )),
        (status = 400, description = "Malformed JSON or Idempotency-Key", body = super::error::ErrorBody),
        (status = 413, description = "The body is over 64 KiB", body = super::error::ErrorBody),
        (status = 415, description = "Not Content-Type: application/json", body = super::error::ErrorBody),
        (status = 409, description = "The Idempotency-Key was used before with a different order", body = super::error::ErrorBody),
        (status = 422, description = "The order does not match create_order's input schema", body = super::error::ErrorBody),
        (status = 503, description = "The database is away, or the request timed out", body = super::error::ErrorBody),
    )
)]
async fn create_order(
    State(app): State<AppState>,
    trace: Option<Extension<RequestTrace>>,
    ticket: Option<Extension<Ticket>>,
    headers: HeaderMap,
    ApiJson(order): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let idempotency_key = start::idempotency_key(&headers)?;
    let Value::Object(order) = order else {
        return Err(ApiError::unprocessable(
            "invalid request: the order must be a JSON object",
        ));
    };
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
/// create_order's input: the order's customer and details (CampusG's other fields are not the
/// saga's); the input schema then says whether they are right.
fn saga_input(order: &Map<String, Value>) -> Map<String, Value> {
    ["customer_id", "order_details"]
        .iter()
        .filter_map(|k| Some((k.to_string(), order.get(*k)?.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::{computed, SagaDefinition};
    use serde_json::json;

    fn order(items: Value, fee: f64) -> Map<String, Value> {
        let Value::Object(order) = json!({
            "customer_id": "c-1",
            "order_details": {"foodItems": items, "storeLocation": "s", "deliveryLocation": "d", "deliveryFee": fee},
            "campusg_field": "not the saga's"
        }) else {
            unreachable!()
        };
        order
    }

    /// What the start path does with an order's input: the schema's check, then the amount.
    fn started(order: &Map<String, Value>) -> Result<i64, Vec<String>> {
        let topics = platform::Topics::load(None).unwrap();
        let registry = crate::saga::SagasSource::BuiltIn
            .load(&topics, platform::Contract::built_in())
            .unwrap();
        let def: &SagaDefinition = registry.latest(CREATE_ORDER).unwrap();
        let input = saga_input(order);
        assert!(!input.contains_key("campusg_field"));
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
            o.insert("customer_id".into(), json!(blank));
            let problems = started(&o).unwrap_err();
            assert!(
                problems.iter().any(|p| p.starts_with("/customer_id: ")),
                "{blank:?}: {problems:?}"
            );
        }
        for fine in ["c-1", "Zoë O'Brien", " padded "] {
            o.insert("customer_id".into(), json!(fine));
            assert!(started(&o).is_ok(), "{fine:?}");
        }
    }
}
