//! One test per rule the loader checks: each mistake stops the start with one line naming the
//! file, the step and the problem.

use super::*;

fn topics() -> Topics {
    Topics::load(None).unwrap()
}

fn load(text: &str) -> Result<SagaDefinition> {
    parse("sagas/test.toml", text, &topics(), Contract::built_in())
}

/// The error for `text`, checked to be one line naming the file.
fn problem(text: &str) -> String {
    let err = load(text).expect_err("should be refused").to_string();
    assert!(!err.contains('\n'), "one line: {err}");
    assert!(err.contains("sagas/test.toml"), "names the file: {err}");
    err
}

const HEAD: &str = r#"
saga = "ship"
version = 1
[input]
type = "object"
properties.customer_id = { type = "string" }
properties.amount_cents = { type = "integer" }
properties.order_details = { type = "object" }
"#;

fn with_steps(steps: &str) -> String {
    format!("{HEAD}\n{steps}")
}

const CREATE: &str = r#"
[[steps]]
command = "create_order"
send = ["customer_id", "order_details", "amount_cents"]
receive = ["order_id"]
compensation = { command = "cancel_order", send = ["order_id"] }
"#;

#[test]
fn the_repository_definitions_load() {
    let registry = SagasSource::BuiltIn
        .load(&topics(), Contract::built_in())
        .unwrap();
    let co = registry.latest("create_order").unwrap();
    assert_eq!(co.steps.len(), 4);
    assert_eq!(co.steps[2].on_success, "payment.authorized");
    assert_eq!(co.steps[2].command.topic, "payment_commands");
    assert_eq!(
        co.steps[0]
            .compensation
            .as_ref()
            .unwrap()
            .on_failure
            .as_deref(),
        Some("order.cancel_failed")
    );
    assert_eq!(co.lifecycle_topic.as_deref(), Some("notification_events"));
    assert_eq!(
        registry.reply_topics(),
        vec!["order_events", "payment_events", "user_events"]
    );
    // The folder and the compiled-in copy are the same files.
    let from_dir = SagasSource::Dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../sagas").into())
        .load(&topics(), Contract::built_in())
        .unwrap();
    assert_eq!(
        from_dir.latest("create_order"),
        registry.latest("create_order")
    );
}

#[test]
fn an_outline_shows_the_order_the_groups_and_what_undoes_them() {
    let registry = SagasSource::BuiltIn
        .load(&topics(), Contract::built_in())
        .unwrap();
    assert_eq!(
        registry.latest("refund_order").unwrap().outline(),
        "refund_order v1: begin_refund -> verify(check_refund_eligibility + hold_refund) \
         -> refund_payment -> complete_refund; undone by abort_refund, release_refund_hold; \
         pivot refund_payment (begin_refund compensatable, check_refund_eligibility nothing to \
         undo, hold_refund compensatable, refund_payment pivot, complete_refund retriable)"
    );
    let alone = load(&with_steps(
        "[[steps]]\ncommand = \"get_payment_info\"\nsend = [\"customer_id\"]\nnothing_to_undo = \"a lookup\"\n",
    ))
    .unwrap();
    assert_eq!(
        alone.outline(),
        "ship v1: get_payment_info; nothing to undo; no pivot: every step can be undone \
         (get_payment_info nothing to undo)"
    );
}

#[test]
fn a_minimal_definition_loads_with_names_from_the_contract() {
    let def = load(&with_steps(CREATE)).unwrap();
    assert_eq!(def.saga_type, "ship");
    let step = &def.steps[0];
    assert_eq!(
        step.name, "create_order",
        "the name defaults to the command"
    );
    assert_eq!(step.on_failure, "order.creation_failed");
    assert_eq!(
        step.command.send,
        ["customer_id", "order_details", "amount_cents"]
    );
    assert_eq!(def.reply_topics, ["order_events"]);
    assert_eq!(def.lifecycle_topic, None);
}

#[test]
fn toml_mistakes_name_the_line() {
    let err = problem(&with_steps("[[steps]]\ncommand = create_order"));
    assert!(err.contains("line 11"), "{err}");
}

#[test]
fn unknown_keys_are_refused() {
    let err = problem(&with_steps(&CREATE.replace("receive", "recieve")));
    assert!(err.contains("recieve"), "{err}");
}

#[test]
fn a_saga_type_must_fit_in_a_url() {
    let err = problem(&with_steps(CREATE).replace("saga = \"ship\"", "saga = \"Ship It\""));
    assert!(err.contains("a-z"), "{err}");
}

#[test]
fn version_zero_is_refused() {
    let err = problem(&with_steps(CREATE).replace("version = 1", "version = 0"));
    assert!(err.contains("version"), "{err}");
}

#[test]
fn a_saga_needs_steps() {
    assert!(problem(HEAD).contains("at least one step"));
}

#[test]
fn an_unknown_command_is_named() {
    let err = problem(&with_steps(
        &CREATE.replace("\"create_order\"", "\"make_order\""),
    ));
    assert!(
        err.contains("step make_order") && err.contains("\"make_order\" is not in messages.toml"),
        "{err}"
    );
}

#[test]
fn an_unknown_topic_role_is_named() {
    let err = problem(&format!(
        "events = \"notifications\"\n{}",
        with_steps(CREATE)
    ));
    assert!(
        err.contains("events") && err.contains("\"notifications\""),
        "{err}"
    );
}

#[test]
fn a_field_read_before_any_step_writes_it_is_named() {
    let steps = format!(
        "{CREATE}\n[[steps]]\ncommand = \"authorize_payment\"\nsend = [\"customer_id\", \"amount_cents\", \"payment_id\"]\n"
    );
    let err = problem(&with_steps(&steps));
    assert!(
        err.contains("step authorize_payment") && err.contains("`payment_id`"),
        "{err}"
    );
}

#[test]
fn a_field_the_command_requires_must_be_sent() {
    let err = problem(&with_steps(&CREATE.replace(", \"amount_cents\"]", "]")));
    assert!(err.contains("requires `amount_cents`"), "{err}");
}

#[test]
fn a_field_cannot_be_both_sent_and_fixed() {
    let steps = CREATE.replace(
        "receive = [\"order_id\"]",
        "receive = [\"order_id\"]\nargs = { customer_id = \"x\" }",
    );
    assert!(problem(&with_steps(&steps)).contains("both sent and a fixed arg"));
}

#[test]
fn a_received_field_must_be_in_the_reply() {
    let err = problem(&with_steps(
        &CREATE.replace("receive = [\"order_id\"]", "receive = [\"order_no\"]"),
    ));
    assert!(
        err.contains("`order_no`") && err.contains("order.created"),
        "{err}"
    );
}

#[test]
fn a_duplicate_reply_type_is_refused() {
    let twice = format!("{CREATE}\n[[steps]]\nname = \"again\"\ncommand = \"create_order\"\nsend = [\"customer_id\", \"order_details\", \"amount_cents\"]\n");
    let err = problem(&with_steps(&twice));
    assert!(
        err.contains("step again") && err.contains("order.created"),
        "{err}"
    );
}

#[test]
fn a_compensation_reply_equal_to_a_forward_reply_is_refused() {
    // cancel_order used as a forward step and as a compensation: the same replies twice.
    let steps = format!(
        "{CREATE}\n[[steps]]\nname = \"cancel_it\"\ncommand = \"cancel_order\"\nsend = [\"order_id\"]\n"
    );
    let err = problem(&with_steps(&steps));
    assert!(
        err.contains("order.cancelled") && err.contains("compensation of create_order"),
        "{err}"
    );
}

#[test]
fn step_names_are_unique() {
    let twice = format!("{CREATE}\n[[steps]]\nname = \"create_order\"\ncommand = \"get_payment_info\"\nsend = [\"customer_id\"]\n");
    assert!(problem(&with_steps(&twice)).contains("used twice"));
}

#[test]
fn the_input_schema_must_be_a_valid_object_schema() {
    let err = problem(&with_steps(CREATE).replace("type = \"object\"", "type = \"list\""));
    assert!(err.contains("input"), "{err}");
    let err = problem(&with_steps(CREATE).replace(
        "properties.amount_cents = { type = \"integer\" }",
        "properties.amount_cents = { type = \"integer\", minimum = \"zero\" }",
    ));
    assert!(err.contains("not a valid JSON Schema"), "{err}");
}

#[test]
fn durations_and_attempts_are_checked() {
    let err = problem(&with_steps(
        &CREATE.replace("receive", "timeout = \"soon\"\nreceive"),
    ));
    assert!(err.contains("step create_order: timeout"), "{err}");
    let err = problem(&with_steps(
        &CREATE.replace("receive", "attempts = 0\nreceive"),
    ));
    assert!(err.contains("attempts"), "{err}");
    let err = problem(&with_steps(
        &CREATE.replace("receive", "timeout = \"500us\"\nreceive"),
    ));
    assert!(
        err.contains("step create_order: timeout") && err.contains("1 ms"),
        "{err}"
    );
    let def = load(&with_steps(&CREATE.replace(
        "receive",
        "timeout = \"2s\"\nmax_timeout = \"1m\"\nattempts = 2\nreceive",
    )))
    .unwrap();
    let t = def.steps[0].timing;
    assert_eq!(
        (t.timeout_ms, t.max_timeout_ms, t.attempts),
        (Some(2000), Some(60_000), Some(2))
    );
}

const GROUP: &str = r#"
[[steps]]
name = "charge_and_look_up"
[[steps.parallel]]
command = "get_payment_info"
send = ["customer_id"]
receive = ["payment_method_id"]
nothing_to_undo = "a lookup"
[[steps.parallel]]
command = "authorize_payment"
send = ["customer_id", "amount_cents"]
receive = ["payment_id"]
compensation = { command = "revert_payment", send = ["payment_id"] }
"#;

#[test]
fn a_parallel_group_becomes_consecutive_steps_of_one_group() {
    let def = load(&with_steps(&format!("{CREATE}{GROUP}"))).unwrap();
    assert_eq!(def.steps.len(), 3);
    assert_eq!(def.steps[1].group.as_deref(), Some("charge_and_look_up"));
    assert_eq!(def.stage(2), 1..3);
    assert_eq!(def.stage(0), 0..1);
}

#[test]
fn a_member_cannot_read_what_a_sibling_receives() {
    let group = GROUP.replace(
        "send = [\"customer_id\", \"amount_cents\"]",
        "send = [\"customer_id\", \"amount_cents\", \"payment_method_id\"]",
    );
    let err = problem(&with_steps(&format!("{CREATE}{group}")));
    assert!(
        err.contains("step authorize_payment") && err.contains("payment_method_id"),
        "{err}"
    );
}

#[test]
fn a_group_needs_a_name_and_two_members() {
    let unnamed = GROUP.replace("name = \"charge_and_look_up\"\n", "");
    assert!(problem(&with_steps(&unnamed)).contains("needs a name"));
    let one = &GROUP[..GROUP.rfind("[[steps.parallel]]").unwrap()];
    assert!(problem(&with_steps(one)).contains("two members"));
}

#[test]
fn a_folder_without_definitions_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = SagasSource::Dir(dir.path().into())
        .load(&topics(), Contract::built_in())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no saga definitions"), "{err}");
}

#[test]
fn two_files_with_one_version_name_both() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.toml"), with_steps(CREATE)).unwrap();
    std::fs::write(dir.path().join("b.toml"), with_steps(CREATE)).unwrap();
    let err = SagasSource::Dir(dir.path().into())
        .load(&topics(), Contract::built_in())
        .unwrap_err()
        .to_string();
    assert!(err.contains("a.toml") && err.contains("b.toml"), "{err}");
    // A second version is what deploying a change looks like: both load.
    std::fs::write(
        dir.path().join("b.toml"),
        with_steps(CREATE).replace("version = 1", "version = 2"),
    )
    .unwrap();
    let r = SagasSource::Dir(dir.path().into())
        .load(&topics(), Contract::built_in())
        .unwrap();
    assert_eq!(r.latest("ship").unwrap().version, 2);
    assert!(r.get("ship", 1).is_some());
}

/// A lookup, the charge that cannot be undone, then the confirmation.
const PIVOTED: &str = r#"
[[steps]]
command = "get_payment_info"
send = ["customer_id"]
receive = ["payment_method_id"]
nothing_to_undo = "a lookup"

[[steps]]
command = "authorize_payment"
send = ["customer_id", "amount_cents", "payment_method_id"]
receive = ["payment_id"]
pivot = true

[[steps]]
command = "update_order_status"
send = ["customer_id"]
args = { order_id = "o", status = "CREATED" }
"#;

#[test]
fn a_pivot_splits_the_saga_into_undoable_steps_and_retriable_ones() {
    let def = load(&with_steps(PIVOTED)).unwrap();
    assert_eq!(def.pivot, Some(1));
    use crate::saga::definition::Role;
    let roles: Vec<Role> = (0..3).map(|i| def.role(i)).collect();
    assert_eq!(roles, [Role::NothingToUndo, Role::Pivot, Role::Retriable]);
    assert!(!def.must_happen(0) && def.must_happen(1) && def.must_happen(2));
}

#[test]
fn a_step_without_compensation_before_the_pivot_is_refused_naming_it() {
    let err = problem(&with_steps(
        &PIVOTED.replace("nothing_to_undo = \"a lookup\"\n", ""),
    ));
    assert!(
        err.contains("step get_payment_info")
            && err.contains("before the pivot authorize_payment")
            && err.contains("nothing_to_undo"),
        "{err}"
    );
    // Without a pivot, every step is before it.
    let err = problem(&with_steps(
        "[[steps]]\ncommand = \"get_payment_info\"\nsend = [\"customer_id\"]\n",
    ));
    assert!(
        err.contains("step get_payment_info") && err.contains("without a pivot"),
        "{err}"
    );
    let err = problem(&with_steps(&PIVOTED.replace("\"a lookup\"", "\" \"")));
    assert!(err.contains("says why"), "{err}");
}

#[test]
fn a_compensation_after_the_pivot_or_on_it_is_refused() {
    let after = PIVOTED.replace(
        "args = { order_id = \"o\", status = \"CREATED\" }",
        "args = { order_id = \"o\", status = \"CREATED\" }\n\
         compensation = { command = \"cancel_order\", args = { order_id = \"o\" } }",
    );
    let err = problem(&with_steps(&after));
    assert!(
        err.contains("step update_order_status")
            && err.contains("after the pivot authorize_payment"),
        "{err}"
    );
    let on = PIVOTED.replace(
        "pivot = true",
        "pivot = true\ncompensation = { command = \"revert_payment\", send = [\"payment_id\"] }",
    );
    let err = problem(&with_steps(&on));
    assert!(
        err.contains("step authorize_payment") && err.contains("cannot be undone"),
        "{err}"
    );
    let noted = PIVOTED.replace(
        "status = \"CREATED\" }",
        "status = \"CREATED\" }\nnothing_to_undo = \"x\"",
    );
    assert!(problem(&with_steps(&noted)).contains("drop nothing_to_undo"));
}

#[test]
fn a_saga_has_one_pivot_outside_any_group() {
    let twice = PIVOTED.replace(
        "status = \"CREATED\" }",
        "status = \"CREATED\" }\npivot = true",
    );
    let err = problem(&with_steps(&twice));
    assert!(
        err.contains("step update_order_status") && err.contains("one pivot"),
        "{err}"
    );
    let grouped = GROUP.replace(
        "compensation = { command = \"revert_payment\", send = [\"payment_id\"] }",
        "pivot = true",
    );
    let err = problem(&with_steps(&format!("{CREATE}{grouped}")));
    assert!(
        err.contains("group charge_and_look_up") && err.contains("not part of a parallel group"),
        "{err}"
    );
}

#[test]
fn a_computed_field_names_a_known_function_and_is_not_client_input() {
    let computed = |line: &str, schema_amount: bool| {
        let head = HEAD.replace("saga = \"ship\"", &format!("saga = \"ship\"\n{line}"));
        let head = if schema_amount {
            head
        } else {
            head.replace("properties.amount_cents = { type = \"integer\" }\n", "")
        };
        format!("{head}\n{CREATE}")
    };
    let ok = load(&computed(
        "computed = { amount_cents = \"order_total\" }",
        false,
    ))
    .unwrap();
    assert_eq!(ok.computed["amount_cents"], "order_total");
    let err = problem(&computed("computed = { amount_cents = \"sum\" }", false));
    assert!(
        err.contains("computed amount_cents: no function \"sum\""),
        "{err}"
    );
    assert!(err.contains("order_total ("), "lists the functions: {err}");
    let err = problem(&computed(
        "computed = { amount_cents = \"order_total\" }",
        true,
    ));
    assert!(err.contains("the input schema declares it too"), "{err}");
    // Without the computed field nothing declares what create_order sends.
    let err = problem(&computed("", false));
    assert!(err.contains("`amount_cents`"), "{err}");
}

#[test]
fn a_step_may_not_receive_a_field_the_input_sets() {
    let head = HEAD.replace(
        "properties.order_details = { type = \"object\" }",
        "properties.order_details = { type = \"object\" }\nproperties.order_id = { type = \"string\" }",
    );
    let err = problem(&format!("{head}\n{CREATE}"));
    assert!(
        err.contains("step create_order")
            && err.contains("receives `order_id`, which the input declares"),
        "{err}"
    );
}
