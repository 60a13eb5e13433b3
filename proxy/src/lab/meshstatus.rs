//! `strait clustermesh status` and `strait status`: what every agent of a cluster reports on its
//! admin socket, folded per remote cluster. The folding is pure; [`Lab::mesh_status`] gathers.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

use super::{Lab, LabError, agents, process};

/// Each node's agent `/status` answer (`None`: no answer), by node name.
pub type AgentAnswers = Vec<(String, Option<Value>)>;

/// A cluster's mesh as its agents see it.
#[derive(Debug, Clone, Serialize)]
pub struct MeshStatus {
    pub cluster: String,
    /// Where the cluster's mesh endpoint listens, when enabled.
    pub endpoint: Option<SocketAddr>,
    pub endpoint_running: bool,
    pub agents: usize,
    pub agents_answering: usize,
    pub remotes: Vec<RemoteSummary>,
    /// Enabled, endpoint up, every agent answering and every remote ready on every agent.
    pub ready: bool,
    /// Why it is not ready, one line each.
    pub problems: Vec<String>,
}

/// One remote cluster over all agents of the local cluster.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RemoteSummary {
    pub cluster: String,
    pub endpoint: Option<String>,
    /// Agents syncing this remote / connected to it / synced since connecting.
    pub configured: usize,
    pub connected: usize,
    pub ready: usize,
    /// What the agents' models hold of the remote (the least over the agents).
    pub nodes: usize,
    pub endpoints: usize,
    pub identities: usize,
    pub services: usize,
    /// Seconds since the most recent sync of any agent.
    pub last_sync_secs_ago: Option<f64>,
    /// Failed connections, summed over the agents.
    pub failures: u64,
    /// Agents serving the state they persisted before a restart, not synced since.
    pub restored: usize,
    /// Agents that withdrew the remote's state after the TTL.
    pub withdrawn: usize,
    /// Distinct last errors of the agents not ready.
    pub errors: Vec<String>,
}

/// Folds the agents' `/status` answers (`None`: no answer) of `cluster` into its mesh status;
/// `peers` are the remotes the cluster is connected to.
pub fn summarize(
    cluster: &str,
    endpoint: Option<(SocketAddr, bool)>,
    peers: &BTreeSet<String>,
    agents: &[(String, Option<Value>)],
    now: SystemTime,
) -> MeshStatus {
    let mut problems = Vec::new();
    let answering: Vec<(&str, &Value)> = agents
        .iter()
        .filter_map(|(n, v)| v.as_ref().map(|v| (n.as_str(), v)))
        .collect();
    match endpoint {
        None => problems.push(format!(
            "the cluster mesh is not enabled in cluster {cluster}: run `strait clustermesh enable --cluster {cluster}`"
        )),
        Some((addr, false)) => problems.push(format!(
            "the mesh endpoint of cluster {cluster} ({addr}) is not running: run `strait clustermesh enable --cluster {cluster}`"
        )),
        Some(_) => {}
    }
    for (n, v) in agents {
        if v.is_none() {
            problems.push(format!("agent {cluster}/{n} does not answer"));
        }
    }
    let mut remotes: BTreeMap<String, RemoteSummary> = peers
        .iter()
        .map(|p| {
            (
                p.clone(),
                RemoteSummary {
                    cluster: p.clone(),
                    ..Default::default()
                },
            )
        })
        .collect();
    let mut least: BTreeMap<String, [usize; 4]> = BTreeMap::new();
    for (_, v) in &answering {
        let model = &v["mesh"]["model"];
        for r in v["mesh"]["remotes"].as_array().into_iter().flatten() {
            let Some(name) = r["cluster"].as_str() else {
                continue;
            };
            let s = remotes
                .entry(name.to_string())
                .or_insert_with(|| RemoteSummary {
                    cluster: name.to_string(),
                    ..Default::default()
                });
            s.endpoint = r["endpoint"].as_str().map(str::to_string);
            s.configured += 1;
            let flag = |k: &str| r[k].as_bool() == Some(true);
            s.connected += usize::from(flag("connected"));
            s.ready += usize::from(flag("ready"));
            s.failures += r["failures"].as_u64().unwrap_or(0);
            s.restored += usize::from(flag("restored") && !flag("ready"));
            s.withdrawn += usize::from(flag("withdrawn"));
            if !flag("ready")
                && let Some(e) = r["last_error"].as_str()
                && !s.errors.iter().any(|x| x == e)
            {
                s.errors.push(e.to_string());
            }
            if let Some(secs) = r["last_sync"]["secs_since_epoch"].as_u64() {
                let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
                let ago = now.duration_since(at).unwrap_or_default().as_secs_f64();
                s.last_sync_secs_ago = Some(s.last_sync_secs_ago.map_or(ago, |a: f64| a.min(ago)));
            }
            let m = &model[name];
            let have = ["nodes", "endpoints", "identities", "services"]
                .map(|k| m[k].as_u64().unwrap_or(0) as usize);
            let l = least.entry(name.to_string()).or_insert(have);
            for i in 0..4 {
                l[i] = l[i].min(have[i]);
            }
        }
    }
    for (name, s) in &mut remotes {
        if let Some([nodes, endpoints, identities, services]) = least.get(name).copied() {
            (s.nodes, s.endpoints, s.identities, s.services) =
                (nodes, endpoints, identities, services);
        }
        let n = agents.len();
        if s.ready < n || s.configured < n {
            let mut line = format!(
                "{name}: {}/{n} configured, {}/{n} connected, {}/{n} ready",
                s.configured, s.connected, s.ready
            );
            if s.restored > 0 {
                line.push_str(&format!(
                    "; {}/{n} serving the state kept from before a restart",
                    s.restored
                ));
            }
            if s.withdrawn > 0 {
                line.push_str(&format!("; {}/{n} withdrew it after the TTL", s.withdrawn));
            }
            if let Some(e) = s.errors.first() {
                line.push_str(&format!("; last error: {e}"));
            }
            problems.push(line);
        }
    }
    MeshStatus {
        cluster: cluster.to_string(),
        endpoint: endpoint.map(|(a, _)| a),
        endpoint_running: endpoint.is_some_and(|(_, up)| up),
        agents: agents.len(),
        agents_answering: answering.len(),
        remotes: remotes.into_values().collect(),
        ready: problems.is_empty(),
        problems,
    }
}

impl Lab {
    /// Asks every agent of `cluster` and folds the answers (see [`summarize`]); also returns
    /// the raw answers for `strait status`.
    pub fn mesh_status(&self, cluster: &str) -> Result<(MeshStatus, AgentAnswers), LabError> {
        let st = self.require()?;
        let spec = st.topology.cluster(cluster).cloned().ok_or_else(|| {
            LabError::NotFound(format!(
                "cluster {cluster:?} is not in lab {}",
                self.paths().name
            ))
        })?;
        let answers: AgentAnswers = spec
            .nodes
            .iter()
            .map(|n| {
                let socket = self.paths().admin_socket(cluster, &n.name);
                (n.name.clone(), agents::status_blocking(&socket).ok())
            })
            .collect();
        let rec = st.mesh.get(cluster);
        let endpoint = rec.map(|r| (r.listen, r.pid.is_some_and(process::alive)));
        let peers = rec.map(|r| r.peers.clone()).unwrap_or_default();
        let status = summarize(cluster, endpoint, &peers, &answers, SystemTime::now());
        Ok((status, answers))
    }

    /// The lab's cluster names, in topology order.
    pub fn cluster_names(&self) -> Result<Vec<String>, LabError> {
        let st = self.require()?;
        Ok(st
            .topology
            .clusters
            .iter()
            .map(|c| c.name.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn agent(connected: bool, ready: bool, endpoints: u64, error: Option<&str>) -> Option<Value> {
        Some(json!({"mesh": {
            "remotes": [{"cluster": "c2", "endpoint": "198.18.0.12:32379", "connected": connected,
                "ready": ready, "failures": 1, "last_error": error,
                "last_sync": {"secs_since_epoch": 100, "nanos_since_epoch": 0}}],
            "model": {"c2": {"nodes": 2, "endpoints": endpoints, "identities": 3, "services": 1}},
        }}))
    }

    #[test]
    fn ready_only_when_every_agent_is_synced_and_errors_are_shown() {
        let addr: SocketAddr = "198.18.0.10:32379".parse().unwrap();
        let peers: BTreeSet<String> = ["c2".to_string()].into();
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(102);
        let both = [
            ("node-1".to_string(), agent(true, true, 4, None)),
            ("node-2".to_string(), agent(true, true, 4, None)),
        ];
        let s = summarize("c1", Some((addr, true)), &peers, &both, now);
        assert!(s.ready, "{:?}", s.problems);
        let r = &s.remotes[0];
        assert_eq!((r.configured, r.connected, r.ready), (2, 2, 2));
        assert_eq!(
            (r.nodes, r.endpoints, r.identities, r.services),
            (2, 4, 3, 1)
        );
        assert_eq!((r.failures, r.last_sync_secs_ago), (2, Some(2.0)));

        let refused = [
            ("node-1".to_string(), agent(true, true, 4, None)),
            (
                "node-2".to_string(),
                agent(false, false, 0, Some("TLS: the certificate was refused")),
            ),
        ];
        let s = summarize("c1", Some((addr, true)), &peers, &refused, now);
        assert!(!s.ready);
        assert_eq!(s.remotes[0].endpoints, 0, "the least over the agents");
        assert_eq!(
            s.problems,
            [
                "c2: 2/2 configured, 1/2 connected, 1/2 ready; last error: TLS: the certificate was refused"
            ]
        );

        // One agent restarted and serves what it kept; the other lost the remote past the TTL.
        let mut kept = agent(true, false, 4, None).unwrap();
        kept["mesh"]["remotes"][0]["restored"] = json!(true);
        let mut gone = agent(false, false, 0, Some("no answer from the mesh endpoint")).unwrap();
        gone["mesh"]["remotes"][0]["withdrawn"] = json!(true);
        let s = summarize(
            "c1",
            Some((addr, true)),
            &peers,
            &[("node-1".into(), Some(kept)), ("node-2".into(), Some(gone))],
            now,
        );
        assert_eq!((s.remotes[0].restored, s.remotes[0].withdrawn), (1, 1));
        assert_eq!(
            s.problems,
            [
                "c2: 2/2 configured, 1/2 connected, 0/2 ready; 1/2 serving the state kept from \
                 before a restart; 1/2 withdrew it after the TTL; last error: no answer from the \
                 mesh endpoint"
            ]
        );

        let s = summarize(
            "c1",
            None,
            &BTreeSet::new(),
            &[("node-1".into(), None)],
            now,
        );
        assert!(!s.ready);
        assert!(
            s.problems[0].contains("not enabled in cluster c1"),
            "{:?}",
            s.problems
        );
        assert_eq!(s.problems[1], "agent c1/node-1 does not answer");
    }
}
