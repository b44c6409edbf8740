//! `examples/no-hostnetwork-podcr.yaml`: the ValidatingAdmissionPolicy that keeps hostNetwork
//! pods off podcr on containerd versions that crash on them. No API server runs here, so the
//! policy's own CEL expression, read from the example file, is evaluated with a CEL interpreter
//! against pod objects, the way the API server binds `object` for a CREATE.

use anyhow::{ensure, Context, Result};
use cel_interpreter::{Context as CelContext, Program, Value};
use serde::Deserialize;

fn example() -> Result<Vec<serde_json::Value>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/no-hostnetwork-podcr.yaml");
    let text = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| serde_json::Value::deserialize(doc).context("parse a YAML document"))
        .collect()
}

fn policy() -> Result<(Vec<String>, serde_json::Value)> {
    let docs = example()?;
    let vap = docs
        .iter()
        .find(|d| d["kind"] == "ValidatingAdmissionPolicy")
        .context("no ValidatingAdmissionPolicy in the example")?;
    let expressions = vap["spec"]["validations"]
        .as_array()
        .context("no validations")?
        .iter()
        .map(|v| v["expression"].as_str().map(str::to_string).context("validation without expression"))
        .collect::<Result<Vec<_>>>()?;
    Ok((expressions, vap.clone()))
}

/// Whether the policy admits `pod` (every validation true), as the API server decides it.
fn admits(expressions: &[String], pod: &serde_json::Value) -> Result<bool> {
    let mut ctx = CelContext::default();
    ctx.add_variable("object", pod.clone()).context("bind object")?;
    for expr in expressions {
        let program = Program::compile(expr).map_err(|e| anyhow::anyhow!("compile {expr:?}: {e}"))?;
        match program.execute(&ctx).map_err(|e| anyhow::anyhow!("evaluate {expr:?}: {e}"))? {
            Value::Bool(true) => {}
            Value::Bool(false) => return Ok(false),
            other => anyhow::bail!("{expr:?} returned {other:?}, not a bool"),
        }
    }
    Ok(true)
}

fn pod(spec: serde_json::Value) -> serde_json::Value {
    let mut spec = spec;
    spec["containers"] = serde_json::json!([{ "name": "app", "image": "busybox" }]);
    serde_json::json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "p" }, "spec": spec })
}

#[test]
fn the_policy_refuses_host_network_podcr_pods_and_admits_the_rest() -> Result<()> {
    let (expressions, vap) = policy()?;
    ensure!(!expressions.is_empty(), "the policy validates nothing");
    ensure!(
        vap["spec"]["matchConstraints"]["resourceRules"][0]["resources"][0] == "pods",
        "the policy does not match pods: {vap}"
    );
    let docs = example()?;
    let binding = docs.iter().find(|d| d["kind"] == "ValidatingAdmissionPolicyBinding").context("no binding")?;
    ensure!(binding["spec"]["policyName"] == vap["metadata"]["name"], "the binding names another policy");
    ensure!(binding["spec"]["validationActions"][0] == "Deny", "the binding does not deny: {binding}");

    let refused = pod(serde_json::json!({ "runtimeClassName": "podcr", "hostNetwork": true }));
    ensure!(!admits(&expressions, &refused)?, "a hostNetwork podcr pod was admitted");
    for (what, spec) in [
        ("podcr without hostNetwork", serde_json::json!({ "runtimeClassName": "podcr" })),
        ("podcr with hostNetwork false", serde_json::json!({ "runtimeClassName": "podcr", "hostNetwork": false })),
        (
            "hostNetwork with another runtime class",
            serde_json::json!({ "runtimeClassName": "runc", "hostNetwork": true }),
        ),
        ("hostNetwork with the default runtime", serde_json::json!({ "hostNetwork": true })),
        ("a plain pod", serde_json::json!({})),
    ] {
        ensure!(admits(&expressions, &pod(spec))?, "{what} was refused");
    }
    Ok(())
}
