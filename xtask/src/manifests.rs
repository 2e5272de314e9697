//! `cargo xtask test`'s check of k8s/: both variants are rendered with `kubectl kustomize`
//! and every document is validated offline and strictly (an unknown field fails) against
//! the Kubernetes API schemas bundled by kubernetes-validate, the PodMonitor against
//! prometheus-operator's CRD (k8s/schemas/) with jsonschema. Documents broken on purpose
//! must be rejected, so the validator cannot pass by checking nothing; and the agent
//! container's security settings must be what [`DAEMONSET_CAPABILITIES`] says.

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// The capabilities the DaemonSet adds to the agent container after dropping ALL, in the
/// order of k8s/base/daemonset.yaml: the kernel tests run the agent with exactly these.
pub const DAEMONSET_CAPABILITIES: &[&str] = &["SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"];

/// The validators, pinned; setup.rs installs them with pip.
pub const PYTHON_PACKAGES: [(&str, &str); 2] = [("kubernetes-validate", "1.37.0"), ("jsonschema", "4.26.0")];

/// The Kubernetes versions whose API the manifests must fit: the oldest supported
/// (`appArmorProfile` needs 1.30) and the newest kubernetes-validate bundles.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.31", "1.37"];

/// The kustomizations rendered, from the workspace root.
const VARIANTS: [&str; 2] = ["k8s", "k8s/overlays/protected"];

/// CRDs whose schemas validate the custom resources, from the workspace root.
const CRDS: [&str; 1] = ["k8s/schemas/monitoring.coreos.com_podmonitors.yaml"];

/// Labels every rendered object carries.
const LABELS: [(&str, &str); 2] =
    [("app.kubernetes.io/name", "mcp-observe"), ("app.kubernetes.io/component", "agent")];

/// Reads {versions, crds, variants: [{name, yaml}]} on stdin; writes the documents, each
/// with its problems, and the self-test's broken documents with theirs, as JSON.
const VALIDATOR: &str = r##"
import copy, json, sys
import importlib.metadata as metadata

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate import utils
from referencing import Registry, Resource

DEFINITIONS = "https://kubernetes.io/api/_definitions.json"
request = json.load(sys.stdin)
versions = request["versions"]


def bundled(version):
    """The schema directory of a Kubernetes minor version, which must be bundled."""
    found = [v for v in utils.all_versions() if utils.major_minor(v) == version]
    if not found:
        sys.exit(f"kubernetes-validate {metadata.version('kubernetes-validate')} has no schemas "
                 f"for Kubernetes {version} (it has {', '.join(utils.all_versions())})")
    return f"kubernetes-json-schema/v{found[-1]}-local-strict"


def strict(schema):
    """Unknown fields fail, as they do with kubectl's default --validate=strict for a CRD
    with a structural schema; OpenAPI's `nullable` as JSON Schema says it."""
    if schema.get("nullable") and isinstance(schema.get("type"), str):
        schema["type"] = [schema["type"], "null"]
    properties = schema.get("properties")
    if properties is not None:
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
        for child in properties.values():
            strict(child)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            strict(schema[key])


# Custom resources: kind -> (CRD release, per Kubernetes version a validator whose
# metadata is Kubernetes' own ObjectMeta, strict).
custom = {}
for path in request["crds"]:
    with open(path) as f:
        crd = yaml.safe_load(f)
    release = crd["metadata"].get("annotations", {}).get("operator.prometheus.io/version", "?")
    for served in crd["spec"]["versions"]:
        base = served["schema"]["openAPIV3Schema"]
        strict(base)
        validators = {}
        for version in versions:
            schema = copy.deepcopy(base)
            schema["properties"]["metadata"] = {
                "$ref": f"{DEFINITIONS}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
            definitions = utils.schema_contents(f"{bundled(version)}/_definitions.json", version)
            registry = Resource.from_contents(definitions) @ Registry()
            validators[version] = jsonschema.Draft202012Validator(schema, registry=registry)
        key = (f"{crd['spec']['group']}/{served['name']}", crd["spec"]["names"]["kind"])
        custom[key] = (f"{crd['metadata']['name']} {release}", validators)


def where(error):
    return ".".join(str(p) for p in error.absolute_path) or "(document)"


def check(doc):
    """Every problem with doc, each once, with the Kubernetes versions it arises in."""
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        return ["not a Kubernetes object (no apiVersion or kind)"]
    problems = {}
    key = (doc["apiVersion"], doc["kind"])
    for version in versions:
        if key in custom:
            found = [f"{where(e)}: {e.message}" for e in sorted(
                custom[key][1][version].iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]
        else:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                found = []
            except kubernetes_validate.ValidationError as e:
                found = [f"{where(e)}: {e.message}"]
            except kubernetes_validate.SchemaNotFoundError:
                found = [f"no schema for {doc['apiVersion']} {doc['kind']}: not a Kubernetes kind, "
                         "and no CRD for it in k8s/schemas/"]
        for problem in found:
            problems.setdefault(problem, []).append(version)
    return [f"{p} (Kubernetes {', '.join(v)})" for p, v in problems.items()]


def name(doc):
    return f"{doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}"


result = {"validator": {n: metadata.version(n) for n in ("kubernetes-validate", "jsonschema")},
          "crds": sorted(release for release, _ in custom.values()), "variants": [], "self_test": []}
for variant in request["variants"]:
    docs = [d for d in yaml.safe_load_all(variant["yaml"]) if d is not None]
    result["variants"].append({"name": variant["name"], "documents": [
        {"name": name(d), "document": d, "problems": check(d)} for d in docs]})

# Broken on purpose: each must be rejected, or the validator checks nothing.
docs = [d["document"] for d in result["variants"][0]["documents"]]
daemonset = next(d for d in docs if d["kind"] == "DaemonSet")
podmonitor = next(d for d in docs if d["kind"] == "PodMonitor")


def broken(what, doc, change):
    doc = copy.deepcopy(doc)
    change(doc)
    result["self_test"].append({"what": what, "problems": check(doc)})


broken('DaemonSet with hostPID: "yes"', daemonset,
       lambda d: d["spec"]["template"]["spec"].update(hostPID="yes"))
broken("DaemonSet with an unknown securityContext field", daemonset,
       lambda d: d["spec"]["template"]["spec"]["containers"][0]["securityContext"].update(privilegd=False))
broken("PodMonitor with an unknown endpoint field", podmonitor,
       lambda d: d["spec"]["podMetricsEndpoints"][0].update(intervall="15s"))
broken('PodMonitor with interval: "15 seconds"', podmonitor,
       lambda d: d["spec"]["podMetricsEndpoints"][0].update(interval="15 seconds"))
broken("PodMonitor with an unknown metadata field", podmonitor,
       lambda d: d["metadata"].update(lables={"a": "b"}))
broken("a kind no schema knows", {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "x"}},
       lambda d: None)
json.dump(result, sys.stdout)
"##;

pub fn validate() -> anyhow::Result<()> {
    let started = Instant::now();
    crate::setup::kubectl_with_kustomize()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("the workspace root")?;
    let variants = VARIANTS
        .iter()
        .map(|dir| Ok(json!({ "name": dir, "yaml": kustomize(&root.join(dir))? })))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let crds: Vec<_> = CRDS.iter().map(|crd| root.join(crd)).collect();
    let report =
        run_validator(&json!({ "versions": KUBERNETES_VERSIONS, "crds": crds, "variants": variants }))?;

    for (package, pinned) in PYTHON_PACKAGES {
        let found = report["validator"][package].as_str().unwrap_or("?");
        if found != pinned {
            bail!("{package} {found} is installed, the pinned version is {pinned}: run cargo xtask setup");
        }
    }
    let mut failures = Vec::new();
    let mut documents = 0;
    for variant in array(&report["variants"]) {
        let dir = variant["name"].as_str().unwrap_or("?");
        let mut has_daemonset = false;
        for document in array(&variant["documents"]) {
            documents += 1;
            let name = document["name"].as_str().unwrap_or("?");
            let object = &document["document"];
            let mut problems: Vec<String> =
                array(&document["problems"]).iter().map(|p| p.as_str().unwrap_or("?").to_owned()).collect();
            problems.extend(missing_labels(object));
            if name == "DaemonSet/mcp-observe" {
                problems.extend(agent_security(object));
                has_daemonset = true;
            }
            if problems.is_empty() {
                println!("{dir} {name} ok");
            } else {
                println!("{dir} {name} INVALID");
                for problem in problems {
                    println!("    {problem}");
                    failures.push(format!("{dir} {name}: {problem}"));
                }
            }
        }
        if !has_daemonset {
            failures.push(format!("{dir} renders no DaemonSet/mcp-observe"));
        }
    }
    let self_test = array(&report["self_test"]);
    if self_test.is_empty() {
        failures.push("the validator ran no self-test".to_owned());
    }
    for broken in self_test {
        let what = broken["what"].as_str().unwrap_or("?");
        match array(&broken["problems"]).first() {
            Some(problem) => println!("self-test: {what} rejected: {}", problem.as_str().unwrap_or("?")),
            None => failures.push(format!("self-test: {what} was accepted, so the validator checks nothing")),
        }
    }
    if !failures.is_empty() {
        bail!("k8s/ is not valid ({} problems):\n  {}", failures.len(), failures.join("\n  "));
    }
    println!(
        "manifests: {documents} documents of {} valid (kubernetes-validate {} strict for Kubernetes {}; {} \
         with jsonschema {}), agent capabilities {} = DAEMONSET_CAPABILITIES, {} broken documents rejected, \
         {:.1} s",
        VARIANTS.join(" and "),
        PYTHON_PACKAGES[0].1,
        KUBERNETES_VERSIONS.join(" and "),
        array(&report["crds"]).iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "),
        PYTHON_PACKAGES[1].1,
        DAEMONSET_CAPABILITIES.join(", "),
        self_test.len(),
        started.elapsed().as_secs_f64(),
    );
    Ok(())
}

fn kustomize(dir: &Path) -> anyhow::Result<String> {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .with_context(|| format!("running kubectl kustomize {}", dir.display()))?;
    if !output.status.success() {
        bail!(
            "kubectl kustomize {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    String::from_utf8(output.stdout).context("kubectl kustomize printed something that is not UTF-8")
}

fn run_validator(request: &Value) -> anyhow::Result<Value> {
    let mut child = Command::new("python3")
        .args(["-c", VALIDATOR])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting python3 for the manifest validator")?;
    // The validator reads all of its input before it writes anything.
    child.stdin.take().context("validator stdin")?.write_all(request.to_string().as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "the manifest validator failed (cargo xtask setup installs kubernetes-validate and jsonschema): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    serde_json::from_slice(&output.stdout).context("reading the manifest validator's report")
}

fn array(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

fn missing_labels(object: &Value) -> Vec<String> {
    let mut places = vec![("metadata.labels", &object["metadata"]["labels"])];
    if !object["spec"]["template"].is_null() {
        places.push(("spec.template.metadata.labels", &object["spec"]["template"]["metadata"]["labels"]));
    }
    let mut missing = Vec::new();
    for (place, labels) in places {
        for (key, value) in LABELS {
            if labels[key] != value {
                missing.push(format!("{place}: {key} is not {value}"));
            }
        }
    }
    missing
}

/// The agent container's privileges, against DAEMONSET_CAPABILITIES and the rest of what
/// k8s/README.md promises: host PIDs, no privileged mode, no escalation, read-only mounts.
fn agent_security(daemonset: &Value) -> Vec<String> {
    let pod = &daemonset["spec"]["template"]["spec"];
    let Some(agent) = array(&pod["containers"]).iter().find(|c| c["name"] == "mcp-observe") else {
        return vec!["no container named mcp-observe".to_owned()];
    };
    let context = &agent["securityContext"];
    let mut problems = Vec::new();
    let added: Vec<&str> = array(&context["capabilities"]["add"]).iter().filter_map(Value::as_str).collect();
    if added != DAEMONSET_CAPABILITIES {
        problems.push(format!(
            "the agent adds capabilities {added:?}, DAEMONSET_CAPABILITIES in xtask/src/manifests.rs says \
             {DAEMONSET_CAPABILITIES:?}"
        ));
    }
    let expected = [
        ("hostPID", &pod["hostPID"], json!(true)),
        ("securityContext.capabilities.drop", &context["capabilities"]["drop"], json!(["ALL"])),
        ("securityContext.privileged", &context["privileged"], json!(false)),
        ("securityContext.allowPrivilegeEscalation", &context["allowPrivilegeEscalation"], json!(false)),
        ("securityContext.readOnlyRootFilesystem", &context["readOnlyRootFilesystem"], json!(true)),
    ];
    for (field, found, wanted) in expected {
        if *found != wanted {
            problems.push(format!("the agent's {field} is {found}, not {wanted}"));
        }
    }
    for mount in array(&agent["volumeMounts"]) {
        if mount["readOnly"] != true {
            problems.push(format!("the agent's volume mount {} is not read-only", mount["mountPath"]));
        }
    }
    problems
}
