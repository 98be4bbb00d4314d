//! Contract §6 schema registry: JSON Schema per event type, BACKWARD compatibility,
//! validation of appends with the JSON pointer of each fault, `metadata.schema_version`.

mod support;

use cairn_testkit::Backend;
use serde_json::{Value, json};
use support::TestServer;

cairn_testkit::backend_tests!(schemas_validate_appends_and_evolve_only_backward_compatibly,);

#[allow(clippy::needless_pass_by_value)] // call sites read better with `json!(..)` inline
fn entry(data: Value) -> Value {
    json!({"events": [{"aggregate_type": "Ledger", "event_type": "LedgerEntry", "data": data}]})
}

async fn schemas_validate_appends_and_evolve_only_backward_compatibly(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (status, list) = s.get("/admin/schemas").await;
    assert_eq!(status, 200);
    assert!(ledger_entry(&list).is_none(), "only the domain's schemas at start: {list}");
    let v1 = json!({
        "type": "object",
        "required": ["amount"],
        "properties": {"amount": {"type": "number"}, "kind": {"enum": ["debit", "credit"]}}
    });
    let put = |version: u32, schema: Value| {
        let (client, url) = (s.client.clone(), s.url("/admin/schemas/LedgerEntry"));
        async move {
            let r = client
                .put(url)
                .json(&json!({"version": version, "schema": schema}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(put(1, v1.clone()).await.0, 200);
    assert_eq!(put(1, v1.clone()).await.0, 200, "re-registering the same version is idempotent");

    // Appends are validated against the current version, with pointers to the faults.
    let (status, err) =
        s.post("/streams/ledger-1", &entry(json!({"amount": "ten", "kind": "gift"}))).await;
    assert_eq!((status, err["error"].clone()), (422, json!("validation_failed")), "{err}");
    let pointers: Vec<&str> =
        err["errors"].as_array().unwrap().iter().map(|e| e["pointer"].as_str().unwrap()).collect();
    assert!(pointers.contains(&"/amount") && pointers.contains(&"/kind"), "{err}");
    assert_eq!(s.get("/streams/ledger-1").await.0, 404, "nothing stored");
    assert_eq!(s.post("/streams/ledger-1", &entry(json!({"amount": 10}))).await.0, 200);
    let (_, page) = s.get("/streams/ledger-1").await;
    assert_eq!(page["events"][0]["metadata"]["schema_version"], 1);

    // Breaking changes are refused with reasons.
    let mut required = v1.clone();
    required["required"] = json!(["amount", "currency"]);
    required["properties"]["currency"] = json!({"type": "string"});
    let mut retyped = v1.clone();
    retyped["properties"]["amount"] = json!({"type": "string"});
    let mut narrowed = v1.clone();
    narrowed["properties"]["kind"] = json!({"enum": ["debit"]});
    for (name, schema) in
        [("new required field", required), ("changed type", retyped), ("narrowed enum", narrowed)]
    {
        let (status, err) = put(2, schema).await;
        assert_eq!(
            (status, err["error"].clone()),
            (409, json!("schema_incompatible")),
            "{name}: {err}"
        );
        assert!(!err["reasons"].as_array().unwrap().is_empty(), "{name}");
    }
    assert_eq!(put(3, v1.clone()).await.1["error"], "version_conflict");
    assert_eq!(put(2, json!({"type": 5})).await.0, 400);

    // Adding an optional field is accepted; old events stay valid; new ones carry v2.
    let mut optional = v1.clone();
    optional["properties"]["memo"] = json!({"type": "string"});
    let mut widened = optional.clone();
    widened["properties"]["kind"] = json!({"enum": ["debit", "credit", "refund"]});
    assert_eq!(put(2, optional).await.0, 200);
    assert_eq!(put(3, widened).await.0, 200, "a widened enum is compatible");
    assert_eq!(
        s.post("/streams/ledger-1", &entry(json!({"amount": 5, "memo": "x", "kind": "refund"})))
            .await
            .0,
        200
    );
    let (_, page) = s.get("/streams/ledger-1").await;
    assert_eq!(page["events"][1]["metadata"]["schema_version"], 3);
    let (_, list) = s.get("/admin/schemas").await;
    let entry = ledger_entry(&list).unwrap();
    assert_eq!(entry["version"], json!(3));
    assert_eq!(entry["versions"], json!([1, 2, 3]));
}

fn ledger_entry(list: &Value) -> Option<&Value> {
    list.as_array()?.iter().find(|e| e["event_type"] == "LedgerEntry")
}
