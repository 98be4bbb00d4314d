//! The OpenAPI document's side of #16: a bearer security scheme, required by every route
//! but the public ones, whose `401` and `403` answers are documented on each.

use serde_json::{Value, json};

use crate::module::{Permission, RouteInfo};

/// The security scheme's name in the document.
pub const SCHEME: &str = "bearer";

/// Adds the bearer scheme to `doc` (the assembled document as JSON), required globally and
/// lifted on each public route; adds `401` and `403` to every other route.
pub(crate) fn secure(doc: &mut Value, routes: &[RouteInfo]) {
    let error = json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}});
    if let Some(doc) = doc.as_object_mut() {
        doc.insert("security".to_owned(), json!([{ SCHEME: [] }]));
        let components = doc.entry("components").or_insert_with(|| json!({}));
        if let Some(components) = components.as_object_mut() {
            components.insert(
                "securitySchemes".to_owned(),
                json!({ SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token (`cairn tokens create`) or the bootstrap admin token (`cairn serve --admin-token-file`). A server on a loopback address may run without auth (then no token is needed)."
                }}),
            );
        }
    }
    for route in routes {
        let method = route.method.as_str().to_ascii_lowercase();
        let Some(operation) = doc
            .get_mut("paths")
            .and_then(|p| p.get_mut(&route.path))
            .and_then(|p| p.get_mut(&method))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        if route.permission == Permission::Public {
            operation.insert("security".to_owned(), json!([]));
            continue;
        }
        let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) else {
            continue;
        };
        responses.entry("401").or_insert_with(|| {
            json!({
                "description": "`unauthorized`: no bearer token, or an unknown or revoked one",
                "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
                "content": error.clone(),
            })
        });
        responses.entry("403").or_insert_with(|| {
            json!({
                "description": "`forbidden`: the token's role does not allow this route",
                "content": error.clone(),
            })
        });
    }
}
