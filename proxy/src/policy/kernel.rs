//! Engine → kernel policy map entries.
//!
//! The kernel does one lookup per flow for `(src identity, dst identity, protocol, port)`, so an
//! entry must hold the combined answer of the source's egress and the destination's ingress:
//! the intersection of what each allows, plus the union of what each denies (the map code turns
//! allows covered by a deny into denies). Ports whose allow carries L7 rules become PROXY.
//! Only pairs some rule names get entries; a missing entry for a policed pair is a drop.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use strait_ebpf::{PolicyAction, PolicyKey};

use super::engine::{DirPolicy, Engine};
use super::model::PortSel;
use crate::identity::reserved;
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
#[derive(Debug, Default, Clone)]
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

/// Compiles the engine's L3/L4 view into kernel entries.
pub fn compile(engine: &Engine) -> KernelPolicy {
    let ids: Vec<u32> = engine.universe.iter().map(|i| i.id).collect();
    // (src, dst) → what src's egress says about dst; and what dst's ingress says about src.
    let mut egress: PairMap<DirSegs> = PairMap::default();
    let mut ingress: PairMap<DirSegs> = PairMap::default();
    let mut policed = Vec::new();
    for id in engine.subject_ids() {
        let Some(sp) = engine.subject(id) else {
            continue;
        };
        policed.push((id, sp.ingress.enforced, sp.egress.enforced));
        if sp.egress.enforced {
            accumulate(
                engine,
                &sp.egress,
                &ids,
                |peer| (id, peer),
                true,
                &mut egress,
            );
        }
        if sp.ingress.enforced {
            accumulate(
                engine,
                &sp.ingress,
                &ids,
                |peer| (peer, id),
                false,
                &mut ingress,
            );
        }
    }
    // Every pair either side names, in (src, dst) order: a merge of both maps sorted by pair
    // (sequential reads instead of two hash probes per pair).
    let sorted = |map: PairMap<DirSegs>| {
        let mut v: Vec<((u32, u32), DirSegs)> = map.into_iter().collect();
        v.sort_unstable_by_key(|(k, _)| *k);
        v.into_iter().peekable()
    };
    let (mut egress, mut ingress) = (sorted(egress), sorted(ingress));
    let mut rules = Vec::new();
    loop {
        let (src, dst) = match (egress.peek(), ingress.peek()) {
            (None, None) => break,
            (Some((a, _)), None) | (None, Some((a, _))) => *a,
            (Some((a, _)), Some((b, _))) => *a.min(b),
        };
        let segs_e = egress.next_if(|(k, _)| *k == (src, dst)).map(|(_, s)| s);
        let segs_i = ingress.next_if(|(k, _)| *k == (src, dst)).map(|(_, s)| s);
        if src == reserved::HOST || dst == reserved::HOST {
            continue; // the kernel always lets the node through
        }
        let (allow_e, deny_e) = side(segs_e.as_ref(), engine.subject(src).map(|s| &s.egress));
        let (allow_i, deny_i) = side(segs_i.as_ref(), engine.subject(dst).map(|s| &s.ingress));
        let allowed: Cow<'_, [Seg]> = match (allow_e, allow_i) {
            (None, None) => Cow::Borrowed(&[ALL]),
            (Some(a), None) | (None, Some(a)) => Cow::Borrowed(a),
            (Some(a), Some(b)) => Cow::Owned(intersect(a, b)),
        };
        emit_allows(src, dst, &allowed, &mut rules);
        for seg in deny_e.iter().chain(deny_i) {
            for key in keys(src, dst, seg) {
                rules.push((key, PolicyAction::Deny));
            }
        }
    }
    KernelPolicy { policed, rules }
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

/// Adds the segments of every entry of `dp`, per peer, into `out` under `pair(peer)`.
fn accumulate(
    engine: &Engine,
    dp: &DirPolicy,
    all_ids: &[u32],
    pair: impl Fn(u32) -> (u32, u32),
    egress: bool,
    out: &mut PairMap<DirSegs>,
) {
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
            let (src, dst) = pair(peer);
            let dst_for_ports = if egress { peer } else { dst };
            let fresh;
            let segs: &[Seg] = if per_peer {
                fresh = entry_segs(engine, e, dst_for_ports);
                &fresh
            } else {
                shared.get_or_insert_with(|| entry_segs(engine, e, dst_for_ports))
            };
            let slot = out.entry((src, dst)).or_default();
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
            out.entry(pair(*p)).or_default();
        }
    }
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
/// allow), for tests that check the compiled map against the engine.
#[cfg(test)]
pub(crate) fn lookup(
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
