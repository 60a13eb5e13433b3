//! Engine → kernel policy map entries.
//!
//! The kernel does one lookup per flow for `(src identity, dst identity, protocol, port)`, so an
//! entry must hold the combined answer of the source's egress and the destination's ingress:
//! the intersection of what each allows, plus the union of what each denies (the map code turns
//! allows covered by a deny into denies). Ports whose allow carries L7 rules become PROXY.
//! Only pairs some rule names get entries; a missing entry for a policed pair is a drop.

use std::collections::{BTreeMap, HashMap};

use strait_ebpf::{PolicyAction, PolicyKey};

use super::engine::{DirPolicy, Engine};
use super::model::PortSel;
use crate::identity::reserved;

/// Protocols the kernel distinguishes for port rules.
const PORT_PROTOCOLS: [u8; 3] = [6, 17, 132];

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
    let mut egress: HashMap<(u32, u32), DirSegs> = HashMap::new();
    let mut ingress: HashMap<(u32, u32), DirSegs> = HashMap::new();
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
    let mut pairs: Vec<(u32, u32)> = egress.keys().chain(ingress.keys()).copied().collect();
    pairs.sort_unstable();
    pairs.dedup();
    let mut rules = Vec::new();
    for (src, dst) in pairs {
        if src == reserved::HOST || dst == reserved::HOST {
            continue; // the kernel always lets the node through
        }
        let side = |map: &HashMap<(u32, u32), DirSegs>, dp: Option<&DirPolicy>| match dp {
            Some(dp) if dp.enforced => {
                let segs = map.get(&(src, dst)).cloned().unwrap_or_default();
                let allow = if dp.default_deny {
                    Some(segs.allow)
                } else {
                    None
                };
                (allow, segs.deny)
            }
            _ => (None, Vec::new()),
        };
        let (allow_e, deny_e) = side(&egress, engine.subject(src).map(|s| &s.egress));
        let (allow_i, deny_i) = side(&ingress, engine.subject(dst).map(|s| &s.ingress));
        let allowed = match (allow_e, allow_i) {
            (None, None) => vec![ALL],
            (Some(a), None) | (None, Some(a)) => a,
            (Some(a), Some(b)) => intersect(&a, &b),
        };
        emit_allows(src, dst, &allowed, &mut rules);
        for seg in deny_e.iter().chain(&deny_i) {
            for key in keys(src, dst, seg) {
                rules.push((key, PolicyAction::Deny));
            }
        }
    }
    KernelPolicy { policed, rules }
}

/// Adds the segments of every entry of `dp`, per peer, into `out` under `pair(peer)`.
fn accumulate(
    engine: &Engine,
    dp: &DirPolicy,
    all_ids: &[u32],
    pair: impl Fn(u32) -> (u32, u32),
    egress: bool,
    out: &mut HashMap<(u32, u32), DirSegs>,
) {
    let visit = |peer: u32, out: &mut HashMap<(u32, u32), DirSegs>, e: &super::engine::Entry| {
        let (src, dst) = pair(peer);
        let dst_for_ports = if egress { peer } else { dst };
        let segs = entry_segs(engine, e, dst_for_ports);
        let slot = out.entry((src, dst)).or_default();
        if e.deny {
            slot.deny.extend(segs);
        } else {
            slot.allow.extend(segs);
        }
    };
    for e in &dp.entries {
        match &e.peers {
            super::engine::PeerSet::All => all_ids.iter().for_each(|p| visit(*p, out, e)),
            super::engine::PeerSet::Ids(set) => set.iter().for_each(|p| visit(*p, out, e)),
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
        let mut runs: BTreeMap<u32, (u32, Option<bool>)> = BTreeMap::new();
        let mut prev: Option<(u32, u32, Option<bool>)> = None;
        for w in cuts.windows(2) {
            let (lo, hi) = (w[0], w[1] - 1);
            let covering: Vec<&&Seg> = segs
                .iter()
                .filter(|s| u32::from(s.first) <= lo && hi <= u32::from(s.last))
                .collect();
            let state = if covering.is_empty() {
                None
            } else {
                Some(covering.iter().all(|s| s.l7))
            };
            prev = match prev {
                Some((a, b, st)) if st == state && b + 1 == lo => Some((a, hi, st)),
                Some((a, b, st)) => {
                    runs.insert(a, (b, st));
                    Some((lo, hi, state))
                }
                None => Some((lo, hi, state)),
            };
        }
        if let Some((a, b, st)) = prev {
            runs.insert(a, (b, st));
        }
        for (first, (last, state)) in runs {
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
