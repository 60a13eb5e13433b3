//! Policies resolved against identities: per subject identity and direction, the entries that
//! apply, each with its peers as a set of identities. Answers per-flow verdicts (proxy, trace)
//! and feeds the kernel compiler.
//!
//! Semantics, as Cilium documents them: an endpoint selected by any policy for a direction is
//! default-deny there (unless every such policy turns `enableDefaultDeny` off); allow rules add
//! up; deny rules win; a port with L7 rules allows only matching requests, unless another rule
//! allows the same peer on that port at L4 only; the local host may always reach local pods.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::universe::{IdentityInfo, IdentityKind, Universe};
use crate::identity::{CLUSTER_LABEL, reserved};
use crate::model::http::{HttpRule, RequestInfo};
use crate::model::policy::{Entity, Peer, Policy, PortRule, PortSel, RuleDirection};
use crate::model::selector::Selector;

/// A rule named for humans: `Kind namespace/name: spec.ingress[0]`.
pub type RuleRef = Arc<str>;

/// The built-in rules for the node, shared so verdicts do not allocate their names.
static TO_NODE: std::sync::LazyLock<RuleRef> =
    std::sync::LazyLock::new(|| "node: pods may always reach their node (proxy, DNS)".into());
static FROM_NODE: std::sync::LazyLock<RuleRef> =
    std::sync::LazyLock::new(|| "allow-localhost: the node may always reach its pods".into());

/// Peers of an entry.
#[derive(Debug, Clone)]
pub(crate) enum PeerSet {
    All,
    Ids(Arc<HashSet<u32>>),
}

impl PeerSet {
    pub(crate) fn contains(&self, id: u32) -> bool {
        match self {
            Self::All => true,
            Self::Ids(s) => s.contains(&id),
        }
    }
}

/// One rule as it applies to one subject.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub rule: RuleRef,
    pub deny: bool,
    pub peers: PeerSet,
    /// Empty: every port and protocol.
    pub ports: Arc<Vec<PortRule>>,
}

/// What applies to a subject in one direction.
#[derive(Debug, Clone, Default)]
pub struct DirPolicy {
    /// Some policy selects the subject for this direction (allow or deny rules, or default deny).
    pub enforced: bool,
    /// What no rule allows is dropped.
    pub default_deny: bool,
    /// Policies that select the subject in this direction.
    pub selected_by: BTreeSet<String>,
    pub(crate) entries: Vec<Entry>,
}

impl DirPolicy {
    /// The rules that apply, by name, in the order policies were given.
    pub fn rule_names(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.rule.to_string()).collect()
    }
}

/// Everything in force for one identity.
#[derive(Debug, Clone, Default)]
pub struct SubjectPolicy {
    pub ingress: DirPolicy,
    pub egress: DirPolicy,
}

impl SubjectPolicy {
    /// Same flags and the same entries, peer sets aside (compared by identity, not content).
    fn same_shape(&self, other: &SubjectPolicy) -> bool {
        self.ingress.same_shape(&other.ingress) && self.egress.same_shape(&other.egress)
    }
}

impl DirPolicy {
    fn same_shape(&self, other: &DirPolicy) -> bool {
        self.enforced == other.enforced
            && self.default_deny == other.default_deny
            && self.selected_by == other.selected_by
            && self.entries.len() == other.entries.len()
            && self.entries.iter().zip(&other.entries).all(|(a, b)| {
                Arc::ptr_eq(&a.rule, &b.rule)
                    && a.deny == b.deny
                    && Arc::ptr_eq(&a.ports, &b.ports)
                    && matches!(
                        (&a.peers, &b.peers),
                        (PeerSet::All, PeerSet::All) | (PeerSet::Ids(_), PeerSet::Ids(_))
                    )
            })
    }
}

/// What one direction says about a flow.
#[derive(Debug, Clone, PartialEq)]
pub enum DirOutcome {
    /// No policy selects the endpoint in this direction (or it is not a local endpoint).
    NotEnforced,
    /// Allowed by `rules` (empty when the direction is enforced without default deny, or for the
    /// local host). `http`: the L7 rules requests must match, `None` when any request may pass.
    Allowed {
        rules: Vec<RuleRef>,
        http: Option<Vec<(RuleRef, Arc<Vec<HttpRule>>)>>,
    },
    /// Denied by these deny rules.
    Denied { rules: Vec<RuleRef> },
    /// Enforced and no rule allows it; `selected_by` names the policies that enforce.
    DefaultDenied { selected_by: Vec<String> },
}

impl DirOutcome {
    fn denies(&self) -> bool {
        matches!(self, Self::Denied { .. } | Self::DefaultDenied { .. })
    }
}

/// The verdict for one flow: both directions.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyVerdict {
    /// The source endpoint's egress policy.
    pub egress: DirOutcome,
    /// The destination endpoint's ingress policy.
    pub ingress: DirOutcome,
}

impl PolicyVerdict {
    /// Whether L3/L4 lets the flow through.
    pub fn allowed(&self) -> bool {
        !self.egress.denies() && !self.ingress.denies()
    }

    /// Whether requests must be judged by L7 rules.
    pub fn needs_l7(&self) -> bool {
        self.allowed()
            && [&self.egress, &self.ingress]
                .iter()
                .any(|o| matches!(o, DirOutcome::Allowed { http: Some(_), .. }))
    }

    /// The rules that decided, for flows and `policy trace`.
    pub fn deciding_rules(&self) -> Vec<String> {
        let mut out = Vec::new();
        let denied = !self.allowed();
        for (dir, o) in [("egress", &self.egress), ("ingress", &self.ingress)] {
            match o {
                DirOutcome::Denied { rules } => out.extend(rules.iter().map(|r| r.to_string())),
                DirOutcome::DefaultDenied { selected_by } => out.push(format!(
                    "default deny ({dir}): selected by {}",
                    selected_by.join(", ")
                )),
                DirOutcome::Allowed { rules, .. } if !denied => {
                    out.extend(rules.iter().map(|r| r.to_string()))
                }
                _ => {}
            }
        }
        out.dedup();
        out
    }

    /// Judges one request: every direction with L7 rules must have a matching rule.
    pub fn judge_http(&self, req: &RequestInfo) -> (bool, Vec<String>) {
        let mut rules = Vec::new();
        for o in [&self.egress, &self.ingress] {
            if let DirOutcome::Allowed {
                http: Some(sets), ..
            } = o
            {
                let hit = sets
                    .iter()
                    .flat_map(|(_, rs)| rs.iter())
                    .find(|r| r.matches(req));
                match hit {
                    Some(r) => rules.push(r.path.clone()),
                    None => {
                        let names = sets.iter().map(|(r, _)| r.to_string()).collect();
                        return (false, names);
                    }
                }
            }
        }
        (true, rules)
    }
}

/// Resolved selectors and policies, kept between builds so an update re-evaluates only what
/// changed: selector sets are brought up to date by looking at changed identities only, and a
/// policy whose text and selector sets did not change is not resolved again.
#[derive(Debug, Default)]
pub struct SelectorCache {
    /// Identity → what selectors look at, as of the last sync.
    seen: HashMap<u32, Arc<IdentityInfo>>,
    sets: HashMap<CacheKey, Arc<HashSet<u32>>>,
    /// Keys whose set changed in the last sync.
    dirty: HashSet<CacheKey>,
    /// Identities that entered or left some set in the last sync.
    flipped: HashSet<u32>,
    /// Policies resolved by an earlier build, by kind and key.
    policies: HashMap<(super::PolicyKind, String), Arc<Resolved>>,
    /// The subjects of the last build.
    subjects: Option<Arc<HashMap<u32, Arc<SubjectPolicy>>>>,
    /// Cluster name the sets were computed for (entity `cluster` depends on it).
    cluster: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CacheKey {
    Subject(Selector),
    Peer(Peer),
}

/// One policy resolved against the identities: per spec, who it selects and its entries.
#[derive(Debug)]
struct Resolved {
    policy: Arc<Policy>,
    name: String,
    specs: Vec<ResolvedSpec>,
}

#[derive(Debug)]
struct ResolvedSpec {
    subject: CacheKey,
    selected: Arc<HashSet<u32>>,
    default_deny_ingress: bool,
    default_deny_egress: bool,
    has_ingress: bool,
    has_egress: bool,
    /// Entries with the selector keys their peers came from (`None`: any peer).
    entries: Vec<(RuleDirection, Entry, Option<Vec<CacheKey>>)>,
}

impl SelectorCache {
    /// Brings every cached set up to date with `u`, looking only at identities that changed.
    fn sync(&mut self, u: &Universe) {
        self.dirty.clear();
        self.flipped.clear();
        if self.cluster != u.local_cluster {
            self.sets.clear();
            self.seen.clear();
            self.policies.clear();
            self.subjects = None;
            self.cluster = u.local_cluster.clone();
        }
        let mut changed: Vec<Arc<IdentityInfo>> = Vec::new();
        let mut current = HashSet::with_capacity(u.len());
        for info in u.iter() {
            current.insert(info.id);
            let same = self.seen.get(&info.id).is_some_and(|old| {
                u.get_shared(info.id)
                    .is_some_and(|now| Arc::ptr_eq(old, now))
                    || (old.labels == info.labels && old.kind == info.kind && old.ips == info.ips)
            });
            if !same {
                let arc = u
                    .get_shared(info.id)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(info.clone()));
                self.seen.insert(info.id, arc.clone());
                changed.push(arc);
            }
        }
        let removed: Vec<u32> = self
            .seen
            .keys()
            .filter(|id| !current.contains(id))
            .copied()
            .collect();
        for id in &removed {
            self.seen.remove(id);
        }
        if changed.is_empty() && removed.is_empty() {
            return;
        }
        for (key, set) in self.sets.iter_mut() {
            let before = set.len();
            let mut touched = false;
            for id in &removed {
                if set.contains(id) {
                    touched = true;
                }
            }
            for info in &changed {
                if key_matches(key, info, u) != set.contains(&info.id) {
                    touched = true;
                }
            }
            if !touched {
                continue;
            }
            let set = Arc::make_mut(set);
            for id in &removed {
                if set.remove(id) {
                    self.flipped.insert(*id);
                }
            }
            for info in &changed {
                let flipped = if key_matches(key, info, u) {
                    set.insert(info.id)
                } else {
                    set.remove(&info.id)
                };
                if flipped {
                    self.flipped.insert(info.id);
                }
            }
            let _ = before;
            self.dirty.insert(key.clone());
        }
    }

    /// Identities that entered or left some selector's set in the last build.
    pub fn flipped(&self) -> &HashSet<u32> {
        &self.flipped
    }

    fn get(&mut self, key: CacheKey, u: &Universe) -> Arc<HashSet<u32>> {
        if let Some(s) = self.sets.get(&key) {
            return s.clone();
        }
        let set: HashSet<u32> = u
            .iter()
            .filter(|i| key_matches(&key, i, u))
            .map(|i| i.id)
            .collect();
        let set = Arc::new(set);
        self.sets.insert(key, set.clone());
        set
    }

    /// `p` resolved: from an earlier build when neither it nor its selector sets changed; else
    /// again, keeping rule names and ports (and the peer sets whose selectors did not change)
    /// of the earlier resolution, so consumers can tell that only peer sets moved.
    fn resolve(&mut self, p: &Arc<Policy>, u: &Universe) -> Arc<Resolved> {
        let id = (p.kind, p.key());
        let earlier = self.policies.get(&id).cloned();
        let same_policy = earlier
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(&r.policy, p) || *r.policy == **p);
        if let Some(r) = &earlier
            && same_policy
        {
            let stale = !self.dirty.is_empty()
                && r.specs.iter().any(|s| {
                    self.dirty.contains(&s.subject)
                        || s.entries
                            .iter()
                            .flat_map(|(_, _, keys)| keys.iter().flatten())
                            .any(|k| self.dirty.contains(k))
                });
            if !stale {
                return r.clone();
            }
        }
        let earlier = earlier.filter(|_| same_policy);
        let name = format!("{} {}", p.kind.as_str(), p.key());
        let mut specs = Vec::with_capacity(p.specs.len());
        for (si, spec) in p.specs.iter().enumerate() {
            let subject = CacheKey::Subject(spec.subject.clone());
            let selected = self.get(subject.clone(), u);
            let mut entries = Vec::with_capacity(spec.rules.len());
            for (ri, r) in spec.rules.iter().enumerate() {
                let before = earlier
                    .as_ref()
                    .and_then(|e| e.specs.get(si))
                    .and_then(|s| s.entries.get(ri));
                let keys: Option<Vec<CacheKey>> = r
                    .peers
                    .as_ref()
                    .map(|list| list.iter().cloned().map(CacheKey::Peer).collect());
                let peers = match (&keys, before) {
                    (None, _) => PeerSet::All,
                    (Some(keys), Some((_, e, _)))
                        if !keys.iter().any(|k| self.dirty.contains(k)) =>
                    {
                        e.peers.clone()
                    }
                    (Some(keys), _) => {
                        let mut ids: HashSet<u32> = HashSet::new();
                        for k in keys {
                            ids.extend(self.get(k.clone(), u).iter());
                        }
                        PeerSet::Ids(Arc::new(ids))
                    }
                };
                let entry = match before {
                    Some((_, e, _)) => Entry { peers, ..e.clone() },
                    None => Entry {
                        rule: format!("{name}: {}", r.path).into(),
                        deny: r.deny,
                        peers,
                        ports: Arc::new(r.ports.clone()),
                    },
                };
                entries.push((r.direction, entry, keys));
            }
            let has = |d: RuleDirection| spec.rules.iter().any(|r| r.direction == d);
            specs.push(ResolvedSpec {
                subject,
                selected,
                default_deny_ingress: spec.default_deny_ingress,
                default_deny_egress: spec.default_deny_egress,
                has_ingress: has(RuleDirection::Ingress),
                has_egress: has(RuleDirection::Egress),
                entries,
            });
        }
        let resolved = Arc::new(Resolved {
            policy: p.clone(),
            name,
            specs,
        });
        self.policies.insert(id, resolved.clone());
        resolved
    }
}

fn key_matches(key: &CacheKey, info: &IdentityInfo, u: &Universe) -> bool {
    match key {
        CacheKey::Subject(sel) => {
            matches!(&info.kind, IdentityKind::Endpoint { cluster } if *cluster == u.local_cluster)
                && sel.matches(&info.labels)
        }
        CacheKey::Peer(p) => peer_matches(p, info, u),
    }
}

/// Whether peer selector `p` selects identity `info`.
fn peer_matches(p: &Peer, info: &IdentityInfo, u: &Universe) -> bool {
    let local_cluster = u.local_cluster.as_str();
    match p {
        Peer::Endpoints(sel) => match &info.kind {
            IdentityKind::Endpoint { cluster } => {
                sel.matches(&info.labels)
                    && (cluster == local_cluster
                        || !u.default_local_cluster
                        || sel.mentions(CLUSTER_LABEL))
            }
            _ => false,
        },
        Peer::Entity(e) => match e {
            Entity::All => true,
            Entity::World => {
                info.id == reserved::WORLD || matches!(info.kind, IdentityKind::Cidr(_))
            }
            Entity::Cluster => match &info.kind {
                IdentityKind::Endpoint { cluster } => cluster == local_cluster,
                IdentityKind::Reserved => info.id != reserved::WORLD,
                IdentityKind::Cidr(_) => false,
            },
            Entity::Host => info.id == reserved::HOST,
            Entity::RemoteNode => info.id == reserved::REMOTE_NODE,
            Entity::Init => info.id == reserved::INIT,
            Entity::Health => info.id == reserved::HEALTH,
        },
        Peer::Cidr { net, except, pods } => match &info.kind {
            IdentityKind::Cidr(p) => net.contains(p) && !except.iter().any(|e| e.contains(p)),
            IdentityKind::Reserved => info.id == reserved::WORLD && net.prefix_len() == 0,
            // ipBlock over pod addresses: every pod of the identity must be inside (fail closed
            // when pods sharing labels fall on both sides).
            IdentityKind::Endpoint { .. } => {
                *pods
                    && !info.ips.is_empty()
                    && info
                        .ips
                        .iter()
                        .all(|ip| net.contains(ip) && !except.iter().any(|e| e.contains(ip)))
            }
        },
    }
}

/// Policies resolved for one agent.
#[derive(Debug, Clone)]
pub struct Engine {
    pub universe: Arc<Universe>,
    /// Per identity; shared between builds when unchanged.
    pub(crate) subjects: Arc<HashMap<u32, Arc<SubjectPolicy>>>,
}

/// Each subject's rules from `resolved` (in policy order); with `only`, that subject's alone.
fn assemble(resolved: &[Arc<Resolved>], only: Option<u32>) -> HashMap<u32, Arc<SubjectPolicy>> {
    let mut subjects: HashMap<u32, SubjectPolicy> = HashMap::new();
    for r in resolved {
        for spec in &r.specs {
            let mut add = |id: u32| {
                let sp = subjects.entry(id).or_default();
                for (dd, has, dp) in [
                    (spec.default_deny_ingress, spec.has_ingress, &mut sp.ingress),
                    (spec.default_deny_egress, spec.has_egress, &mut sp.egress),
                ] {
                    if dd || has {
                        dp.enforced = true;
                        dp.default_deny |= dd;
                        if !dp.selected_by.contains(&r.name) {
                            dp.selected_by.insert(r.name.clone());
                        }
                    }
                }
                for (dir, e, _) in &spec.entries {
                    match dir {
                        RuleDirection::Ingress => sp.ingress.entries.push(e.clone()),
                        RuleDirection::Egress => sp.egress.entries.push(e.clone()),
                    }
                }
            };
            match only {
                Some(id) if spec.selected.contains(&id) => add(id),
                Some(_) => {}
                None => spec.selected.iter().for_each(|id| add(*id)),
            }
        }
    }
    subjects
        .into_iter()
        .map(|(id, sp)| (id, Arc::new(sp)))
        .collect()
}

impl Engine {
    /// Resolves `policies` against `universe` from scratch.
    pub fn build(policies: &[Policy], universe: Arc<Universe>) -> Self {
        let policies: Vec<Arc<Policy>> = policies.iter().cloned().map(Arc::new).collect();
        Self::build_cached(&policies, universe, &mut SelectorCache::default())
    }

    /// Resolves `policies`, reusing (and updating) selector sets and policies resolved by
    /// earlier builds. Subjects no changed policy selects keep their (shared) rules.
    pub fn build_cached(
        policies: &[Arc<Policy>],
        universe: Arc<Universe>,
        cache: &mut SelectorCache,
    ) -> Self {
        cache.sync(&universe);
        let mut ids = HashSet::with_capacity(policies.len());
        let mut resolved = Vec::with_capacity(policies.len());
        // Subjects a new, changed or removed policy selects (before or after) need new rules.
        let mut affected: HashSet<u32> = HashSet::new();
        let mut touched = 0usize;
        for p in policies {
            let id = (p.kind, p.key());
            let before = cache.policies.get(&id).cloned();
            let r = cache.resolve(p, &universe);
            if !before.as_ref().is_some_and(|b| Arc::ptr_eq(b, &r)) {
                touched += 1;
                for old in before.iter().chain([&r]) {
                    affected.extend(old.specs.iter().flat_map(|s| s.selected.iter()));
                }
            }
            ids.insert(id);
            resolved.push(r);
        }
        let gone: Vec<_> = cache
            .policies
            .keys()
            .filter(|k| !ids.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(old) = cache.policies.remove(&k) {
                touched += 1;
                affected.extend(old.specs.iter().flat_map(|s| s.selected.iter()));
            }
        }
        if touched > 0 {
            // Selector sets no policy uses any more go.
            let mut used = HashSet::new();
            for r in &resolved {
                for spec in &r.specs {
                    used.insert(spec.subject.clone());
                    used.extend(
                        spec.entries
                            .iter()
                            .flat_map(|(_, _, keys)| keys.iter().flatten())
                            .cloned(),
                    );
                }
            }
            cache.sets.retain(|k, _| used.contains(k));
        }
        let reuse = cache.subjects.as_ref().filter(|prev| {
            !prev.is_empty()
                && affected.len() * 4 <= prev.len()
                && touched * 4 <= resolved.len().max(4)
        });
        let subjects = match reuse {
            Some(prev) if touched == 0 => prev.clone(),
            Some(prev) => {
                let mut subjects = (**prev).clone();
                for id in affected {
                    match assemble(&resolved, Some(id)).remove(&id) {
                        Some(sp) => subjects.insert(id, sp),
                        None => subjects.remove(&id),
                    };
                }
                Arc::new(subjects)
            }
            None => Arc::new(assemble(&resolved, None)),
        };
        cache.subjects = Some(subjects.clone());
        Self { universe, subjects }
    }

    /// Identities whose policy differs from `prev`'s in more than peer sets: their kernel
    /// entries must be recompiled whole. (A peer set only changes for identities whose
    /// information changed, and the kernel compiler recompiles those anyway.)
    pub fn changed_subjects(&self, prev: &Engine) -> BTreeSet<u32> {
        let mut out = BTreeSet::new();
        if Arc::ptr_eq(&self.subjects, &prev.subjects) {
            return out;
        }
        for (id, sp) in self.subjects.iter() {
            if !prev
                .subjects
                .get(id)
                .is_some_and(|old| Arc::ptr_eq(old, sp) || old.same_shape(sp))
            {
                out.insert(*id);
            }
        }
        out.extend(
            prev.subjects
                .keys()
                .filter(|id| !self.subjects.contains_key(id)),
        );
        out
    }

    /// What is in force for identity `id` (`None`: no policy selects it).
    pub fn subject(&self, id: u32) -> Option<&SubjectPolicy> {
        self.subjects.get(&id).map(|s| &**s)
    }

    /// Identities selected by some policy, sorted.
    pub fn subject_ids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.subjects.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// How many identities some policy selects.
    pub fn subject_count(&self) -> usize {
        self.subjects.len()
    }

    /// Whether any policy selects anything.
    pub fn is_empty(&self) -> bool {
        self.subjects.is_empty()
    }

    /// The verdict for `src` → `dst` on IP protocol `proto`, destination port `dport`.
    pub fn verdict(&self, src: u32, dst: u32, proto: u8, dport: u16) -> PolicyVerdict {
        let egress = match self.subjects.get(&src) {
            // Pods may always reach their node: the proxy and DNS live there.
            Some(sp) if sp.egress.enforced && dst == reserved::HOST => DirOutcome::Allowed {
                rules: vec![TO_NODE.clone()],
                http: None,
            },
            Some(sp) if sp.egress.enforced => self.judge(&sp.egress, dst, dst, proto, dport),
            _ => DirOutcome::NotEnforced,
        };
        let ingress = match self.subjects.get(&dst) {
            // The node itself may always reach its pods (Cilium's allow-localhost).
            Some(sp) if sp.ingress.enforced && src == reserved::HOST => DirOutcome::Allowed {
                rules: vec![FROM_NODE.clone()],
                http: None,
            },
            Some(sp) if sp.ingress.enforced => self.judge(&sp.ingress, src, dst, proto, dport),
            _ => DirOutcome::NotEnforced,
        };
        PolicyVerdict { egress, ingress }
    }

    /// Whether port rule `pr` covers `proto`/`port` towards `dst`.
    pub(crate) fn port_matches(&self, pr: &PortRule, dst: u32, proto: u8, port: u16) -> bool {
        if !pr.protocol.covers(proto) {
            return false;
        }
        match &pr.port {
            PortSel::Any => true,
            PortSel::Range(a, b) => (*a..=*b).contains(&port),
            PortSel::Named(n) => {
                self.universe
                    .is_named_port(dst, n, pr.protocol.number(), port, proto)
            }
        }
    }

    fn judge(&self, dp: &DirPolicy, peer: u32, dst: u32, proto: u8, port: u16) -> DirOutcome {
        let mut denied = Vec::new();
        let mut allowed = Vec::new();
        let mut http: Option<Vec<(RuleRef, Arc<Vec<HttpRule>>)>> = Some(Vec::new());
        for e in dp.entries.iter().filter(|e| e.peers.contains(peer)) {
            let matched: Vec<&PortRule> = e
                .ports
                .iter()
                .filter(|pr| self.port_matches(pr, dst, proto, port))
                .collect();
            if !e.ports.is_empty() && matched.is_empty() {
                continue;
            }
            if e.deny {
                denied.push(e.rule.clone());
                continue;
            }
            allowed.push(e.rule.clone());
            // An L4-only allow for this peer and port lets every request through.
            let l4_only = e.ports.is_empty() || matched.iter().any(|pr| pr.http.is_none());
            if l4_only {
                http = None;
            } else if let Some(list) = &mut http {
                for pr in matched {
                    if let Some(rules) = &pr.http
                        && !list.iter().any(|(_, r)| Arc::ptr_eq(r, rules))
                    {
                        list.push((e.rule.clone(), rules.clone()));
                    }
                }
            }
        }
        if !denied.is_empty() {
            return DirOutcome::Denied { rules: denied };
        }
        if allowed.is_empty() {
            if dp.default_deny {
                return DirOutcome::DefaultDenied {
                    selected_by: dp.selected_by.iter().cloned().collect(),
                };
            }
            return DirOutcome::Allowed {
                rules: vec![],
                http: None,
            };
        }
        DirOutcome::Allowed {
            rules: allowed,
            http,
        }
    }
}
