//! Engine → kernel policy map entries.
//!
//! The kernel does one lookup per flow for `(src identity, dst identity, protocol, port)`, so an
//! entry must hold the combined answer of the source's egress and the destination's ingress:
//! the intersection of what each allows, plus the union of what each denies (the map code turns
//! allows covered by a deny into denies). Ports whose allow carries L7 rules become PROXY.
//! Only pairs some rule names get entries; a missing entry for a policed pair is a drop.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use strait_ebpf::{PolicyAction, PolicyKey};

use super::engine::{DirPolicy, Engine};
use crate::identity::reserved;
use crate::model::policy::PortSel;
use strait_ebpf::abi::{IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};

/// Protocols the kernel distinguishes for port rules.
const PORT_PROTOCOLS: [u8; 3] = [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP];

/// A protocol (0 = any, then always every port) and port interval; `l7` when HTTP rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seg {
    proto: u8,
    first: u16,
    last: u16,
    l7: bool,
}

const ALL: Seg = Seg {
    proto: 0,
    first: 0,
    last: u16::MAX,
    l7: false,
};

/// What one direction allows and denies for one peer.
#[derive(Debug, Default, Clone, PartialEq)]
struct DirSegs {
    allow: Vec<Seg>,
    deny: Vec<Seg>,
}

/// A map keyed by identity pair. Iteration order never matters (pairs are sorted before use),
/// so a fast multiplicative hash replaces SipHash: keys are identities, not attacker input.
type PairMap<V> = HashMap<(u32, u32), V, BuildHasherDefault<PairHasher>>;

/// FxHash (as rustc uses it) over the integers of a key.
#[derive(Default)]
struct PairHasher(u64);

impl PairHasher {
    fn add(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for PairHasher {
    fn write(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|b| self.add(u64::from(*b)));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Kernel map contents: `(identity, ingress policed, egress policed)` and the rules.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct KernelPolicy {
    pub policed: Vec<(u32, bool, bool)>,
    pub rules: Vec<(PolicyKey, PolicyAction)>,
}

/// Compiles the engine's L3/L4 view into kernel entries, from scratch.
pub fn compile(engine: &Engine) -> KernelPolicy {
    let mut k = KernelCompiler::default();
    k.full(engine);
    k.to_policy()
}

/// The kernel entries of one identity pair, shared between compiles while unchanged.
pub type PairRules = Arc<[(PolicyKey, PolicyAction)]>;

/// One direction of one subject: what it says about each peer.
type Row = HashMap<u32, DirSegs, BuildHasherDefault<PairHasher>>;

/// The kernel entries of every identity pair, kept between compiles so that an update
/// recomputes only the pairs it touches.
///
/// Entries of `(src, dst)` depend on `src`'s egress towards `dst` and `dst`'s ingress from
/// `src`. A policy change alters some subjects' rules (their *rows*: every pair they are an end
/// of); an identity that appears, goes or changes alters what every subject says about it (its
/// *column*). Both are recomputed from the engine, then the pairs they touch.
#[derive(Debug, Default)]
pub struct KernelCompiler {
    /// Subject → what its egress says about each destination.
    egress: HashMap<u32, Row>,
    /// Subject → what its ingress says about each source.
    ingress: HashMap<u32, Row>,
    rules: PairMap<PairRules>,
    policed: BTreeMap<u32, (bool, bool)>,
}

/// What a compile changed: the pairs whose entries differ (now possibly none) and the
/// identities whose enforcement flags differ.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KernelChanges {
    pub pairs: BTreeSet<(u32, u32)>,
    pub policed: BTreeSet<u32>,
    /// Whether every pair was recompiled (not only those the change touches).
    pub full: bool,
}

impl KernelCompiler {
    /// Recompiles everything for `engine`.
    pub fn full(&mut self, engine: &Engine) -> KernelChanges {
        let old_rules = std::mem::take(&mut self.rules);
        let old_policed = std::mem::take(&mut self.policed);
        self.egress.clear();
        self.ingress.clear();
        let ids: Vec<u32> = engine.universe.iter().map(|i| i.id).collect();
        for id in engine.subject_ids() {
            self.set_rows(engine, id, &ids);
        }
        // Every pair either side names, in (src, dst) order.
        let mut pairs: Vec<(u32, u32)> = Vec::new();
        for (src, row) in &self.egress {
            pairs.extend(row.keys().map(|dst| (*src, *dst)));
        }
        for (dst, row) in &self.ingress {
            pairs.extend(row.keys().map(|src| (*src, *dst)));
        }
        pairs.sort_unstable();
        pairs.dedup();
        for pair in pairs {
            if let Some(rules) = self.pair_rules(engine, pair) {
                self.rules.insert(pair, rules);
            }
        }
        let mut changes = KernelChanges {
            full: true,
            ..KernelChanges::default()
        };
        for (pair, rules) in &self.rules {
            if old_rules.get(pair) != Some(rules) {
                changes.pairs.insert(*pair);
            }
        }
        changes
            .pairs
            .extend(old_rules.keys().filter(|p| !self.rules.contains_key(p)));
        for (id, flags) in &self.policed {
            if old_policed.get(id) != Some(flags) {
                changes.policed.insert(*id);
            }
        }
        changes.policed.extend(
            old_policed
                .keys()
                .filter(|id| !self.policed.contains_key(id)),
        );
        changes
    }

    /// Brings the entries from `prev`'s to `engine`'s, given the identities whose information
    /// changed between their universes (see [`crate::policy::Universe::updated`]).
    pub fn update(
        &mut self,
        engine: &Engine,
        prev: &Engine,
        changed_ids: &BTreeSet<u32>,
    ) -> KernelChanges {
        let mut rows = engine.changed_subjects(prev);
        rows.extend(
            changed_ids
                .iter()
                .filter(|id| engine.subject(**id).is_some() || prev.subject(**id).is_some()),
        );
        // Past a quarter of the subjects or identities, one pass over everything is cheaper.
        if rows.len() * 4 > engine.subjects.len().max(prev.subjects.len()).max(8)
            || changed_ids.len() * 4 > engine.universe.len().max(8)
        {
            return self.full(engine);
        }
        let ids: Vec<u32> = engine.universe.iter().map(|i| i.id).collect();
        let mut touched: HashSet<(u32, u32)> = HashSet::new();
        let mut changes = KernelChanges::default();
        for &s in &rows {
            // Pairs whose other end's row names `s`: their outcome depends on `s`'s flags.
            for (dst, row) in &self.ingress {
                if row.contains_key(&s) {
                    touched.insert((s, *dst));
                }
            }
            for (src, row) in &self.egress {
                if row.contains_key(&s) {
                    touched.insert((*src, s));
                }
            }
            for (d, _) in self.egress.remove(&s).into_iter().flatten() {
                touched.insert((s, d));
            }
            for (src, _) in self.ingress.remove(&s).into_iter().flatten() {
                touched.insert((src, s));
            }
            let before = self.policed.remove(&s);
            if engine.subject(s).is_some() {
                self.set_rows(engine, s, &ids);
            }
            if self.policed.get(&s) != before.as_ref() {
                changes.policed.insert(s);
            }
            touched.extend(
                self.egress
                    .get(&s)
                    .into_iter()
                    .flatten()
                    .map(|(d, _)| (s, *d)),
            );
            touched.extend(
                self.ingress
                    .get(&s)
                    .into_iter()
                    .flatten()
                    .map(|(src, _)| (*src, s)),
            );
        }
        let exists: HashSet<u32> = changed_ids
            .iter()
            .copied()
            .filter(|id| engine.universe.get(*id).is_some())
            .collect();
        for &x in changed_ids {
            let present = exists.contains(&x);
            for (egress, map) in [(true, &mut self.egress), (false, &mut self.ingress)] {
                for (subject, row) in map.iter_mut() {
                    if rows.contains(subject) {
                        continue;
                    }
                    let Some(sp) = engine.subject(*subject) else {
                        continue;
                    };
                    let dp = if egress { &sp.egress } else { &sp.ingress };
                    let cell = present
                        .then(|| cell(engine, dp, x, *subject, egress))
                        .flatten();
                    let pair = if egress { (*subject, x) } else { (x, *subject) };
                    match cell {
                        Some(c) => {
                            row.insert(x, c);
                            touched.insert(pair);
                        }
                        None => {
                            if row.remove(&x).is_some() {
                                touched.insert(pair);
                            }
                        }
                    }
                }
            }
        }
        for pair in touched {
            let new = self.pair_rules(engine, pair);
            let old = match &new {
                Some(r) => self.rules.insert(pair, r.clone()),
                None => self.rules.remove(&pair),
            };
            if old != new {
                changes.pairs.insert(pair);
            }
        }
        changes
    }

    /// The entries of one pair now, if any.
    pub fn pair(&self, pair: (u32, u32)) -> Option<&PairRules> {
        self.rules.get(&pair)
    }

    /// Every pair with entries that has `id` at one end.
    pub fn pairs_of(&self, id: u32) -> Vec<(u32, u32)> {
        let mut out: Vec<(u32, u32)> = Vec::new();
        out.extend(
            self.egress
                .get(&id)
                .into_iter()
                .flatten()
                .map(|(d, _)| (id, *d)),
        );
        out.extend(
            self.ingress
                .get(&id)
                .into_iter()
                .flatten()
                .map(|(s, _)| (*s, id)),
        );
        out.extend(
            self.ingress
                .iter()
                .filter(|(_, row)| row.contains_key(&id))
                .map(|(d, _)| (id, *d)),
        );
        out.extend(
            self.egress
                .iter()
                .filter(|(_, row)| row.contains_key(&id))
                .map(|(s, _)| (*s, id)),
        );
        out.retain(|p| self.rules.contains_key(p));
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Every pair with entries.
    pub fn pairs(&self) -> impl Iterator<Item = (&(u32, u32), &PairRules)> {
        self.rules.iter()
    }

    /// Enforcement flags of identity `id`, if policed.
    pub fn policed(&self, id: u32) -> Option<(bool, bool)> {
        self.policed.get(&id).copied()
    }

    /// Every policed identity with its (ingress, egress) flags.
    pub fn policed_all(&self) -> impl Iterator<Item = (u32, (bool, bool))> + '_ {
        self.policed.iter().map(|(id, f)| (*id, *f))
    }

    /// All entries, pairs in order.
    pub fn to_policy(&self) -> KernelPolicy {
        let mut pairs: Vec<_> = self.rules.iter().collect();
        pairs.sort_unstable_by_key(|(p, _)| **p);
        KernelPolicy {
            policed: self
                .policed
                .iter()
                .map(|(id, (i, e))| (*id, *i, *e))
                .collect(),
            rules: pairs
                .into_iter()
                .flat_map(|(_, r)| r.iter().copied())
                .collect(),
        }
    }

    /// Computes subject `id`'s rows and enforcement flags.
    fn set_rows(&mut self, engine: &Engine, id: u32, ids: &[u32]) {
        let Some(sp) = engine.subject(id) else {
            return;
        };
        self.policed
            .insert(id, (sp.ingress.enforced, sp.egress.enforced));
        if sp.egress.enforced {
            self.egress
                .insert(id, row(engine, &sp.egress, ids, id, true));
        }
        if sp.ingress.enforced {
            self.ingress
                .insert(id, row(engine, &sp.ingress, ids, id, false));
        }
    }

    /// The entries of `(src, dst)` from both sides' rows; `None` when neither names the pair.
    fn pair_rules(&self, engine: &Engine, (src, dst): (u32, u32)) -> Option<PairRules> {
        let segs_e = self.egress.get(&src).and_then(|r| r.get(&dst));
        let segs_i = self.ingress.get(&dst).and_then(|r| r.get(&src));
        if segs_e.is_none() && segs_i.is_none() {
            return None;
        }
        if src == reserved::HOST || dst == reserved::HOST {
            return None; // the kernel always lets the node through
        }
        let (allow_e, deny_e) = side(segs_e, engine.subject(src).map(|s| &s.egress));
        let (allow_i, deny_i) = side(segs_i, engine.subject(dst).map(|s| &s.ingress));
        let allowed: Cow<'_, [Seg]> = match (allow_e, allow_i) {
            (None, None) => Cow::Borrowed(&[ALL]),
            (Some(a), None) | (None, Some(a)) => Cow::Borrowed(a),
            (Some(a), Some(b)) => Cow::Owned(intersect(a, b)),
        };
        let mut rules = Vec::new();
        emit_allows(src, dst, &allowed, &mut rules);
        for seg in deny_e.iter().chain(deny_i) {
            for key in keys(src, dst, seg) {
                rules.push((key, PolicyAction::Deny));
            }
        }
        // No key at all: the pair is denied by the absence of an entry.
        (!rules.is_empty()).then(|| rules.into())
    }
}

/// What `dp` (subject `subject`'s egress, or ingress) says about each peer.
fn row(engine: &Engine, dp: &DirPolicy, all_ids: &[u32], subject: u32, egress: bool) -> Row {
    let mut out = Row::default();
    for e in &dp.entries {
        // Segments depend on the peer only through egress named ports (resolved on the peer);
        // at ingress they resolve on the subject, the same for every peer. Otherwise compute
        // them once per entry, not once per peer.
        let per_peer = egress
            && e.ports
                .iter()
                .any(|pr| matches!(pr.port, PortSel::Named(_)));
        let mut shared: Option<Vec<Seg>> = None;
        let mut visit = |peer: u32| {
            let dst_for_ports = if egress { peer } else { subject };
            let fresh;
            let segs: &[Seg] = if per_peer {
                fresh = entry_segs(engine, e, dst_for_ports);
                &fresh
            } else {
                shared.get_or_insert_with(|| entry_segs(engine, e, dst_for_ports))
            };
            let slot = out.entry(peer).or_default();
            if e.deny {
                slot.deny.extend_from_slice(segs);
            } else {
                slot.allow.extend_from_slice(segs);
            }
        };
        match &e.peers {
            super::engine::PeerSet::All => all_ids.iter().for_each(|p| visit(*p)),
            super::engine::PeerSet::Ids(set) => set.iter().for_each(|p| visit(*p)),
        }
    }
    if !dp.default_deny {
        // Enforced only for deny rules: every pair needs an entry so the allow is explicit.
        for p in all_ids {
            out.entry(*p).or_default();
        }
    }
    out
}

/// What `dp` says about the one peer `peer` (the same as its [`row`] would hold for it).
fn cell(engine: &Engine, dp: &DirPolicy, peer: u32, subject: u32, egress: bool) -> Option<DirSegs> {
    let mut out: Option<DirSegs> = (!dp.default_deny).then(DirSegs::default);
    let dst_for_ports = if egress { peer } else { subject };
    for e in dp.entries.iter().filter(|e| e.peers.contains(peer)) {
        let segs = entry_segs(engine, e, dst_for_ports);
        let slot = out.get_or_insert_with(DirSegs::default);
        if e.deny {
            slot.deny.extend(segs);
        } else {
            slot.allow.extend(segs);
        }
    }
    out
}

/// What one direction says about `(src, dst)`: its allows (`None` when it does not restrict
/// them: not enforced, or enforced without default deny) and its denies. Borrowed, not cloned:
/// this runs once per identity pair.
fn side<'a>(segs: Option<&'a DirSegs>, dp: Option<&DirPolicy>) -> (Option<&'a [Seg]>, &'a [Seg]) {
    match dp {
        Some(dp) if dp.enforced => {
            let allow = dp
                .default_deny
                .then(|| segs.map_or(&[][..], |s| s.allow.as_slice()));
            (allow, segs.map_or(&[][..], |s| s.deny.as_slice()))
        }
        _ => (None, &[]),
    }
}

/// Per subject identity, the port spans where an ingress allow of it carries L7 rules: what
/// another cluster must send through the authenticated tunnel for this cluster to judge.
pub fn ingress_l7_ports(engine: &Engine) -> BTreeMap<u32, Vec<crate::model::remote::PortSpan>> {
    let mut out = BTreeMap::new();
    for id in engine.subject_ids() {
        let Some(sp) = engine.subject(id) else {
            continue;
        };
        let mut spans: Vec<_> = sp
            .ingress
            .entries
            .iter()
            .filter(|e| !e.deny)
            .flat_map(|e| entry_segs(engine, e, id))
            .filter(|s| s.l7)
            .map(|s| crate::model::remote::PortSpan {
                // HTTP rules ride on TCP; a port rule without protocol means TCP here.
                protocol: if s.proto == 0 { IPPROTO_TCP } else { s.proto },
                first: s.first,
                last: s.last,
            })
            .collect();
        spans.sort();
        spans.dedup();
        if !spans.is_empty() {
            out.insert(id, spans);
        }
    }
    out
}

/// The port segments entry `e` covers towards `dst` (named ports resolve on `dst`).
fn entry_segs(engine: &Engine, e: &super::engine::Entry, dst: u32) -> Vec<Seg> {
    if e.ports.is_empty() {
        return vec![ALL];
    }
    let mut out = Vec::new();
    for pr in e.ports.iter() {
        let l7 = pr.http.is_some();
        let proto = pr.protocol.number();
        let mut push = |proto: u8, first: u16, last: u16| {
            if proto == 0 && (first, last) != (0, u16::MAX) {
                // A port without protocol means that port for each protocol.
                for p in PORT_PROTOCOLS {
                    out.push(Seg {
                        proto: p,
                        first,
                        last,
                        l7,
                    });
                }
            } else {
                out.push(Seg {
                    proto,
                    first,
                    last,
                    l7,
                });
            }
        };
        match &pr.port {
            PortSel::Any => push(proto, 0, u16::MAX),
            PortSel::Range(a, b) => push(proto, *a, *b),
            PortSel::Named(n) => {
                for (port, p) in engine.universe.named_port(dst, n, proto) {
                    push(p, port, port);
                }
            }
        }
    }
    out
}

fn intersect(a: &[Seg], b: &[Seg]) -> Vec<Seg> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            let proto = match (x.proto, y.proto) {
                (0, p) | (p, 0) => p,
                (p, q) if p == q => p,
                _ => continue,
            };
            let (first, last) = (x.first.max(y.first), x.last.min(y.last));
            if first > last {
                continue;
            }
            out.push(Seg {
                proto,
                first,
                last,
                // Both directions' L7 rules apply to requests.
                l7: x.l7 || y.l7,
            });
        }
    }
    out
}

/// Emits ALLOW/PROXY keys for `allowed`: per port, allowed if any segment covers it, PROXY if
/// every covering segment carries L7 rules (an L4-only allow lets every request through).
fn emit_allows(src: u32, dst: u32, allowed: &[Seg], out: &mut Vec<(PolicyKey, PolicyAction)>) {
    let any_proto = allowed.iter().any(|s| s.proto == 0);
    if any_proto {
        out.push((PolicyKey::any(src, dst), PolicyAction::Allow));
    }
    if allowed.iter().all(|s| s.proto == 0) {
        return; // nothing, or only the any-protocol key above: no per-protocol keys
    }
    for proto in PORT_PROTOCOLS {
        let segs: Vec<&Seg> = allowed
            .iter()
            .filter(|s| s.proto == proto || s.proto == 0)
            .collect();
        if segs.iter().all(|s| s.proto == 0) {
            continue; // covered by the any-protocol key, or nothing
        }
        // Interval boundaries; evaluate each elementary interval.
        let mut cuts: Vec<u32> = segs
            .iter()
            .flat_map(|s| [u32::from(s.first), u32::from(s.last) + 1])
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        // Runs start in increasing order, so a Vec keeps them sorted.
        let mut runs: Vec<(u32, u32, Option<bool>)> = Vec::new();
        let mut prev: Option<(u32, u32, Option<bool>)> = None;
        for w in cuts.windows(2) {
            let (lo, hi) = (w[0], w[1] - 1);
            // None: no segment covers the interval; Some(l7): every covering one is L7.
            let state = segs
                .iter()
                .filter(|s| u32::from(s.first) <= lo && hi <= u32::from(s.last))
                .fold(None, |st: Option<bool>, s| Some(st.unwrap_or(true) && s.l7));
            prev = match prev {
                Some((a, b, st)) if st == state && b + 1 == lo => Some((a, hi, st)),
                Some(run) => {
                    runs.push(run);
                    Some((lo, hi, state))
                }
                None => Some((lo, hi, state)),
            };
        }
        runs.extend(prev);
        for (first, last, state) in runs {
            let action = match state {
                None => continue,
                // Plain allow already given for every protocol.
                Some(false) if any_proto => continue,
                Some(false) => PolicyAction::Allow,
                Some(true) => PolicyAction::Proxy,
            };
            let seg = Seg {
                proto,
                first: first as u16,
                last: last as u16,
                l7: false,
            };
            out.extend(keys(src, dst, &seg).into_iter().map(|k| (k, action)));
        }
    }
}

fn keys(src: u32, dst: u32, seg: &Seg) -> Vec<PolicyKey> {
    if seg.proto == 0 {
        return vec![PolicyKey::any(src, dst)];
    }
    if (seg.first, seg.last) == (0, u16::MAX) {
        return vec![PolicyKey::protocol(src, dst, seg.proto)];
    }
    PolicyKey::port_range(src, dst, seg.proto, seg.first, seg.last)
}

/// The action the kernel would take for a flow given `rules` (longest prefix, deny over
/// allow): a Rust emulation, for tests that check the compiled map against the engine.
pub fn lookup(
    rules: &[(PolicyKey, PolicyAction)],
    src: u32,
    dst: u32,
    proto: u8,
    port: u16,
) -> Option<PolicyAction> {
    let probe = PolicyKey::port(src, dst, proto, port);
    let strength = |a: PolicyAction| match a {
        PolicyAction::Deny => 3,
        PolicyAction::Proxy => 2,
        PolicyAction::Allow => 1,
    };
    let specificity = |k: &PolicyKey| {
        if k.protocol == 0 {
            0
        } else {
            1 + u32::from(k.dport_prefix_len)
        }
    };
    // Deny wins over any allow it covers (what the map code does before writing).
    let covering: Vec<&(PolicyKey, PolicyAction)> =
        rules.iter().filter(|(k, _)| k.covers(&probe)).collect();
    if covering.iter().any(|(_, a)| *a == PolicyAction::Deny) {
        return Some(PolicyAction::Deny);
    }
    let best = covering.iter().map(|(k, _)| specificity(k)).max()?;
    covering
        .iter()
        .filter(|(k, _)| specificity(k) == best)
        .map(|(_, a)| *a)
        .max_by_key(|a| strength(*a))
}
