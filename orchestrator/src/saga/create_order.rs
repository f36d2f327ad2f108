//! The create-order saga (CampusG's), declared as data:
//!
//! | step                  | command → topic                           | success / failure                                     | compensation                          |
//! |-----------------------|-------------------------------------------|-------------------------------------------------------|---------------------------------------|
//! | `create_order`        | `create_order` → order_commands           | `order.created` / `order.creation_failed`             | `cancel_order` → `order.cancelled`    |
//! | `get_payment_info`    | `get_payment_info` → user_commands        | `user.payment_info_retrieved` / `user.payment_info_failed` | —                               |
//! | `authorize_payment`   | `authorize_payment` → payment_commands    | `payment.authorized` / `payment.failed`               | `revert_payment` → `payment.released` |
//! | `update_order_status` | `update_order_status` → order_commands    | `order.status_updated` / `order.status_update_failed` | —                                     |

use platform::Topics;
use serde_json::json;

use super::definition::{CommandSpec, Compensation, SagaDefinition, Step};

pub const SAGA_TYPE: &str = "create_order";

pub fn definition(topics: &Topics) -> SagaDefinition {
    let orders = topics.order_commands.name.as_str();
    let users = topics.user_commands.name.as_str();
    let payments = topics.payment_commands.name.as_str();
    SagaDefinition {
        saga_type: SAGA_TYPE.to_string(),
        lifecycle_topic: Some(topics.notification_events.name.clone()),
        steps: vec![
            Step {
                name: "create_order".into(),
                command: CommandSpec::new("create_order", orders),
                on_success: "order.created".into(),
                on_failure: "order.creation_failed".into(),
                compensation: Some(Compensation {
                    name: "cancel_order".into(),
                    command: CommandSpec::new("cancel_order", orders),
                    on_success: "order.cancelled".into(),
                    on_failure: Some("order.cancel_failed".into()),
                }),
            },
            Step {
                name: "get_payment_info".into(),
                command: CommandSpec::new("get_payment_info", users),
                on_success: "user.payment_info_retrieved".into(),
                on_failure: "user.payment_info_failed".into(),
                compensation: None,
            },
            Step {
                name: "authorize_payment".into(),
                command: CommandSpec::new("authorize_payment", payments),
                on_success: "payment.authorized".into(),
                on_failure: "payment.failed".into(),
                compensation: Some(Compensation {
                    name: "revert_payment".into(),
                    command: CommandSpec::new("revert_payment", payments),
                    on_success: "payment.released".into(),
                    on_failure: Some("payment.release_failed".into()),
                }),
            },
            Step {
                name: "update_order_status".into(),
                command: CommandSpec::new("update_order_status", orders)
                    .with_arg("status", json!("CREATED")),
                on_success: "order.status_updated".into(),
                on_failure: "order.status_update_failed".into(),
                compensation: None,
            },
        ],
    }
}

/// The topics the participants of this saga reply on; the orchestrator consumes these.
pub fn reply_topics(topics: &Topics) -> Vec<String> {
    vec![
        topics.order_events.name.clone(),
        topics.user_events.name.clone(),
        topics.payment_events.name.clone(),
    ]
}
