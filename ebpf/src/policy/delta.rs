//! Incremental updates: a [`PolicyDelta`] names only what changed since the image the maps hold,
//! so an update touching one pod or one policy costs what it changes, not the size of the maps.
//!
//! The delta is turned into two small [`State`]s — what the maps hold now for the touched keys,
//! and what they should hold — and those go through the same [`plan`] as a full image, so the
//! update ordering and "deny wins" rules are exactly those of a full apply.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{
    PolicyAction, PolicyError, PolicyKey, ServiceBackend, ServiceFrontend, State, Totals,
    deny_wins, normalize_backends, policed_flags, stronger,
};

/// The rules of one identity pair `(src, dst)`.
pub type PairRules = ((u32, u32), Vec<(PolicyKey, PolicyAction)>);

/// Changes to a node's kernel policy state. `None` removes an entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyDelta {
    pub ipcache: Vec<(Ipv4Net, Option<u32>)>,
    /// cgroup ID → (identity, address).
    pub endpoints: Vec<(u64, Option<(u32, Ipv4Addr)>)>,
    /// identity → (ingress enforced, egress enforced).
    pub policed: Vec<(u32, Option<(bool, bool)>)>,
    /// Identity pairs `(src, dst)` whose rules are replaced whole; an empty list removes them.
    pub pairs: Vec<PairRules>,
    pub services: Vec<(ServiceFrontend, Option<Vec<ServiceBackend>>)>,
}

impl PolicyDelta {
    /// Whether the delta changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ipcache.is_empty()
            && self.endpoints.is_empty()
            && self.policed.is_empty()
            && self.pairs.is_empty()
            && self.services.is_empty()
    }
}

/// The keys of `pair` in a policy map (keys sort by source, then destination identity).
fn pair_range(
    policy: &BTreeMap<PolicyKey, PolicyAction>,
    (src, dst): (u32, u32),
) -> impl Iterator<Item = (&PolicyKey, &PolicyAction)> {
    let lo = PolicyKey::any(src, dst);
    let hi = PolicyKey {
        src_identity: src,
        dst_identity: dst,
        protocol: u8::MAX,
        dport: u16::MAX,
        dport_prefix_len: u8::MAX,
    };
    policy.range(lo..=hi)
}

/// What `installed` holds for the keys `delta` touches, and what it should hold; the sizes of
/// `installed` travel along so the plan knows how full the maps are.
pub(crate) fn sub_states(
    installed: &State,
    delta: &PolicyDelta,
) -> Result<(State, State), PolicyError> {
    let mut cur = State::default();
    let mut want = State::default();
    for (net, id) in &delta.ipcache {
        let net = net.trunc();
        if let Some(old) = installed.ipcache.get(&net) {
            cur.ipcache.insert(net, *old);
        }
        if let Some(id) = id {
            want.ipcache.insert(net, *id);
        }
    }
    for (cgroup, value) in &delta.endpoints {
        if let Some(old) = installed.endpoints.get(cgroup) {
            cur.endpoints.insert(*cgroup, *old);
        }
        if let Some((identity, ip)) = value {
            if *cgroup == 0 {
                return Err(PolicyError::NoCgroup {
                    ip: *ip,
                    identity: *identity,
                });
            }
            want.endpoints.insert(*cgroup, (*identity, *ip));
        }
    }
    for (id, value) in &delta.policed {
        if let Some(old) = installed.policed.get(id) {
            cur.policed.insert(*id, *old);
        }
        if let Some((ingress, egress)) = value {
            let flags = policed_flags(*ingress, *egress);
            if flags != 0 {
                want.policed.insert(*id, flags);
            }
        }
    }
    for (pair, rules) in &delta.pairs {
        cur.policy
            .extend(pair_range(&installed.policy, *pair).map(|(k, a)| (*k, *a)));
        let mut rules_of_pair = BTreeMap::new();
        for &(key, action) in rules {
            let key = key.canonical()?;
            if (key.src_identity, key.dst_identity) != *pair {
                return Err(PolicyError::OutsidePair { key, pair: *pair });
            }
            let slot = rules_of_pair.entry(key).or_insert(action);
            *slot = stronger(*slot, action);
        }
        deny_wins(&mut rules_of_pair);
        want.policy.extend(rules_of_pair);
    }
    for (frontend, backends) in &delta.services {
        if let Some(old) = installed.services.get(frontend) {
            cur.services.insert(*frontend, old.clone());
        }
        if let Some(b) = backends {
            want.services.insert(*frontend, normalize_backends(b));
        }
    }
    Ok((cur, want))
}

/// Writes the result of a delta into `installed`: the touched keys take their new values.
pub(crate) fn patch(installed: &mut State, cur: &State, want: &State) {
    fn replace<K: Ord + Clone, V: Clone>(
        into: &mut BTreeMap<K, V>,
        cur: &BTreeMap<K, V>,
        want: &BTreeMap<K, V>,
    ) {
        for k in cur.keys() {
            into.remove(k);
        }
        into.extend(want.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    replace(&mut installed.ipcache, &cur.ipcache, &want.ipcache);
    replace(&mut installed.endpoints, &cur.endpoints, &want.endpoints);
    replace(&mut installed.policed, &cur.policed, &want.policed);
    replace(&mut installed.policy, &cur.policy, &want.policy);
    replace(&mut installed.services, &cur.services, &want.services);
}

/// Sizes the maps will have once `cur` is replaced by `want` in `installed`.
pub(crate) fn totals_after(installed: &State, cur: &State, want: &State) -> Totals {
    let after = |n: usize, old: usize, new: usize| n - old + new;
    Totals {
        ipcache: after(
            installed.ipcache.len(),
            cur.ipcache.len(),
            want.ipcache.len(),
        ),
        endpoints: after(
            installed.endpoints.len(),
            cur.endpoints.len(),
            want.endpoints.len(),
        ),
        policed: after(
            installed.policed.len(),
            cur.policed.len(),
            want.policed.len(),
        ),
        policy: after(installed.policy.len(), cur.policy.len(), want.policy.len()),
        services: after(
            installed.services.len(),
            cur.services.len(),
            want.services.len(),
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::policy::{PolicyImage, plan};

    const TCP: u8 = 6;

    fn image() -> PolicyImage {
        PolicyImage {
            ipcache: vec![("10.0.0.1/32".parse().unwrap(), 300)],
            endpoints: vec![],
            policed: vec![(300, true, false)],
            rules: vec![
                (PolicyKey::port(200, 300, TCP, 80), PolicyAction::Allow),
                (PolicyKey::port(201, 300, TCP, 80), PolicyAction::Allow),
                (PolicyKey::protocol(201, 300, TCP), PolicyAction::Proxy),
            ],
            services: vec![],
        }
    }

    /// A delta applied to a state gives what a full image with the same content gives, and the
    /// plan for it is the full plan restricted to what changed.
    #[test]
    fn delta_equals_full_image() {
        let before = State::from_image(&image()).unwrap();
        let mut after_image = image();
        after_image.rules = vec![
            (PolicyKey::port(200, 300, TCP, 80), PolicyAction::Allow),
            (PolicyKey::port(200, 300, TCP, 443), PolicyAction::Allow),
            (PolicyKey::protocol(200, 300, TCP), PolicyAction::Deny),
            (PolicyKey::port(201, 300, TCP, 80), PolicyAction::Allow),
            (PolicyKey::protocol(201, 300, TCP), PolicyAction::Proxy),
        ];
        after_image
            .ipcache
            .push(("10.0.0.2/32".parse().unwrap(), 200));
        after_image.policed = vec![(300, true, true)];
        let after = State::from_image(&after_image).unwrap();
        let delta = PolicyDelta {
            ipcache: vec![("10.0.0.2/32".parse().unwrap(), Some(200))],
            policed: vec![(300, Some((true, true)))],
            pairs: vec![(
                (200, 300),
                vec![
                    (PolicyKey::port(200, 300, TCP, 80), PolicyAction::Allow),
                    (PolicyKey::port(200, 300, TCP, 443), PolicyAction::Allow),
                    (PolicyKey::protocol(200, 300, TCP), PolicyAction::Deny),
                ],
            )],
            ..PolicyDelta::default()
        };
        let (cur, want) = sub_states(&before, &delta).unwrap();
        let mut patched = before.clone();
        patch(&mut patched, &cur, &want);
        assert_eq!(
            patched, after,
            "deny wins inside the pair, other pairs kept"
        );
        let full = plan(&before, &after, Totals::of(&before));
        let small = plan(&cur, &want, Totals::of(&before));
        assert_eq!(full.steps, small.steps);
        assert_eq!(full.stats, small.stats);
    }

    #[test]
    fn emptied_pair_and_removed_entries_go() {
        let before = State::from_image(&image()).unwrap();
        let delta = PolicyDelta {
            ipcache: vec![("10.0.0.1/32".parse().unwrap(), None)],
            policed: vec![(300, None)],
            pairs: vec![((201, 300), vec![])],
            ..PolicyDelta::default()
        };
        let (cur, want) = sub_states(&before, &delta).unwrap();
        assert_eq!(cur.policy.len(), 2);
        let mut patched = before.clone();
        patch(&mut patched, &cur, &want);
        assert!(patched.ipcache.is_empty() && patched.policed.is_empty());
        assert_eq!(
            patched.policy.keys().copied().collect::<Vec<_>>(),
            [PolicyKey::port(200, 300, TCP, 80)]
        );
        let t = totals_after(&before, &cur, &want);
        assert_eq!((t.policy, t.ipcache, t.policed), (1, 0, 0));
    }

    #[test]
    fn a_key_outside_its_pair_is_refused() {
        let delta = PolicyDelta {
            pairs: vec![(
                (1, 2),
                vec![(PolicyKey::port(1, 3, TCP, 80), PolicyAction::Allow)],
            )],
            ..PolicyDelta::default()
        };
        assert!(matches!(
            sub_states(&State::default(), &delta),
            Err(PolicyError::OutsidePair { .. })
        ));
    }
}
