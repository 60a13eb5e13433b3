//! Services → model services: ClusterIP, ports (numbered or named target ports), selector.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{ConvertError, FieldIssue, ObjectRef, name_of, namespace_of, port_number, protocol};
use crate::model::{self, ServicePort, TargetPort};

impl TryFrom<&Service> for model::Service {
    type Error = ConvertError;

    fn try_from(svc: &Service) -> Result<Self, ConvertError> {
        let obj = ObjectRef::new("Service", &svc.metadata);
        let namespace = namespace_of(&obj)?;
        let name = name_of(&obj)?;
        let spec = svc
            .spec
            .as_ref()
            .ok_or_else(|| obj.err("spec", "missing"))?;
        let cluster_ip = cluster_ip(spec)
            .map_err(|e| obj.issue(e))?
            .ok_or_else(|| obj.err("spec.clusterIP", "missing: no address allocated"))?;
        Ok(model::Service {
            namespace,
            name,
            cluster_ip,
            ports: service_ports(spec).map_err(|e| obj.issue(e))?,
            selector: spec
                .selector
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            annotations: svc
                .metadata
                .annotations
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        })
    }
}

/// `spec.type` and `spec.clusterIP`: a ClusterIP service, with its address if one is set.
pub fn cluster_ip(spec: &ServiceSpec) -> Result<Option<Ipv4Addr>, FieldIssue> {
    if let Some(t) = spec.type_.as_deref()
        && t != "ClusterIP"
    {
        return Err(FieldIssue::new(
            "spec.type",
            format!("{t} is not supported by the lab; only ClusterIP is"),
        ));
    }
    match spec.cluster_ip.as_deref() {
        None | Some("") => Ok(None),
        Some("None") => Err(FieldIssue::new(
            "spec.clusterIP",
            "headless services are not supported by the lab yet",
        )),
        Some(ip) => ip.parse().map(Some).map_err(|_| {
            FieldIssue::new("spec.clusterIP", format!("{ip:?} is not an IPv4 address"))
        }),
    }
}

/// `spec.ports`: at least one; a missing `targetPort` is the port itself.
pub fn service_ports(spec: &ServiceSpec) -> Result<Vec<ServicePort>, FieldIssue> {
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let field = format!("spec.ports[{i}]");
        let port = port_number(&format!("{field}.port"), p.port)?;
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => {
                TargetPort::Number(port_number(&format!("{field}.targetPort"), *n)?)
            }
            Some(IntOrString::String(s)) => TargetPort::Name(s.clone()),
        };
        ports.push(ServicePort {
            name: p.name.clone(),
            port,
            target_port,
            protocol: protocol(&format!("{field}.protocol"), p.protocol.as_deref())?,
        });
    }
    if ports.is_empty() {
        return Err(FieldIssue::new(
            "spec.ports",
            "a ClusterIP service needs at least one port",
        ));
    }
    Ok(ports)
}
