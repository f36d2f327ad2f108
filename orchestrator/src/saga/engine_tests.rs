use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::*;
use crate::saga::Step;

fn def() -> SagaDefinition {
    crate::saga::create_order()
}

fn input() -> Map<String, Value> {
    json!({"customer_id": "c-1", "amount_cents": 2800, "order_details": {"foodItems": []}})
        .as_object()
        .unwrap()
        .clone()
}

/// Starts a saga at t=1000.
fn started() -> (SagaState, Vec<Outgoing>) {
    start(&def(), &Policy::default(), Uuid::new_v4(), input(), 1000)
}

/// Answers the command the saga waits on.
fn answer(
    state: &SagaState,
    reply_type: &str,
    payload: Value,
    now: i64,
) -> (SagaState, Vec<Outgoing>) {
    let pending = *state.pending.first().expect("saga should be waiting");
    let reply = Reply {
        message_type: reply_type,
        causation_id: Some(pending.command_id),
        payload: &payload,
    };
    match on_reply(
        &def(),
        &Policy::default(),
        state,
        reply,
        Uuid::new_v4(),
        now,
    ) {
        Decision::Applied { state, messages } => (state, messages),
        Decision::Ignored(why) => panic!("reply {reply_type} was ignored: {why:?}"),
    }
}

fn commands(messages: &[Outgoing]) -> Vec<&str> {
    messages
        .iter()
        .filter(|m| !m.envelope.message_type.starts_with("saga."))
        .map(|m| m.envelope.message_type.as_str())
        .collect()
}

fn events(messages: &[Outgoing]) -> Vec<&str> {
    messages
        .iter()
        .filter(|m| m.envelope.message_type.starts_with("saga."))
        .map(|m| m.envelope.message_type.as_str())
        .collect()
}

fn history(state: &SagaState) -> Vec<(String, StepKind, StepStatus)> {
    state
        .steps
        .iter()
        .map(|s| (s.name.clone(), s.kind, s.status))
        .collect()
}

use StepKind::{Compensation as C, Forward as F};
use StepStatus::{Completed as Done, Failed as Fail};

#[test]
fn start_sends_create_order_to_the_order_topic_keyed_by_the_saga() {
    let (state, messages) = started();
    assert_eq!(state.status, SagaStatus::Started);
    assert_eq!(commands(&messages), vec!["create_order"]);
    assert_eq!(events(&messages), vec!["saga.started"]);
    let cmd = messages
        .iter()
        .find(|m| m.envelope.message_type == "create_order")
        .unwrap();
    assert_eq!(cmd.topic, "order_commands");
    assert_eq!(cmd.envelope.correlation_id, state.saga_id);
    assert_eq!(cmd.envelope.causation_id, None);
    assert_eq!(cmd.envelope.payload["customer_id"], "c-1");
    assert_eq!(state.current_step(), Some("create_order"));
    assert_eq!(state.pending[0].command_id, cmd.envelope.message_id);
}

#[test]
fn happy_path_runs_four_forward_steps_and_completes() {
    let (s, _) = started();
    let (s, m) = answer(&s, "order.created", json!({"order_id": "o-1"}), 1001);
    assert_eq!(commands(&m), vec!["get_payment_info"]);
    assert_eq!(m[0].topic, "user_commands");
    assert_eq!(
        m[0].envelope.payload,
        json!({"customer_id": "c-1"}),
        "a command carries the fields its step sends, no more"
    );
    let (s, m) = answer(
        &s,
        "user.payment_info_retrieved",
        json!({"payment_method_id": "pm-1"}),
        1002,
    );
    assert_eq!(commands(&m), vec!["authorize_payment"]);
    assert_eq!(m[0].topic, "payment_commands");
    assert_eq!(
        m[0].envelope.payload,
        json!({"customer_id": "c-1", "order_id": "o-1", "amount_cents": 2800, "payment_method_id": "pm-1"}),
        "received fields flow into later commands"
    );
    let (s, m) = answer(
        &s,
        "payment.authorized",
        json!({"payment_id": "p-1", "provider_note": "not kept"}),
        1003,
    );
    assert!(
        !s.context.contains_key("provider_note"),
        "only the fields a step receives are kept"
    );
    assert_eq!(commands(&m), vec!["update_order_status"]);
    assert_eq!(
        m[0].envelope.payload["status"], "CREATED",
        "fixed args are added"
    );
    let (s, m) = answer(&s, "order.status_updated", json!({}), 1004);
    assert!(commands(&m).is_empty());
    assert_eq!(events(&m), vec!["saga.completed"]);
    assert_eq!(s.status, SagaStatus::Completed);
    assert_eq!(s.completed_at, Some(1004));
    assert!(s.pending.is_empty());
    assert_eq!(s.current_step(), None);
    assert_eq!(s.context_str("payment_id"), Some("p-1"));
    assert_eq!(
        history(&s),
        vec![
            ("create_order".into(), F, Done),
            ("get_payment_info".into(), F, Done),
            ("authorize_payment".into(), F, Done),
            ("update_order_status".into(), F, Done),
        ]
    );
    assert_eq!(s.steps[1].started_at, 1001);
    assert_eq!(s.steps[1].finished_at, Some(1002));
}

#[test]
fn each_command_answers_the_reply_that_caused_it() {
    let (s, _) = started();
    let payload = json!({"order_id": "o-1"});
    let pending = s.pending[0];
    let reply_id = Uuid::new_v4();
    let reply = Reply {
        message_type: "order.created",
        causation_id: Some(pending.command_id),
        payload: &payload,
    };
    let Decision::Applied { messages, .. } =
        on_reply(&def(), &Policy::default(), &s, reply, reply_id, 2)
    else {
        panic!()
    };
    assert_eq!(messages[0].envelope.causation_id, Some(reply_id));
}

#[test]
fn failed_order_creation_has_nothing_to_compensate() {
    let (s, _) = started();
    let (s, m) = answer(
        &s,
        "order.creation_failed",
        json!({"reason": "store closed"}),
        1001,
    );
    assert!(commands(&m).is_empty());
    assert_eq!(events(&m), vec!["saga.compensating", "saga.compensated"]);
    assert_eq!(s.status, SagaStatus::Compensated);
    assert_eq!(
        s.error.as_deref(),
        Some("create_order failed: store closed")
    );
    assert_eq!(history(&s), vec![("create_order".into(), F, Fail)]);
}

#[test]
fn missing_payment_method_cancels_the_order() {
    let (s, _) = started();
    let (s, _) = answer(&s, "order.created", json!({"order_id": "o-1"}), 1001);
    let (s, m) = answer(
        &s,
        "user.payment_info_failed",
        json!({"reason": "no payment method"}),
        1002,
    );
    assert_eq!(s.status, SagaStatus::Compensating);
    assert_eq!(commands(&m), vec!["cancel_order"]);
    assert_eq!(m[1].topic, "order_commands");
    assert_eq!(m[1].envelope.payload["order_id"], "o-1");
    assert_eq!(s.current_step(), Some("cancel_order"));
    let (s, m) = answer(&s, "order.cancelled", json!({}), 1003);
    assert_eq!(events(&m), vec!["saga.compensated"]);
    assert_eq!(s.status, SagaStatus::Compensated);
    assert_eq!(
        s.error.as_deref(),
        Some("get_payment_info failed: no payment method")
    );
    assert_eq!(
        history(&s),
        vec![
            ("create_order".into(), F, Done),
            ("get_payment_info".into(), F, Fail),
            ("cancel_order".into(), C, Done),
        ]
    );
}

#[test]
fn declined_payment_cancels_the_order_but_reverts_no_payment() {
    let (s, _) = started();
    let (s, _) = answer(&s, "order.created", json!({"order_id": "o-1"}), 1);
    let (s, _) = answer(&s, "user.payment_info_retrieved", json!({}), 2);
    let (s, m) = answer(&s, "payment.failed", json!({"reason": "card declined"}), 3);
    assert_eq!(commands(&m), vec!["cancel_order"]);
    let (s, _) = answer(&s, "order.cancelled", json!({}), 4);
    assert_eq!(s.status, SagaStatus::Compensated);
    assert_eq!(
        history(&s),
        vec![
            ("create_order".into(), F, Done),
            ("get_payment_info".into(), F, Done),
            ("authorize_payment".into(), F, Fail),
            ("cancel_order".into(), C, Done),
        ]
    );
}

#[test]
fn failed_status_update_reverts_the_payment_then_cancels_the_order() {
    let (s, _) = started();
    let (s, _) = answer(&s, "order.created", json!({"order_id": "o-1"}), 1);
    let (s, _) = answer(&s, "user.payment_info_retrieved", json!({}), 2);
    let (s, _) = answer(&s, "payment.authorized", json!({"payment_id": "p-1"}), 3);
    let (s, m) = answer(&s, "order.status_update_failed", json!({"reason": "no"}), 4);
    assert_eq!(commands(&m), vec!["revert_payment"]);
    assert_eq!(m[1].topic, "payment_commands");
    assert_eq!(m[1].envelope.payload["payment_id"], "p-1");
    let (s, m) = answer(&s, "payment.released", json!({}), 5);
    assert_eq!(commands(&m), vec!["cancel_order"]);
    assert_eq!(s.status, SagaStatus::Compensating);
    let (s, _) = answer(&s, "order.cancelled", json!({}), 6);
    assert_eq!(s.status, SagaStatus::Compensated);
    assert_eq!(
        history(&s),
        vec![
            ("create_order".into(), F, Done),
            ("get_payment_info".into(), F, Done),
            ("authorize_payment".into(), F, Done),
            ("update_order_status".into(), F, Fail),
            ("revert_payment".into(), C, Done),
            ("cancel_order".into(), C, Done),
        ]
    );
}

#[test]
fn a_duplicate_reply_is_ignored() {
    let (s0, _) = started();
    let first_command = s0.pending[0].command_id;
    let (s1, _) = answer(&s0, "order.created", json!({"order_id": "o-1"}), 1);
    let payload = json!({"order_id": "o-2"});
    let dup = Reply {
        message_type: "order.created",
        causation_id: Some(first_command),
        payload: &payload,
    };
    assert_eq!(
        on_reply(&def(), &Policy::default(), &s1, dup, Uuid::new_v4(), 2),
        Decision::Ignored(Ignored::NotAwaited)
    );
}

/// A reply that names no command the saga sent (none at all, or one it never sent) is told
/// apart from a late one, so that its sender's owner can be told (the shell dead-letters it).
#[test]
fn a_reply_answering_no_command_the_saga_sent_is_named_as_such() {
    let (s, _) = started();
    let payload = json!({});
    let stranger = Uuid::new_v4();
    for causation in [None, Some(stranger)] {
        let r = Reply {
            message_type: "order.created",
            causation_id: causation,
            payload: &payload,
        };
        assert_eq!(
            on_reply(&def(), &Policy::default(), &s, r, Uuid::new_v4(), 2),
            Decision::Ignored(Ignored::UnknownCommand(causation))
        );
    }
}

#[test]
fn a_reply_of_the_wrong_type_is_ignored() {
    let (s, _) = started();
    let payload = json!({});
    let r = Reply {
        message_type: "payment.authorized",
        causation_id: Some(s.pending[0].command_id),
        payload: &payload,
    };
    assert_eq!(
        on_reply(&def(), &Policy::default(), &s, r, Uuid::new_v4(), 2),
        Decision::Ignored(Ignored::UnexpectedType("payment.authorized".into()))
    );
}

#[test]
fn a_finished_saga_ignores_everything() {
    let (s, _) = started();
    let (s, _) = answer(&s, "order.creation_failed", json!({}), 1);
    let payload = json!({});
    let r = Reply {
        message_type: "order.created",
        causation_id: Some(s.steps[0].command_id),
        payload: &payload,
    };
    assert_eq!(
        on_reply(&def(), &Policy::default(), &s, r, Uuid::new_v4(), 2),
        Decision::Ignored(Ignored::Terminal)
    );
}

#[test]
fn command_ids_are_stable_per_saga_and_step() {
    let id = Uuid::new_v4();
    let (a, ma) = start(&def(), &Policy::default(), id, input(), 1);
    let (b, mb) = start(&def(), &Policy::default(), id, input(), 99);
    assert_eq!(a.pending[0].command_id, b.pending[0].command_id);
    assert_eq!(ma[1].envelope.message_id, mb[1].envelope.message_id);
    assert_ne!(
        command_id(id, "cancel_order", C),
        command_id(id, "cancel_order", F)
    );
    assert_ne!(
        command_id(id, "create_order", F),
        command_id(Uuid::new_v4(), "create_order", F)
    );
}

#[test]
fn the_engine_interprets_any_definition() {
    // A two-step saga of another kind, with no lifecycle topic: no engine change needed.
    let mut reserve = Step::new(
        "reserve",
        CommandSpec::new("reserve", "stock"),
        "reserved",
        "not_reserved",
    );
    reserve.compensation = Some(crate::saga::Compensation {
        name: "unreserve".into(),
        command: CommandSpec::new("unreserve", "stock"),
        on_success: "unreserved".into(),
        on_failure: None,
        timing: Default::default(),
    });
    let ship = Step::new(
        "ship",
        CommandSpec::new("ship", "courier"),
        "shipped",
        "not_shipped",
    );
    let def = SagaDefinition::new("ship", vec![reserve, ship]);
    let (s, m) = start(&def, &Policy::default(), Uuid::new_v4(), Map::new(), 0);
    assert_eq!(m.len(), 1, "no lifecycle events without a lifecycle topic");
    let p = json!({});
    let step = |s: &SagaState, t: &str| match on_reply(
        &def,
        &Policy::default(),
        s,
        Reply {
            message_type: t,
            causation_id: Some(s.pending[0].command_id),
            payload: &p,
        },
        Uuid::new_v4(),
        1,
    ) {
        Decision::Applied { state, messages } => (state, messages),
        other => panic!("{other:?}"),
    };
    let (s, _) = step(&s, "reserved");
    let (s, m) = step(&s, "not_shipped");
    assert_eq!(m[0].envelope.message_type, "unreserve");
    assert_eq!(m[0].topic, "stock");
    let (s, _) = step(&s, "unreserved");
    assert_eq!(s.status, SagaStatus::Compensated);
}

#[test]
fn statuses_round_trip_through_their_names() {
    for s in SagaStatus::ALL {
        assert_eq!(SagaStatus::parse(s.as_str()), Some(s));
    }
    assert_eq!(SagaStatus::parse("completed"), None);
    assert!(SagaStatus::Compensated.is_terminal());
    assert!(!SagaStatus::Compensating.is_terminal());
}

// ---- deadlines, retries, cancellation ------------------------------------------------------

fn policy() -> Policy {
    Policy {
        step_timeout_ms: 1_000,
        max_step_timeout_ms: 4_000,
        max_attempts: 3,
        retry_delay_ms: 100,
        compensation_limit_ms: 10_000,
        saga_timeout_ms: 60_000,
    }
}

fn applied(d: Decision) -> (SagaState, Vec<Outgoing>) {
    match d {
        Decision::Applied { state, messages } => (state, messages),
        Decision::Ignored(why) => panic!("ignored: {why:?}"),
    }
}

fn timer(s: &SagaState, now: i64) -> (SagaState, Vec<Outgoing>) {
    applied(on_timer(&def(), &policy(), s, now))
}

fn reply_with(
    p: &Policy,
    s: &SagaState,
    t: &str,
    payload: Value,
    now: i64,
) -> (SagaState, Vec<Outgoing>) {
    let pending = *s.pending.first().expect("waiting");
    let r = Reply {
        message_type: t,
        causation_id: Some(pending.command_id),
        payload: &payload,
    };
    applied(on_reply(&def(), p, s, r, Uuid::new_v4(), now))
}

#[test]
fn an_overdue_command_is_resent_with_the_same_id_until_the_step_fails() {
    let p = policy();
    let (s, m) = start(&def(), &p, Uuid::new_v4(), input(), 0);
    let first_id = m[1].envelope.message_id;
    let deadline = s.pending[0].deadline_at;
    assert!(
        (900..=1100).contains(&deadline),
        "first wait is the step timeout with jitter: {deadline}"
    );
    assert_eq!(
        on_timer(&def(), &p, &s, deadline - 1),
        Decision::Ignored(Ignored::NotDue)
    );

    let (s, m) = timer(&s, deadline);
    assert_eq!(commands(&m), vec!["create_order"]);
    assert_eq!(
        m[0].envelope.message_id, first_id,
        "a re-send is the same command"
    );
    assert_eq!(s.steps[0].attempts, 2);
    assert_eq!(
        s.steps[0].attempt_log[0].outcome.as_deref(),
        Some("timed out")
    );
    let second = s.pending[0].deadline_at - deadline;
    assert!(
        (1800..=2200).contains(&second),
        "the wait doubles: {second}"
    );

    let (s, _) = timer(&s, s.pending[0].deadline_at);
    assert_eq!(s.steps[0].attempts, 3);
    let (s, m) = timer(&s, s.pending[0].deadline_at);
    // Three sendings, no reply: the order may exist, so it is cancelled to be sure.
    assert_eq!(s.status, SagaStatus::Compensating);
    assert_eq!(commands(&m), vec!["cancel_order"]);
    assert_eq!(s.steps[0].status, StepStatus::Failed);
    assert!(s.steps[0].outcome_unknown);
    assert!(
        s.error
            .as_deref()
            .unwrap()
            .contains("no reply after 3 attempts"),
        "{:?}",
        s.error
    );
    let (s, _) = reply_with(&p, &s, "order.cancelled", json!({}), 99_000);
    assert_eq!(s.status, SagaStatus::Compensated);
}

#[test]
fn a_late_reply_to_a_resent_command_is_accepted() {
    let p = policy();
    let (s, _) = start(&def(), &p, Uuid::new_v4(), input(), 0);
    let (s, _) = timer(&s, 5_000);
    let (s, m) = reply_with(&p, &s, "order.created", json!({"order_id": "o"}), 5_001);
    assert_eq!(commands(&m), vec!["get_payment_info"]);
    assert_eq!(s.steps[0].attempt_log.len(), 2);
    assert_eq!(
        s.steps[0].attempt_log[1].outcome.as_deref(),
        Some("succeeded")
    );
}

#[test]
fn a_refused_compensation_is_retried_then_fails_the_saga_at_the_limit() {
    let p = policy();
    let (s, _) = start(&def(), &p, Uuid::new_v4(), input(), 0);
    let (s, _) = reply_with(&p, &s, "order.created", json!({"order_id": "o-1"}), 1);
    let (s, m) = reply_with(
        &p,
        &s,
        "user.payment_info_failed",
        json!({"reason": "no card"}),
        2,
    );
    let cancel_id = m
        .iter()
        .find(|m| m.envelope.message_type == "cancel_order")
        .unwrap()
        .envelope
        .message_id;
    let (s, m) = reply_with(
        &p,
        &s,
        "order.cancel_failed",
        json!({"reason": "kitchen busy"}),
        3,
    );
    assert!(m.is_empty(), "no immediate re-send");
    assert_eq!(s.status, SagaStatus::Compensating);
    let retry_at = s.pending[0].deadline_at;
    assert!(
        (90..=115).contains(&(retry_at - 3)),
        "retried after the retry delay: {}",
        retry_at - 3
    );
    let (s, m) = timer(&s, retry_at);
    assert_eq!(m[0].envelope.message_id, cancel_id);
    assert_eq!(s.steps[2].attempts, 2);
    assert_eq!(
        s.steps[2].attempt_log[0].outcome.as_deref(),
        Some("failed: kitchen busy")
    );

    // Past the limit, the next refusal ends the saga FAILED, naming the compensation.
    let (s, m) = reply_with(
        &p,
        &s,
        "order.cancel_failed",
        json!({"reason": "kitchen on fire"}),
        20_000,
    );
    assert_eq!(s.status, SagaStatus::Failed);
    assert_eq!(events(&m), vec!["saga.failed"]);
    let why = s.compensation_error.clone().unwrap();
    assert!(
        why.starts_with("cancel_order failed after 2 attempts"),
        "{why}"
    );
    assert!(why.contains("kitchen on fire"), "{why}");
    assert_eq!(s.steps[2].status, StepStatus::Failed);
    assert_eq!(
        s.error.as_deref(),
        Some("get_payment_info failed: no card"),
        "the cause is kept"
    );

    // An operator re-drives it; this time the kitchen agrees.
    let (s, m) = applied(retry(&def(), &p, &s, 30_000));
    assert_eq!(s.status, SagaStatus::Compensating);
    assert_eq!(commands(&m), vec!["cancel_order"]);
    assert_eq!(
        m.iter()
            .find(|m| m.envelope.message_type == "cancel_order")
            .unwrap()
            .envelope
            .message_id,
        cancel_id
    );
    assert_eq!(s.steps[2].attempts, 3);
    assert_eq!(
        s.steps[2].error, None,
        "the old failure is not carried into the new window"
    );
    assert_eq!(s.compensation_error, None);
    let (s, _) = reply_with(&p, &s, "order.cancelled", json!({}), 30_001);
    assert_eq!(s.status, SagaStatus::Compensated);
    assert_eq!(s.steps[2].status, StepStatus::Completed);
}

#[test]
fn an_unanswered_compensation_is_resent_until_the_limit() {
    let p = policy();
    let (s, _) = start(&def(), &p, Uuid::new_v4(), input(), 0);
    let (s, _) = reply_with(&p, &s, "order.created", json!({"order_id": "o-1"}), 1);
    let (mut s, _) = reply_with(&p, &s, "user.payment_info_failed", json!({}), 2);
    let mut sends = 1;
    while s.status == SagaStatus::Compensating {
        let at = s.pending[0].deadline_at;
        let (next, m) = timer(&s, at);
        sends += commands(&m).len();
        s = next;
    }
    assert_eq!(s.status, SagaStatus::Failed);
    assert!(sends >= 4, "resent while within the limit: {sends}");
    assert!(s
        .compensation_error
        .unwrap()
        .contains("cancel_order failed"));
}

#[test]
fn retry_is_only_for_failed_sagas() {
    let (s, _) = started();
    assert_eq!(
        retry(&def(), &policy(), &s, 1),
        Decision::Ignored(Ignored::NotRetryable(SagaStatus::Started))
    );
}

#[test]
fn a_saga_past_its_deadline_is_compensated_after_the_step_in_flight() {
    let p = Policy {
        saga_timeout_ms: 5_000,
        step_timeout_ms: 10_000,
        ..policy()
    };
    let (s, _) = start(&def(), &p, Uuid::new_v4(), input(), 0);
    let (s, _) = reply_with(&p, &s, "order.created", json!({"order_id": "o-1"}), 1);
    assert_eq!(
        s.next_wake(),
        Some(5_000),
        "the saga deadline comes before the step's"
    );
    let (s, m) = applied(on_timer(&def(), &p, &s, 5_000));
    assert_eq!(s.status, SagaStatus::Compensating);
    assert!(commands(&m).is_empty(), "waits for get_payment_info");
    assert!(s.error.as_deref().unwrap().contains("within 5 s"));
    let (s, m) = reply_with(&p, &s, "user.payment_info_retrieved", json!({}), 5_001);
    assert_eq!(commands(&m), vec!["cancel_order"]);
    let (s, _) = reply_with(&p, &s, "order.cancelled", json!({}), 5_002);
    assert_eq!(s.status, SagaStatus::Compensated);
}

#[test]
fn cancelling_a_running_saga_waits_for_the_step_then_undoes_it() {
    let p = policy();
    let (s, _) = start(&def(), &p, Uuid::new_v4(), input(), 0);
    let (s, m) = applied(cancel(&def(), &p, &s, 1));
    assert_eq!(s.status, SagaStatus::Cancelling);
    assert!(commands(&m).is_empty());
    assert_eq!(events(&m), vec!["saga.cancelling"]);
    assert_eq!(
        cancel(&def(), &p, &s, 2),
        Decision::Ignored(Ignored::AlreadyCancelled)
    );
    let (s, m) = reply_with(&p, &s, "order.created", json!({"order_id": "o-1"}), 3);
    assert_eq!(commands(&m), vec!["cancel_order"]);
    let (s, m) = reply_with(&p, &s, "order.cancelled", json!({}), 4);
    assert_eq!(s.status, SagaStatus::Cancelled);
    assert_eq!(events(&m), vec!["saga.cancelled"]);
    assert_eq!(
        cancel(&def(), &p, &s, 5),
        Decision::Ignored(Ignored::AlreadyCancelled)
    );
}

#[test]
fn cancelling_mid_step_stops_waiting_at_the_step_deadline() {
    let p = policy();
    let (s, _) = start(&def(), &p, Uuid::new_v4(), input(), 0);
    let (s, _) = applied(cancel(&def(), &p, &s, 1));
    let (s, m) = timer(&s, s.pending[0].deadline_at);
    assert_eq!(
        commands(&m),
        vec!["cancel_order"],
        "the order may exist: cancel it, no re-send"
    );
    assert!(s.steps[0].outcome_unknown);
    let (s, _) = reply_with(&p, &s, "order.cancelled", json!({}), 9_000);
    assert_eq!(s.status, SagaStatus::Cancelled);
}

#[test]
fn cancelling_a_completed_saga_undoes_every_step_newest_first() {
    let p = policy();
    let (s, _) = start(&def(), &p, Uuid::new_v4(), input(), 0);
    let (s, _) = reply_with(&p, &s, "order.created", json!({"order_id": "o-1"}), 1);
    let (s, _) = reply_with(&p, &s, "user.payment_info_retrieved", json!({}), 2);
    let (s, _) = reply_with(
        &p,
        &s,
        "payment.authorized",
        json!({"payment_id": "p-1"}),
        3,
    );
    let (s, _) = reply_with(&p, &s, "order.status_updated", json!({}), 4);
    assert_eq!(s.status, SagaStatus::Completed);
    let (s, m) = applied(cancel(&def(), &p, &s, 10));
    assert_eq!(s.status, SagaStatus::Cancelling);
    assert_eq!(s.completed_at, None);
    assert_eq!(commands(&m), vec!["revert_payment"]);
    let (s, m) = reply_with(&p, &s, "payment.released", json!({}), 11);
    assert_eq!(commands(&m), vec!["cancel_order"]);
    let (s, _) = reply_with(&p, &s, "order.cancelled", json!({}), 12);
    assert_eq!(s.status, SagaStatus::Cancelled);
    assert_eq!(s.completed_at, Some(12));
    assert_eq!(s.next_wake(), None);
}

#[test]
fn sagas_that_cannot_be_cancelled_say_why() {
    let (s, _) = started();
    let (s, _) = answer(&s, "order.creation_failed", json!({}), 1);
    assert_eq!(
        cancel(&def(), &policy(), &s, 2),
        Decision::Ignored(Ignored::NotCancellable(SagaStatus::Compensated))
    );
    assert_eq!(
        on_timer(&def(), &policy(), &s, i64::MAX),
        Decision::Ignored(Ignored::Terminal)
    );
}

/// The lifecycle events among `messages`, with their ids.
fn lifecycle_ids(messages: &[Outgoing]) -> Vec<(String, Uuid)> {
    messages
        .iter()
        .filter(|m| m.envelope.message_type.starts_with("saga."))
        .map(|m| (m.envelope.message_type.clone(), m.envelope.message_id))
        .collect()
}

/// Each lifecycle event is a message of its own. A second `saga.failed` (after
/// a retry that failed again) or `saga.retrying` with the id of the first is dropped by any
/// receiver that de-duplicates on message ids.
#[test]
fn lifecycle_events_repeated_after_a_retry_get_ids_of_their_own() {
    let p = policy();
    let (s, _) = start(&def(), &p, Uuid::new_v4(), input(), 0);
    let (s, _) = reply_with(&p, &s, "order.created", json!({"order_id": "o-1"}), 1);
    let (mut s, _) = reply_with(&p, &s, "user.payment_info_failed", json!({}), 2);
    let mut ids = Vec::new();
    let mut now = 3;
    for round in 0..2 {
        // The compensation is refused until the saga is FAILED, then retried.
        while s.status == SagaStatus::Compensating {
            now = now.max(s.pending[0].deadline_at);
            let (next, m) = reply_with(&p, &s, "order.cancel_failed", json!({"reason": "no"}), now);
            ids.extend(lifecycle_ids(&m));
            s = next;
            now += p.compensation_limit_ms + 1;
        }
        assert_eq!(s.status, SagaStatus::Failed, "round {round}");
        let (next, m) = applied(retry(&def(), &p, &s, now));
        ids.extend(lifecycle_ids(&m));
        s = next;
        now += 1;
    }
    let kinds: Vec<&str> = ids.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "saga.failed",
            "saga.retrying",
            "saga.failed",
            "saga.retrying"
        ]
    );
    let distinct: std::collections::HashSet<Uuid> = ids.iter().map(|(_, id)| *id).collect();
    assert_eq!(distinct.len(), ids.len(), "repeated ids: {ids:?}");
}

/// Stored data pointing past the definition parks the saga instead of indexing out of bounds; a
/// parked saga is left alone.
#[test]
fn a_saga_waiting_on_a_step_its_definition_lacks_is_parked_not_panicked_on() {
    let p = policy();
    let (mut s, _) = start(&def(), &p, Uuid::new_v4(), input(), 0);
    if let Some(pending) = s.pending.first_mut() {
        pending.step_index = 9;
    }
    let due = s.pending[0].deadline_at;
    let (parked, m) = applied(on_timer(&def(), &p, &s, due));
    assert!(m.is_empty());
    assert!(
        parked.parked.as_deref().unwrap().contains("step 9"),
        "{:?}",
        parked.parked
    );
    assert_eq!(parked.next_wake(), None, "no deadline brings it back");
    assert_eq!(
        on_timer(&def(), &p, &parked, due + 1_000_000),
        Decision::Ignored(Ignored::Parked)
    );
    // A reply for it changes nothing either.
    let payload = json!({});
    let reply = Reply {
        message_type: "order.created",
        causation_id: Some(parked.pending[0].command_id),
        payload: &payload,
    };
    assert!(matches!(
        on_reply(&def(), &p, &parked, reply, Uuid::new_v4(), due),
        Decision::Ignored(_)
    ));
}

/// A saga whose timer fails for good is parked (no deadline) and an operator's `retry` resumes
/// it by sending the command it waits for again, even when that was its last attempt; a saga
/// past its definition stays parked.
#[test]
fn a_saga_parked_after_timer_failures_is_resumed_by_retry() {
    let p = policy();
    let (s, _) = start(&def(), &p, Uuid::new_v4(), input(), 0);
    let (parked, m) = applied(park_after_failures(
        &s,
        10,
        "the timer failed 3 times".into(),
    ));
    assert!(m.is_empty());
    assert_eq!(parked.parked.as_deref(), Some("the timer failed 3 times"));
    assert_eq!(parked.next_wake(), None);
    assert_eq!(
        park_after_failures(&parked, 11, "again".into()),
        Decision::Ignored(Ignored::Parked)
    );
    let mut last_attempt = parked.clone();
    last_attempt.pending[0].attempt = p.max_attempts;
    let (resumed, m) = applied(retry(&def(), &p, &last_attempt, 20));
    assert_eq!(
        m.len(),
        1,
        "the awaited command is sent again at once: {m:?}"
    );
    assert_eq!(m[0].envelope.message_id, s.pending[0].command_id);
    assert_eq!(resumed.parked, None);
    assert_eq!(resumed.pending[0].attempt, p.max_attempts + 1);
    assert!(resumed.next_wake().unwrap() > 20, "waits for the reply");
    assert_eq!(resumed.status, s.status);
    // Its reply now moves it on.
    let reply = serde_json::json!({});
    let (moved, _) = applied(on_reply(
        &def(),
        &p,
        &resumed,
        Reply {
            message_type: &def().steps[0].on_success,
            causation_id: Some(s.pending[0].command_id),
            payload: &reply,
        },
        Uuid::new_v4(),
        21,
    ));
    assert_eq!(moved.steps[0].status, StepStatus::Completed);

    let mut lost = parked.clone();
    if let Some(pending) = lost.pending.first_mut() {
        pending.step_index = 9;
    }
    assert_eq!(
        retry(&def(), &p, &lost, 20),
        Decision::Ignored(Ignored::Parked)
    );
}

// --- Parallel groups -------------------------------------------------------------------------

/// `reserve`, then `pack` and `bill` together (group `fulfil`), then `ship`; every step but
/// `ship` can be undone.
fn grouped() -> SagaDefinition {
    let undoable = |name: &str, group: Option<&str>| {
        let mut s = Step::new(
            name,
            CommandSpec::new(name, &format!("{name}_commands")),
            &format!("{name}.done"),
            &format!("{name}.failed"),
        );
        s.compensation = Some(crate::saga::Compensation {
            name: format!("undo_{name}"),
            command: CommandSpec::new(&format!("undo_{name}"), &format!("{name}_commands")),
            on_success: format!("{name}.undone"),
            on_failure: None,
            timing: Default::default(),
        });
        s.group = group.map(str::to_string);
        s
    };
    let ship = Step::new(
        "ship",
        CommandSpec::new("ship", "ship_commands"),
        "ship.done",
        "ship.failed",
    );
    let mut def = SagaDefinition::new(
        "fulfil",
        vec![
            undoable("reserve", None),
            undoable("pack", Some("fulfil")),
            undoable("bill", Some("fulfil")),
            ship,
        ],
    );
    def.lifecycle_topic = Some("events".into());
    def
}

fn group_timer(def: &SagaDefinition, s: &SagaState, now: i64) -> (SagaState, Vec<Outgoing>) {
    applied(on_timer(def, &policy(), s, now))
}

/// Answers the pending command of step `name`.
fn answer_step(def: &SagaDefinition, s: &SagaState, name: &str, reply: &str, now: i64) -> Decision {
    let record = s
        .steps
        .iter()
        .rev()
        .find(|r| r.name == name)
        .expect("step ran");
    on_reply(
        def,
        &policy(),
        s,
        Reply {
            message_type: reply,
            causation_id: Some(record.command_id),
            payload: &json!({}),
        },
        Uuid::new_v4(),
        now,
    )
}

fn in_group() -> (SagaDefinition, SagaState) {
    let def = grouped();
    let (s, _) = start(&def, &policy(), Uuid::new_v4(), Map::new(), 0);
    let (s, m) = applied(answer_step(&def, &s, "reserve", "reserve.done", 10));
    assert_eq!(
        commands(&m),
        vec!["pack", "bill"],
        "the members are sent together"
    );
    assert_eq!(m[0].topic, "pack_commands");
    assert_eq!(s.pending.len(), 2);
    assert_eq!(
        s.current_step(),
        Some("fulfil"),
        "the group is the current step"
    );
    (def, s)
}

#[test]
fn a_group_goes_on_once_every_member_has_succeeded() {
    let (def, s) = in_group();
    let (s, m) = applied(answer_step(&def, &s, "bill", "bill.done", 20));
    assert!(m.is_empty(), "pack is still running");
    assert_eq!(s.current_step(), Some("pack"));
    let (s, m) = applied(answer_step(&def, &s, "pack", "pack.done", 30));
    assert_eq!(commands(&m), vec!["ship"]);
    let (s, m) = applied(answer_step(&def, &s, "ship", "ship.done", 40));
    assert_eq!(events(&m), vec!["saga.completed"]);
    assert_eq!(s.status, SagaStatus::Completed);
    assert_eq!(s.steps[1].group.as_deref(), Some("fulfil"));
}

#[test]
fn a_member_failing_while_another_runs_waits_then_undoes_what_ran_newest_first() {
    let (def, s) = in_group();
    let (s, m) = applied(answer_step(&def, &s, "pack", "pack.failed", 20));
    assert_eq!(s.status, SagaStatus::Compensating);
    assert_eq!(events(&m), vec!["saga.compensating"]);
    assert!(
        commands(&m).is_empty(),
        "bill is still running: nothing is undone yet"
    );
    assert_eq!(s.error.as_deref(), Some("pack failed: pack.failed"));
    let (s, m) = applied(answer_step(&def, &s, "bill", "bill.done", 30));
    assert_eq!(
        commands(&m),
        vec!["undo_bill"],
        "the member that completed is undone first"
    );
    let (s, m) = applied(answer_step(&def, &s, "undo_bill", "bill.undone", 40));
    assert_eq!(commands(&m), vec!["undo_reserve"]);
    let (s, _) = applied(answer_step(&def, &s, "undo_reserve", "reserve.undone", 50));
    assert_eq!(s.status, SagaStatus::Compensated);
    assert_eq!(
        history(&s),
        vec![
            ("reserve".into(), F, Done),
            ("pack".into(), F, Fail),
            ("bill".into(), F, Done),
            ("undo_bill".into(), C, Done),
            ("undo_reserve".into(), C, Done),
        ]
    );
}

#[test]
fn both_members_failing_undo_only_the_steps_before_the_group() {
    let (def, s) = in_group();
    let (s, _) = applied(answer_step(&def, &s, "bill", "bill.failed", 20));
    let (s, m) = applied(answer_step(&def, &s, "pack", "pack.failed", 30));
    assert_eq!(commands(&m), vec!["undo_reserve"]);
    assert_eq!(
        s.error.as_deref(),
        Some("bill failed: bill.failed"),
        "the first failure is the cause"
    );
    assert_eq!(
        events(&m),
        Vec::<&str>::new(),
        "compensating is announced once"
    );
}

#[test]
fn a_member_still_silent_after_a_sibling_failed_is_not_resent_but_undone() {
    let (def, s) = in_group();
    let (s, _) = applied(answer_step(&def, &s, "pack", "pack.failed", 20));
    let bill = *s.pending.first().unwrap();
    let (s, m) = group_timer(&def, &s, bill.deadline_at);
    assert_eq!(
        commands(&m),
        vec!["undo_bill"],
        "bill may have run: it is undone, not re-sent"
    );
    let record = s.steps.iter().find(|r| r.name == "bill").unwrap();
    assert!(record.outcome_unknown);
    // Its late reply, after compensation started, changes nothing.
    assert_eq!(
        answer_step(&def, &s, "bill", "bill.done", bill.deadline_at + 1),
        Decision::Ignored(Ignored::NotAwaited)
    );
}

#[test]
fn members_are_resent_each_on_its_own_deadline() {
    let (def, s) = in_group();
    let (pack, bill) = (s.pending[0], s.pending[1]);
    assert_ne!(
        pack.deadline_at, bill.deadline_at,
        "jitter differs per command"
    );
    let first = pack.deadline_at.min(bill.deadline_at);
    let (s, m) = group_timer(&def, &s, first);
    assert_eq!(m.len(), 1, "only the overdue member is re-sent");
    let resent = m[0].envelope.message_id;
    assert_eq!(s.awaits(resent).unwrap().attempt, 2);
    let other = s.pending.iter().find(|p| p.command_id != resent).unwrap();
    assert_eq!(other.attempt, 1);
    // A member's success does not disturb the other's re-sends.
    let (other_step, other_reply) = if resent == pack.command_id {
        ("bill", "bill.done")
    } else {
        ("pack", "pack.done")
    };
    let (s, _) = applied(answer_step(&def, &s, other_step, other_reply, first + 1));
    assert_eq!(s.pending.len(), 1);
    assert_eq!(s.pending[0].command_id, resent);
}

#[test]
fn a_member_that_never_answers_fails_the_group_after_its_attempts() {
    let (def, mut s) = in_group();
    let (s2, _) = applied(answer_step(&def, &s, "bill", "bill.done", 20));
    s = s2;
    while s.status == SagaStatus::Started {
        let at = s.pending[0].deadline_at;
        s = group_timer(&def, &s, at).0;
    }
    assert_eq!(s.status, SagaStatus::Compensating);
    assert!(s
        .error
        .as_deref()
        .unwrap()
        .starts_with("pack failed: no reply after"));
    // Newest first in the saga's order: bill (after pack in the definition), then pack, which
    // may have run.
    assert_eq!(s.current_step(), Some("undo_bill"));
    let (s, _) = applied(answer_step(&def, &s, "undo_bill", "bill.undone", 1_000_000));
    assert_eq!(s.current_step(), Some("undo_pack"));
}

#[test]
fn cancelling_during_a_group_waits_for_every_member() {
    let (def, s) = in_group();
    let (s, _) = applied(cancel(&def, &policy(), &s, 15));
    let (s, m) = applied(answer_step(&def, &s, "pack", "pack.done", 20));
    assert!(commands(&m).is_empty(), "bill is still running");
    let (s, m) = applied(answer_step(&def, &s, "bill", "bill.done", 30));
    assert_eq!(commands(&m), vec!["undo_bill"]);
    let (s, _) = applied(answer_step(&def, &s, "undo_bill", "bill.undone", 40));
    let (s, _) = applied(answer_step(&def, &s, "undo_pack", "pack.undone", 50));
    let (s, _) = applied(answer_step(&def, &s, "undo_reserve", "reserve.undone", 60));
    assert_eq!(s.status, SagaStatus::Cancelled);
}

#[test]
fn a_stored_single_pending_command_still_reads() {
    let (s, _) = started();
    let mut json = serde_json::to_value(&s).unwrap();
    json["pending"] = serde_json::to_value(s.pending[0]).unwrap();
    let old: SagaState = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(old.pending, s.pending);
    json["pending"] = Value::Null;
    json.as_object_mut().unwrap().remove("definition_version");
    let ended: SagaState = serde_json::from_value(json).unwrap();
    assert!(ended.pending.is_empty());
    assert_eq!(ended.definition_version, 1);
}

#[test]
fn every_event_published_is_a_declared_lifecycle_event() {
    // Through started, compensating, cancelling, retrying and each ending.
    let (s, m0) = started();
    let (s, m1) = answer(&s, "order.created", json!({"order_id": "o"}), 1001);
    let (c, m2) = applied(cancel(&def(), &Policy::default(), &s, 1002));
    let (_, m3) = answer(&c, "user.payment_info_retrieved", json!({}), 1003);
    let (f, m4) = answer(&s, "user.payment_info_failed", json!({}), 1004);
    let (_, m5) = answer(&f, "order.cancelled", json!({}), 1005);
    for m in [m0, m1, m2, m3, m4, m5] {
        for e in events(&m) {
            assert!(
                LIFECYCLE_EVENTS.contains(&e),
                "{e} is not in LIFECYCLE_EVENTS"
            );
        }
    }
}

// --- The point of no return ------------------------------------------------------------------

/// `reserve` (undone by `undo_reserve`), then `charge`, the pivot, then `ship`, retriable.
fn pivoted() -> SagaDefinition {
    let mut def = grouped();
    let charge = Step::new(
        "charge",
        CommandSpec::new("charge", "charge_commands"),
        "charge.done",
        "charge.failed",
    );
    let ship = def.steps.pop().unwrap();
    def.steps.truncate(1);
    def.steps.push(charge);
    def.steps.push(ship);
    def.pivot = Some(1);
    def
}

/// A `pivoted` saga with `reserve` done and `charge` sent, at t=10.
fn charging() -> (SagaDefinition, SagaState) {
    let def = pivoted();
    let (s, _) = start(&def, &policy(), Uuid::new_v4(), Map::new(), 0);
    let (s, m) = applied(answer_step(&def, &s, "reserve", "reserve.done", 10));
    assert_eq!(commands(&m), vec!["charge"]);
    (def, s)
}

#[test]
fn a_step_after_the_pivot_that_fails_is_retried_forward_never_compensated() {
    let (def, s) = charging();
    let (s, m) = applied(answer_step(&def, &s, "charge", "charge.done", 20));
    assert_eq!(commands(&m), vec!["ship"]);
    let (s, m) = applied(answer_step(&def, &s, "ship", "ship.failed", 30));
    assert!(m.is_empty(), "nothing undone, nothing sent yet: {m:?}");
    assert_eq!(s.status, SagaStatus::Started);
    let due = s.next_wake().unwrap();
    assert!(due > 30 && due <= 30 + 2 * policy().retry_delay_ms, "{due}");
    let (s, m) = group_timer(&def, &s, due);
    assert_eq!(commands(&m), vec!["ship"], "asked again after the delay");
    let (s, m) = applied(answer_step(&def, &s, "ship", "ship.done", due + 1));
    assert_eq!(s.status, SagaStatus::Completed);
    assert_eq!(events(&m), vec!["saga.completed"]);
    assert!(!history(&s).iter().any(|(_, k, _)| *k == C));
}

#[test]
fn the_deadline_passing_while_the_pivot_is_in_flight_compensates_nothing() {
    let (def, s) = charging();
    let p = Policy {
        saga_timeout_ms: 1_000,
        compensation_limit_ms: 100_000,
        ..policy()
    };
    // Far past the saga's deadline and the pivot's attempts: it is asked again, not given up.
    let mut s = s;
    let mut now = 10;
    for _ in 0..(p.max_attempts + 2) {
        now = s.next_wake().unwrap();
        let (next, m) = applied(on_timer(&def, &p, &s, now));
        assert_eq!(commands(&m), vec!["charge"], "re-sent at {now}");
        assert_eq!(next.status, SagaStatus::Started);
        assert_eq!(next.abort, None);
        s = next;
    }
    assert!(now > 1_000, "the deadline has passed");
    let (s, m) = applied(answer_step(&def, &s, "charge", "charge.done", now + 1));
    assert_eq!(commands(&m), vec!["ship"]);
    // And after the pivot the deadline does not apply either.
    let (s, m) = applied(on_timer(&def, &p, &s, s.next_wake().unwrap()));
    assert_eq!(commands(&m), vec!["ship"]);
    assert_eq!(s.status, SagaStatus::Started);
}

#[test]
fn a_refused_pivot_still_undoes_the_steps_before_it() {
    let (def, s) = charging();
    let (s, m) = applied(answer_step(&def, &s, "charge", "charge.failed", 20));
    assert_eq!(commands(&m), vec!["undo_reserve"]);
    assert_eq!(s.status, SagaStatus::Compensating);
    let (s, _) = applied(answer_step(&def, &s, "undo_reserve", "reserve.undone", 30));
    assert_eq!(s.status, SagaStatus::Compensated);
}

#[test]
fn a_step_after_the_pivot_failing_past_the_limit_fails_the_saga_for_an_operator_and_retry_goes_on()
{
    let (def, s) = charging();
    let (mut s, _) = applied(answer_step(&def, &s, "charge", "charge.done", 20));
    let mut now = 20;
    while s.status == SagaStatus::Started {
        now += 1;
        let (next, m) = applied(answer_step(&def, &s, "ship", "ship.failed", now));
        assert!(
            !commands(&m).iter().any(|c| c.starts_with("undo_")),
            "{m:?}"
        );
        s = next;
        if s.status != SagaStatus::Started {
            assert_eq!(events(&m), vec!["saga.failed"], "the operator's alert");
            break;
        }
        now = s.next_wake().unwrap();
        let (next, _) = group_timer(&def, &s, now);
        s = next;
    }
    assert!(now >= 20 + policy().compensation_limit_ms, "{now}");
    assert_eq!(s.status, SagaStatus::Failed);
    let error = s.error.as_deref().unwrap();
    assert!(
        error.starts_with("ship failed after") && error.contains("point of no return (charge)"),
        "{error}"
    );
    assert_eq!(s.compensation_error, None);
    assert!(
        !history(&s).iter().any(|(_, k, _)| *k == C),
        "nothing undone"
    );
    // An operator's retry sends ship again, with a fresh limit, and the saga goes on.
    let (s, m) = applied(retry(&def, &policy(), &s, now + 5));
    assert_eq!(commands(&m), vec!["ship"]);
    assert_eq!(s.status, SagaStatus::Started);
    assert_eq!(s.error, None);
    let (s, _) = applied(answer_step(&def, &s, "ship", "ship.done", now + 6));
    assert_eq!(s.status, SagaStatus::Completed);
}

#[test]
fn a_cancel_is_refused_once_the_pivot_is_sent() {
    let def = pivoted();
    let (s, _) = start(&def, &policy(), Uuid::new_v4(), Map::new(), 0);
    assert!(matches!(
        cancel(&def, &policy(), &s, 1),
        Decision::Applied { .. }
    ));
    let (_, s) = charging();
    assert_eq!(
        cancel(&def, &policy(), &s, 20),
        Decision::Ignored(Ignored::PastPointOfNoReturn("charge".into()))
    );
    let (done, _) = applied(answer_step(&def, &s, "charge", "charge.done", 20));
    let (done, _) = applied(answer_step(&def, &done, "ship", "ship.done", 21));
    assert_eq!(done.status, SagaStatus::Completed);
    assert_eq!(
        cancel(&def, &policy(), &done, 22),
        Decision::Ignored(Ignored::PastPointOfNoReturn("charge".into()))
    );
}

/// A saga parked after timer failures waits for an operator, replies included: it used to move
/// on with no deadlines and could end COMPLETED still marked parked. After `retry` the re-sent
/// command's answer moves it.
#[test]
fn a_parked_saga_takes_no_reply_until_it_is_retried() {
    let p = policy();
    let (s, _) = start(&def(), &p, Uuid::new_v4(), input(), 0);
    let (parked, _) = applied(park_after_failures(&s, 10, "the timer failed".into()));
    let payload = json!({"order_id": "o-1"});
    let reply = Reply {
        message_type: "order.created",
        causation_id: Some(s.pending[0].command_id),
        payload: &payload,
    };
    assert_eq!(
        on_reply(&def(), &p, &parked, reply, Uuid::new_v4(), 11),
        Decision::Ignored(Ignored::Parked)
    );
    let (resumed, _) = applied(retry(&def(), &p, &parked, 12));
    let (moved, m) = applied(on_reply(&def(), &p, &resumed, reply, Uuid::new_v4(), 13));
    assert_eq!(moved.parked, None);
    assert_eq!(commands(&m), vec!["get_payment_info"]);
}

/// A FAILED saga whose failed compensation its definition no longer has is refused a retry and
/// stays FAILED, retryable once the definition is fixed; it used to be parked, where no later
/// retry could reach it.
#[test]
fn a_retry_that_cannot_run_leaves_a_failed_saga_failed_not_parked() {
    let p = Policy {
        compensation_limit_ms: 0,
        ..policy()
    };
    let (s, _) = start(&def(), &p, Uuid::new_v4(), input(), 0);
    let mut failed = s.clone();
    failed.status = SagaStatus::Failed;
    failed.pending.clear();
    failed.steps.push(crate::saga::state::StepRecord {
        name: "undo_nothing".into(),
        kind: StepKind::Compensation,
        step_index: 1, // get_payment_info, which has no compensation
        status: StepStatus::Failed,
        command_id: Uuid::new_v4(),
        attempts: 3,
        attempt_log: Vec::new(),
        started_at: 0,
        finished_at: Some(5),
        error: Some("gave up".into()),
        outcome_unknown: false,
        group: None,
    });
    assert_eq!(
        retry(&def(), &p, &failed, 10),
        Decision::Ignored(Ignored::NotRetryable(SagaStatus::Failed))
    );
}
