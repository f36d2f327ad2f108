//! The OpenAPI 3.1 document of this instance's API, served at `/openapi.json`, and Swagger UI at
//! `/docs` (its files are inside the binary: nothing is fetched).
//!
//! Generated, never written by hand: each operation comes from its handler's `#[utoipa::path]`
//! and the types it answers with; who may call it comes from the route's declared [`Access`]
//! (as bearer security when this instance checks tokens); each saga type gets its own start path
//! with the input JSON Schema of its definition. A test fails when a declared route is missing.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Map, Value};
use utoipa::OpenApi;

use super::auth::{Access, Declared};
use super::AppState;
use crate::saga::Registry;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Saga orchestrator",
        description = "Starts sagas, shows where they are, follows them live, and steers them \
                       (cancel, retry). Errors are JSON: `{\"success\": false, \"error\": \"...\"}`."
    ),
    paths(
        super::orders::create_order,
        super::start::start_saga,
        super::sagas::list_sagas,
        super::sagas::get_saga,
        super::sagas::cancel_saga,
        super::sagas::retry_saga,
        super::events::all_events,
        super::events::saga_events,
        super::types::list_types,
        super::types::get_type,
        super::dead_letters::list,
        super::dead_letters::republish,
        super::health::health,
        super::health::livez,
        super::health::readyz,
        super::health::metrics,
        super::health::asyncapi,
        openapi_json,
    ),
    components(schemas(super::error::ErrorBody, super::error::ConflictBody, super::events::ChangeView)),
    tags(
        (name = "orders", description = "CampusG's create-order front"),
        (name = "sagas", description = "Sagas of any type: start, read, cancel, retry"),
        (name = "events", description = "Live updates as Server-Sent Events"),
        (name = "saga types", description = "The definitions this instance runs"),
        (name = "dead letters", description = "Messages set aside (operator)"),
        (name = "operations", description = "Probes, metrics and the message contract (no token)"),
    )
)]
struct ApiDoc;

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    summary = "This document",
    responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
pub(super) async fn openapi_json(State(app): State<AppState>) -> Json<Value> {
    // The same for the instance's life (its definitions and its tokens are fixed at start):
    // built on first request, not per request.
    let doc = app.openapi.get_or_init(|| {
        document(
            &app.sagas.registry,
            super::routes(&app.sagas.registry).declared(),
            app.auth.is_on(),
        )
    });
    Json(doc.clone())
}

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// The document: every route of `declared`, each saga type's start path, and bearer security on
/// the guarded routes when `tokens` are checked.
pub fn document(registry: &Registry, declared: &[Declared], tokens: bool) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    let mut out = Map::new();
    for d in declared {
        let method = d.method.as_str().to_ascii_lowercase();
        // Routes served under /api as well (CampusG's prefix) are the same operations.
        let (base, prefix) = match d.path.strip_prefix("/api") {
            Some(rest) => (rest, "api_"),
            None => (d.path.as_str(), ""),
        };
        // A saga type's own start path: the generic start, with the type's input schema.
        let typed = base
            .strip_prefix("/sagas/")
            .and_then(|t| registry.latest(t))
            .filter(|_| method == "post");
        let template = if typed.is_some() {
            "/sagas/{saga_id}"
        } else {
            base
        };
        let Some(mut operation) = paths.get(template).and_then(|p| p.get(&method)).cloned() else {
            continue;
        };
        if let Some(def) = typed {
            let t = &def.saga_type;
            operation["operationId"] = json!(format!("start_{t}"));
            operation["summary"] = json!(format!("Start a {t} saga: {}", def.description));
            if let Some(params) = operation["parameters"].as_array_mut() {
                params.retain(|p| p["in"] != "path");
            }
            operation["requestBody"]["content"]["application/json"]["schema"] =
                def.input_schema.clone();
            operation["requestBody"]["description"] = json!(format!("The input of {t}"));
            if let Some(r) = operation["responses"].as_object_mut() {
                r.remove("404");
            }
        }
        if let Some(id) = operation["operationId"].as_str() {
            operation["operationId"] = json!(format!("{prefix}{id}"));
        }
        secure(&mut operation, d.access, tokens);
        if d.path == "/orders" || d.path == "/api/orders" {
            if let Some(def) = registry.latest("create_order") {
                operation["requestBody"]["content"]["application/json"]["schema"] =
                    def.input_schema.clone();
            }
        }
        out.entry(d.path.clone())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|p| p.insert(method.clone(), operation.clone()));
    }
    // Path parameters shared by every method of a path stay on each operation.
    for p in out.values_mut() {
        if let Some(p) = p.as_object_mut() {
            p.retain(|k, _| METHODS.contains(&k.as_str()));
            for op in p.values_mut() {
                exact_parameters(op);
                event_streams(op);
            }
        }
    }
    doc["paths"] = Value::Object(out);
    if tokens {
        doc["components"]["securitySchemes"] = json!({
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A token of scope read, start or operator (API_TOKENS); each scope includes the ones before it"
            }
        });
    }
    doc
}

/// The parameters' schemas as the handlers check them, exactly: what a schema allows is taken,
/// what it does not is refused.
fn exact_parameters(operation: &mut Value) {
    let Some(params) = operation
        .get_mut("parameters")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for p in params {
        let schema = match p["name"].as_str().unwrap_or_default() {
            // Visible ASCII (and spaces, tabs) with something in it; at most 255.
            "Idempotency-Key" => json!({
                "type": "string", "minLength": 1, "maxLength": 255,
                "pattern": "^[\\t -~]*[!-~][\\t -~]*$"
            }),
            // Empty is none, as a client that has seen nothing sends it.
            "Last-Event-ID" => {
                json!({"type": "string", "pattern": optional(crate::store::CURSOR_PATTERN)})
            }
            "cursor" => {
                json!({"type": "string", "pattern": optional(super::sagas::PAGE_CURSOR_PATTERN)})
            }
            "status" => json!({"type": "string", "pattern": status_pattern()}),
            _ => continue,
        };
        p["schema"] = schema;
    }
}

/// `^(...)?$` of an anchored pattern: it, or nothing.
fn optional(pattern: &str) -> String {
    let inner = pattern.trim_start_matches('^').trim_end_matches('$');
    format!("^({inner})?$")
}

/// Any saga status, in any case, or empty (no filter).
fn status_pattern() -> String {
    let any_case = |s: &str| -> String {
        s.chars()
            .map(|c| match c {
                '_' => "_".to_string(),
                c => format!("[{}{}]", c, c.to_ascii_lowercase()),
            })
            .collect()
    };
    let statuses: Vec<String> = crate::saga::SagaStatus::ALL
        .iter()
        .map(|s| any_case(s.as_str()))
        .collect();
    format!("^({})?$", statuses.join("|"))
}

/// The events of an event stream, each as OpenAPI 3.1 describes one (`event`, `id`, `retry`,
/// `data`), with the JSON its `data` carries.
fn event_streams(operation: &mut Value) {
    // `pointer_mut`, not indexing: an index into a missing key would add it as null.
    let Some(ok) = operation.pointer_mut("/responses/200/content/text~1event-stream") else {
        return;
    };
    let data = |schema: &str| {
        json!({
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": { "$ref": format!("#/components/schemas/{schema}") }
        })
    };
    let event = |name: &str, schema: &str| {
        json!({
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": { "const": name },
                "id": { "type": "string", "pattern": crate::store::CURSOR_PATTERN },
                "retry": { "type": "integer" },
                "data": data(schema)
            }
        })
    };
    ok["schema"] = json!({
        "anyOf": [
            event("change", "ChangeView"),
            event("saga", "SagaView"),
            event("dropped", "ErrorBody"),
            // The first event: how long to wait before reconnecting, and nothing else.
            { "type": "object", "not": { "required": ["data"] } }
        ]
    });
}

/// Who may call `operation`: said in its description, and as bearer security with 401 and 403
/// answers when this instance checks tokens.
fn secure(operation: &mut Value, access: Access, tokens: bool) {
    let Access::Needs(scope) = access else {
        return;
    };
    let note = format!("Needs a token of scope `{}` or larger.", scope.as_str());
    operation["description"] = json!(match operation["description"].as_str() {
        Some(d) => format!("{d}\n\n{note}"),
        None => note,
    });
    if !tokens {
        return;
    }
    operation["security"] = json!([{ "bearer": [] }]);
    let error = json!({
        "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } }
    });
    if let Some(r) = operation["responses"].as_object_mut() {
        r.insert(
            "401".into(),
            json!({"description": "No valid bearer token", "content": error}),
        );
        r.insert(
            "403".into(),
            json!({"description": "The token's scope does not cover this", "content": error}),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let topics = platform::Topics::load(None).unwrap();
        crate::saga::SagasSource::BuiltIn
            .load(&topics, platform::Contract::built_in())
            .unwrap()
    }

    #[test]
    fn every_declared_route_is_in_the_document() {
        let r = registry();
        let routes = crate::http::routes(&r);
        let doc = document(&r, routes.declared(), true);
        assert_eq!(doc["openapi"], "3.1.0");
        for d in routes.declared() {
            let method = d.method.as_str().to_ascii_lowercase();
            let op = &doc["paths"][&d.path][&method];
            assert!(
                op.is_object(),
                "{} {} is not in the document",
                d.method,
                d.path
            );
            assert!(op["responses"].is_object(), "{} {}", d.method, d.path);
            let guarded = matches!(d.access, Access::Needs(_));
            assert_eq!(
                op["security"].is_array(),
                guarded,
                "{} {}: security as declared",
                d.method,
                d.path
            );
        }
        let ids: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|p| p.as_object().unwrap().values())
            .map(|op| op["operationId"].as_str().unwrap())
            .collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "operation ids are unique: {ids:?}");
    }

    #[test]
    fn each_saga_type_starts_with_its_own_input_schema() {
        let r = registry();
        let doc = document(&r, crate::http::routes(&r).declared(), false);
        for def in r.types() {
            let path = format!("/sagas/{}", def.saga_type);
            let schema = &doc["paths"][&path]["post"]["requestBody"]["content"]["application/json"]
                ["schema"];
            assert_eq!(schema, &def.input_schema, "{path}");
        }
        let orders = &doc["paths"]["/orders"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"];
        assert_eq!(orders, &r.latest("create_order").unwrap().input_schema);
        // Without tokens checked, nothing claims to need one.
        assert!(doc["components"]["securitySchemes"].is_null());
        let start = &doc["paths"]["/sagas/{saga_id}"]["post"];
        let headers: Vec<&str> = start["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["in"] == "header")
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(headers, ["Idempotency-Key"]);
        let created = &start["responses"]["202"]["headers"];
        assert!(created["Location"].is_object() && created["idempotent-replayed"].is_object());
        assert!(doc["paths"]["/sagas"]["get"]["responses"]["200"]["headers"]["Link"].is_object());
    }
}
