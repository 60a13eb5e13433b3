//! Kubernetes YAML → lab objects: Namespace, Pod, Deployment and Service, validated at the border.
//!
//! The wire types are k8s-openapi's; they never leave this module and `sources::k8s`, whose field
//! checks (ports, protocols, services, policies) this module shares, so that whatever the lab
//! accepts its agents can convert. Every error names the file, the document, the object and the
//! field path.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodTemplateSpec, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::model::{Labels, NamedPort, ServicePort};
use crate::sources::k8s::{self, ConvertError, FieldIssue, labels_of, valid_dns_label};

/// A manifest that cannot be used; says where and why.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{file}: cannot read")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: document {doc}: {message}")]
    Yaml {
        file: String,
        doc: usize,
        message: String,
    },
    #[error(transparent)]
    Invalid(Box<InvalidField>),
}

/// A field of an object that is wrong, and where it is.
#[derive(Debug, thiserror::Error)]
#[error("{file}: document {doc} ({kind} {name}): {field}: {reason}")]
pub struct InvalidField {
    pub file: String,
    pub doc: usize,
    pub kind: String,
    pub name: String,
    pub field: String,
    pub reason: String,
}

/// Where an object came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub file: String,
    pub doc: usize,
}

/// A container of a pod, reduced to what the lab runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    /// `command` followed by `args`; empty runs the built-in echo workload.
    pub argv: Vec<String>,
    pub ports: Vec<NamedPort>,
    pub env: Vec<(String, String)>,
}

/// A pod template: labels and containers, optionally pinned to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodTemplate {
    pub labels: Labels,
    pub node_name: Option<String>,
    pub containers: Vec<ContainerSpec>,
}

/// One object of a manifest, in the lab's own terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Object {
    Namespace {
        name: String,
        labels: Labels,
    },
    Pod {
        namespace: String,
        name: String,
        template: PodTemplate,
    },
    Deployment {
        namespace: String,
        name: String,
        replicas: u32,
        selector: Labels,
        template: PodTemplate,
    },
    Service {
        namespace: String,
        name: String,
        cluster_ip: Option<Ipv4Addr>,
        ports: Vec<ServicePort>,
        selector: Labels,
        annotations: Labels,
    },
    /// A CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy: validated, and
    /// the object as applied (with its namespace set), which is what the agents receive.
    Policy {
        policy: Box<crate::policy::Policy>,
        object: Box<serde_json::Value>,
    },
}

impl Object {
    /// Kind as Kubernetes spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Namespace { .. } => "Namespace",
            Object::Pod { .. } => "Pod",
            Object::Deployment { .. } => "Deployment",
            Object::Service { .. } => "Service",
            Object::Policy { policy, .. } => policy.kind.as_str(),
        }
    }

    /// `namespace/name`, or `name` for cluster-scoped kinds.
    pub fn key(&self) -> String {
        match self {
            Object::Namespace { name, .. } => name.clone(),
            Object::Pod {
                namespace, name, ..
            }
            | Object::Deployment {
                namespace, name, ..
            }
            | Object::Service {
                namespace, name, ..
            } => format!("{namespace}/{name}"),
            Object::Policy { policy, .. } => policy.key(),
        }
    }
}

/// Reads every `.yaml`/`.yml`/`.json` file of `path` (a file or a directory, sorted by name).
pub fn load_path(path: &Path) -> Result<Vec<(Origin, Object)>, ManifestError> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|source| ManifestError::Read {
                file: path.display().to_string(),
                source,
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
            })
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Vec::new();
    for f in files {
        let file = f.display().to_string();
        let text = std::fs::read_to_string(&f).map_err(|source| ManifestError::Read {
            file: file.clone(),
            source,
        })?;
        out.extend(parse(&file, &text)?);
    }
    Ok(out)
}

/// Parses multi-document YAML; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Vec<(Origin, Object)>, ManifestError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc_no = i + 1;
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| ManifestError::Yaml {
            file: file.to_string(),
            doc: doc_no,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        let origin = Origin {
            file: file.to_string(),
            doc: doc_no,
        };
        out.push((origin.clone(), convert(&origin, value)?));
    }
    Ok(out)
}

struct Ctx<'a> {
    origin: &'a Origin,
    kind: String,
    name: String,
}

impl Ctx<'_> {
    fn issue(&self, i: FieldIssue) -> ManifestError {
        self.err(i.field, i.reason)
    }

    fn err(&self, field: impl Into<String>, reason: impl Into<String>) -> ManifestError {
        ManifestError::Invalid(Box::new(InvalidField {
            file: self.origin.file.clone(),
            doc: self.origin.doc,
            kind: self.kind.clone(),
            name: self.name.clone(),
            field: field.into(),
            reason: reason.into(),
        }))
    }
}

fn typed<T: serde::de::DeserializeOwned>(
    ctx: &Ctx<'_>,
    value: serde_yaml::Value,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ctx.err(path, e.into_inner().to_string())
    })
}

fn convert(origin: &Origin, value: serde_yaml::Value) -> Result<Object, ManifestError> {
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_string();
    let api = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_string();
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_string();
    let ctx = Ctx {
        origin,
        kind: if kind.is_empty() {
            "object".into()
        } else {
            kind.clone()
        },
        name: name.clone(),
    };
    if kind.is_empty() {
        return Err(ctx.err("kind", "missing"));
    }
    if crate::policy::is_policy_kind(&kind) {
        // Kept verbatim for the agents, with the namespace `kubectl apply` would give it.
        let object = serde_json::to_value(&value);
        let policy = k8s::policy_from(value).map_err(|e| match e {
            ConvertError::Field { field, reason, .. } => ctx.err(field, reason),
            other => ctx.err("kind", other.to_string()),
        })?;
        let mut object = object.map_err(|e| ctx.err("", e.to_string()))?;
        if let (Some(ns), Some(meta)) = (&policy.namespace, object.get_mut("metadata"))
            && let Some(meta) = meta.as_object_mut()
        {
            meta.insert("namespace".into(), ns.clone().into());
        }
        return Ok(Object::Policy {
            policy: Box::new(policy),
            object: Box::new(object),
        });
    }
    let expected_api = match kind.as_str() {
        "Namespace" | "Pod" | "Service" => "v1",
        "Deployment" => "apps/v1",
        other => {
            return Err(ctx.err(
                "kind",
                format!(
                    "{other} is not supported by the lab (supported: Namespace, Pod, Deployment, Service, CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy)"
                ),
            ));
        }
    };
    if api != expected_api {
        return Err(ctx.err(
            "apiVersion",
            format!("{kind} needs apiVersion {expected_api}, not {api:?}"),
        ));
    }
    if !valid_dns_label(&name) {
        return Err(ctx.err(
            "metadata.name",
            format!("{name:?} must be a DNS label: 1-63 lowercase letters, digits or '-'"),
        ));
    }
    match kind.as_str() {
        "Namespace" => {
            let ns: Namespace = typed(&ctx, value)?;
            let mut labels = labels_of(&ns.metadata);
            labels.insert("kubernetes.io/metadata.name".into(), name.clone());
            Ok(Object::Namespace { name, labels })
        }
        "Pod" => {
            let pod: Pod = typed(&ctx, value)?;
            let namespace = namespace_of(&ctx, &pod.metadata)?;
            let spec = pod.spec.ok_or_else(|| ctx.err("spec", "missing"))?;
            let template = template_from(&ctx, "spec", labels_of(&pod.metadata), spec)?;
            Ok(Object::Pod {
                namespace,
                name,
                template,
            })
        }
        "Deployment" => {
            let d: Deployment = typed(&ctx, value)?;
            let namespace = namespace_of(&ctx, &d.metadata)?;
            let spec = d.spec.ok_or_else(|| ctx.err("spec", "missing"))?;
            let replicas = match spec.replicas {
                None => 1,
                Some(r) => u32::try_from(r)
                    .map_err(|_| ctx.err("spec.replicas", format!("{r} is negative")))?,
            };
            if spec.selector.match_expressions.is_some() {
                return Err(ctx.err(
                    "spec.selector.matchExpressions",
                    "not supported by the lab; use matchLabels",
                ));
            }
            let selector: Labels = spec
                .selector
                .match_labels
                .unwrap_or_default()
                .into_iter()
                .collect();
            let PodTemplateSpec {
                metadata,
                spec: pod_spec,
            } = spec.template;
            let labels = metadata.as_ref().map(labels_of).unwrap_or_default();
            if selector.is_empty() || selector.iter().any(|(k, v)| labels.get(k) != Some(v)) {
                return Err(ctx.err(
                    "spec.selector",
                    "`selector` does not match template `labels`",
                ));
            }
            let pod_spec = pod_spec.ok_or_else(|| ctx.err("spec.template.spec", "missing"))?;
            let template = template_from(&ctx, "spec.template.spec", labels, pod_spec)?;
            Ok(Object::Deployment {
                namespace,
                name,
                replicas,
                selector,
                template,
            })
        }
        "Service" => {
            let svc: Service = typed(&ctx, value)?;
            let namespace = namespace_of(&ctx, &svc.metadata)?;
            let spec = svc.spec.ok_or_else(|| ctx.err("spec", "missing"))?;
            let cluster_ip = k8s::cluster_ip(&spec).map_err(|e| ctx.issue(e))?;
            let ports = k8s::service_ports(&spec).map_err(|e| ctx.issue(e))?;
            Ok(Object::Service {
                namespace,
                name,
                cluster_ip,
                ports,
                selector: spec.selector.unwrap_or_default().into_iter().collect(),
                annotations: svc
                    .metadata
                    .annotations
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            })
        }
        _ => Err(ctx.err("kind", "unsupported")),
    }
}

fn template_from(
    ctx: &Ctx<'_>,
    field: &str,
    labels: Labels,
    spec: k8s_openapi::api::core::v1::PodSpec,
) -> Result<PodTemplate, ManifestError> {
    if spec.containers.is_empty() {
        return Err(ctx.err(
            format!("{field}.containers"),
            "at least one container is required",
        ));
    }
    let mut containers = Vec::new();
    for (i, c) in spec.containers.into_iter().enumerate() {
        containers.push(container_from(ctx, &format!("{field}.containers[{i}]"), c)?);
    }
    Ok(PodTemplate {
        labels,
        node_name: spec.node_name,
        containers,
    })
}

fn container_from(
    ctx: &Ctx<'_>,
    field: &str,
    c: Container,
) -> Result<ContainerSpec, ManifestError> {
    let ports = k8s::container_ports(field, &c).map_err(|e| ctx.issue(e))?;
    let mut argv = c.command.unwrap_or_default();
    argv.extend(c.args.unwrap_or_default());
    let env = c
        .env
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value.unwrap_or_default()))
        .collect();
    Ok(ContainerSpec {
        name: c.name,
        argv,
        ports,
        env,
    })
}

fn namespace_of(ctx: &Ctx<'_>, meta: &ObjectMeta) -> Result<String, ManifestError> {
    let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
    if !valid_dns_label(&ns) {
        return Err(ctx.err(
            "metadata.namespace",
            format!("{ns:?} is not a valid namespace name"),
        ));
    }
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, TargetPort};

    const DEMO: &str = include_str!("../../../deploy/lab/demo.yaml");

    #[test]
    fn demo_manifest_parses() {
        let objs = parse("demo.yaml", DEMO).unwrap();
        let kinds: Vec<_> = objs.iter().map(|(_, o)| o.kind()).collect();
        assert_eq!(kinds, ["Namespace", "Deployment", "Deployment", "Service"]);
        match &objs[3].1 {
            Object::Service {
                ports, selector, ..
            } => {
                assert_eq!(ports[0].port, 80);
                assert_eq!(selector.get("app").map(String::as_str), Some("backend"));
            }
            o => panic!("unexpected {o:?}"),
        }
    }

    #[test]
    fn errors_name_file_document_object_and_field() {
        let y = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: a}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n      - name: c\n        ports:\n        - containerPort: 70000\n";
        let e = parse("m.yaml", y).unwrap_err().to_string();
        assert_eq!(
            e,
            "m.yaml: document 2 (Deployment web): spec.template.spec.containers[0].ports[0].containerPort: 70000 is not a port number (1-65535)"
        );
    }

    #[test]
    fn type_errors_carry_the_field_path() {
        let y = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports:\n  - port: eighty\n";
        let e = parse("s.yaml", y).unwrap_err().to_string();
        assert!(
            e.starts_with("s.yaml: document 1 (Service s): spec.ports[0].port:"),
            "{e}"
        );
    }

    #[test]
    fn unsupported_kind_and_selector_mismatch_are_rejected() {
        let y = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n";
        assert!(
            parse("f", y)
                .unwrap_err()
                .to_string()
                .contains("ConfigMap is not supported")
        );
        let y = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  selector: {matchLabels: {app: x}}\n  template:\n    metadata: {labels: {app: y}}\n    spec: {containers: [{name: c}]}\n";
        assert!(
            parse("f", y)
                .unwrap_err()
                .to_string()
                .contains("spec.selector")
        );
    }

    #[test]
    fn service_defaults() {
        let y = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: n}\nspec:\n  selector: {app: a}\n  ports:\n  - {port: 80, targetPort: http}\n  - {port: 53, protocol: UDP}\n";
        let objs = parse("f", y).unwrap();
        let Object::Service { ports, .. } = &objs[0].1 else {
            panic!()
        };
        assert_eq!(ports[0].target_port, TargetPort::Name("http".into()));
        assert_eq!(ports[1].target_port, TargetPort::Number(53));
        assert_eq!(ports[1].protocol, Protocol::Udp);
    }
}
