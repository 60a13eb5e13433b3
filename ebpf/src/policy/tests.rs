#![allow(clippy::unwrap_used)]

use super::*;

const TCP: u8 = abi::IPPROTO_TCP;
const UDP: u8 = abi::IPPROTO_UDP;

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn rules(rules: &[(PolicyKey, PolicyAction)]) -> BTreeMap<PolicyKey, PolicyAction> {
    State::from_image(&PolicyImage {
        rules: rules.to_vec(),
        ..PolicyImage::default()
    })
    .unwrap()
    .policy
}

#[test]
fn port_ranges_split_into_aligned_prefixes() {
    let ports = |first, last| {
        PolicyKey::port_range(1, 2, TCP, first, last)
            .into_iter()
            .map(|k| (k.dport, k.dport_prefix_len))
            .collect::<Vec<_>>()
    };
    assert_eq!(ports(80, 80), [(80, 16)]);
    assert_eq!(ports(8080, 8083), [(8080, 14)]);
    assert_eq!(ports(8079, 8084), [(8079, 16), (8080, 14), (8084, 16)]);
    assert_eq!(ports(0, 65535), [(0, 0)]);
    assert_eq!(ports(1024, 65535).len(), 6);
    assert!(ports(10, 9).is_empty());
    // Every port in the range is covered exactly once, none outside.
    for (first, last) in [(1, 1023), (5000, 5999), (65000, 65535), (0, 1)] {
        let keys = PolicyKey::port_range(1, 2, TCP, first, last);
        for port in (first.saturating_sub(3)..=last.saturating_add(3)).chain([0, 65535]) {
            let n = keys
                .iter()
                .filter(|k| k.covers(&PolicyKey::port(1, 2, TCP, port)))
                .count();
            assert_eq!(n, usize::from((first..=last).contains(&port)), "{port}");
        }
    }
}

#[test]
fn keys_are_canonical_and_round_trip_through_the_abi() {
    let key = PolicyKey {
        dport: 8085,
        dport_prefix_len: 14,
        ..PolicyKey::port(7, 9, TCP, 0)
    };
    let stored = rules(&[(key, PolicyAction::Allow)]);
    let canonical = *stored.keys().next().unwrap();
    assert_eq!(canonical.dport, 8084);
    let (prefixlen, data) = canonical.to_abi();
    assert_eq!(prefixlen, 80 + 14);
    assert_eq!(data.dport.to_ne_bytes(), 8084u16.to_be_bytes());
    assert_eq!(PolicyKey::from_abi(prefixlen, data), Some(canonical));

    let any = PolicyKey::any(7, 9);
    assert_eq!(any.to_abi().0, abi::POLICY_PREFIX_ANY_PROTO);
    assert_eq!(PolicyKey::from_abi(72, any.to_abi().1), Some(any));
    assert_eq!(PolicyKey::port(7, 9, UDP, 53).to_abi().0, 96);
    assert_eq!(PolicyKey::protocol(7, 9, UDP).to_abi().0, 80);
    // Keys Strait never writes.
    assert_eq!(PolicyKey::from_abi(75, any.to_abi().1), None);
    assert_eq!(PolicyKey::from_abi(64, any.to_abi().1), None);
    let reserved = abi::PolicyKeyData {
        reserved: 1,
        ..any.to_abi().1
    };
    assert_eq!(PolicyKey::from_abi(72, reserved), None);
}

#[test]
fn invalid_images_are_rejected() {
    let bad_rule = |key| {
        State::from_image(&PolicyImage {
            rules: vec![(key, PolicyAction::Allow)],
            ..PolicyImage::default()
        })
        .unwrap_err()
    };
    let too_long = PolicyKey {
        dport_prefix_len: 17,
        ..PolicyKey::port(1, 2, TCP, 80)
    };
    assert!(matches!(
        bad_rule(too_long),
        PolicyError::PortPrefixTooLong { .. }
    ));
    let port_any_proto = PolicyKey {
        protocol: 0,
        ..PolicyKey::port(1, 2, TCP, 80)
    };
    assert!(matches!(
        bad_rule(port_any_proto),
        PolicyError::PortWithoutProtocol { .. }
    ));

    let conflict = State::from_image(&PolicyImage {
        ipcache: vec![(net("10.0.0.0/8"), 5), (net("10.1.0.0/8"), 6)],
        ..PolicyImage::default()
    })
    .unwrap_err();
    assert!(
        conflict.to_string().contains("ipcache: 10.0.0.0/8"),
        "{conflict}"
    );
    let ep = |cgroup_id, identity| EndpointEntry {
        cgroup_id,
        identity,
        ip: Ipv4Addr::new(10, 0, 0, 1),
    };
    let image = PolicyImage {
        endpoints: vec![ep(5, 1000), ep(5, 1001)],
        ..PolicyImage::default()
    };
    assert!(matches!(
        State::from_image(&image),
        Err(PolicyError::Conflict {
            map: "endpoints",
            ..
        })
    ));
    let image = PolicyImage {
        endpoints: vec![ep(0, 1000)],
        ..PolicyImage::default()
    };
    assert!(matches!(
        State::from_image(&image),
        Err(PolicyError::NoCgroup { .. })
    ));
    let image = PolicyImage {
        policed: (0..=abi::POLICED_MAX).map(|i| (i, true, false)).collect(),
        ..PolicyImage::default()
    };
    assert!(matches!(
        State::from_image(&image),
        Err(PolicyError::TooMany { map: "policed", .. })
    ));
}

#[test]
fn identical_duplicates_merge_and_policed_flags_combine() {
    let state = State::from_image(&PolicyImage {
        ipcache: vec![(net("10.0.0.1/8"), 5), (net("10.0.0.0/8"), 5)],
        policed: vec![(5, true, false), (5, false, true), (6, false, false)],
        ..PolicyImage::default()
    })
    .unwrap();
    assert_eq!(state.ipcache, BTreeMap::from([(net("10.0.0.0/8"), 5)]));
    assert_eq!(
        state.policed,
        BTreeMap::from([(5, abi::POLICED_INGRESS | abi::POLICED_EGRESS)])
    );
}

#[test]
fn deny_wins_over_the_allows_it_covers() {
    use PolicyAction::*;
    let web = PolicyKey::port(1, 2, TCP, 80);
    let ssh = PolicyKey::port(1, 2, TCP, 22);
    let all_tcp = PolicyKey::protocol(1, 2, TCP);
    let low = PolicyKey {
        dport: 0,
        dport_prefix_len: 6,
        ..PolicyKey::port(1, 2, TCP, 0)
    }; // 0..=1023
    let other_pair = PolicyKey::port(1, 3, TCP, 80);

    // A narrow deny under a broad allow stays narrow: the longest prefix decides.
    let got = rules(&[(all_tcp, Allow), (ssh, Deny)]);
    assert_eq!(got, BTreeMap::from([(all_tcp, Allow), (ssh, Deny)]));
    // A broad deny turns the allows it covers into denies.
    let got = rules(&[(web, Proxy), (low, Deny), (other_pair, Allow)]);
    assert_eq!(
        got,
        BTreeMap::from([(web, Deny), (low, Deny), (other_pair, Allow)])
    );
    // Any-protocol deny covers everything of the pair.
    let got = rules(&[(web, Allow), (PolicyKey::any(1, 2), Deny)]);
    assert_eq!(got[&web], Deny);
    // Same key twice: deny > proxy > allow.
    assert_eq!(rules(&[(web, Allow), (web, Proxy)])[&web], Proxy);
    assert_eq!(rules(&[(web, Deny), (web, Proxy)])[&web], Deny);
    assert_eq!(rules(&[(web, Allow), (web, Allow)])[&web], Allow);
}

#[test]
fn services_keep_distinct_backends_or_defer_when_too_many() {
    let b = |identity: u32, port| ServiceBackend {
        ip: Ipv4Addr::from(0x0a00_0000 + identity),
        identity,
        port,
    };
    assert_eq!(
        normalize_backends(&[b(7, 8080), b(5, 8080), b(7, 8080)]),
        [b(5, 8080), b(7, 8080)]
    );
    let many: Vec<_> = (0..=abi::SVC_BACKENDS_MAX).map(|i| b(i, 80)).collect();
    assert_eq!(normalize_backends(&many).len(), many.len());
}

/// Position of the first step matching `f`.
fn pos(plan: &Plan, f: impl Fn(&Step) -> bool) -> usize {
    plan.steps
        .iter()
        .position(f)
        .unwrap_or_else(|| panic!("no such step in {:#?}", plan.steps))
}

#[test]
fn plan_adds_enforcement_last_and_lifts_it_first() {
    use PolicyAction::*;
    let current = State {
        policed: BTreeMap::from([(10, abi::POLICED_INGRESS), (11, abi::POLICED_EGRESS)]),
        policy: BTreeMap::from([
            (PolicyKey::port(1, 10, TCP, 80), Allow),
            (PolicyKey::port(2, 10, TCP, 80), Allow),
        ]),
        ipcache: BTreeMap::from([(net("10.0.0.5/32"), 1)]),
        ..State::default()
    };
    let desired = State {
        // 10 gets egress too; 11 is no longer policed; 12 becomes policed.
        policed: BTreeMap::from([
            (10, abi::POLICED_INGRESS | abi::POLICED_EGRESS),
            (12, abi::POLICED_INGRESS),
        ]),
        policy: BTreeMap::from([
            (PolicyKey::port(1, 10, TCP, 80), Allow),
            (PolicyKey::port(3, 12, UDP, 53), Allow),
            (PolicyKey::port(2, 10, TCP, 80), Deny),
        ]),
        ipcache: BTreeMap::from([(net("10.0.0.6/32"), 3)]),
        endpoints: BTreeMap::from([(99, (3, Ipv4Addr::new(10, 0, 0, 6)))]),
        ..State::default()
    };
    let plan = plan(&current, &desired, Totals::of(&current));
    let lift = pos(&plan, |s| *s == Step::Policed(11, None));
    let allow = pos(&plan, |s| {
        *s == Step::Policy(PolicyKey::port(3, 12, UDP, 53), Some(Allow))
    });
    let ip = pos(&plan, |s| matches!(s, Step::Ipcache(_, Some(3))));
    let ep = pos(&plan, |s| matches!(s, Step::Endpoint(99, Some(_))));
    let deny = pos(&plan, |s| {
        *s == Step::Policy(PolicyKey::port(2, 10, TCP, 80), Some(Deny))
    });
    let enforce_new = pos(&plan, |s| {
        *s == Step::Policed(12, Some(abi::POLICED_INGRESS))
    });
    let enforce_more = pos(&plan, |s| {
        *s == Step::Policed(10, Some(abi::POLICED_INGRESS | abi::POLICED_EGRESS))
    });
    let stale_ip = pos(&plan, |s| matches!(s, Step::Ipcache(_, None)));
    assert!(
        lift < allow && allow < ip && ip < deny && ep < deny,
        "{plan:#?}"
    );
    assert!(deny < enforce_new && deny < enforce_more, "{plan:#?}");
    assert!(
        enforce_new < stale_ip && enforce_more < stale_ip,
        "{plan:#?}"
    );
    assert_eq!(plan.steps.len(), 8, "{plan:#?}");
    assert_eq!(
        plan.stats.policed,
        MapStats {
            added: 1,
            updated: 1,
            removed: 1
        }
    );
    assert_eq!(
        plan.stats.policy,
        MapStats {
            added: 1,
            updated: 1,
            removed: 0
        }
    );
    assert!(plan.early_removals.is_empty());
}

#[test]
fn plan_switching_enforcement_direction_clears_before_setting() {
    let current = State {
        policed: BTreeMap::from([(10, abi::POLICED_INGRESS)]),
        ..State::default()
    };
    let desired = State {
        policed: BTreeMap::from([(10, abi::POLICED_EGRESS)]),
        ..State::default()
    };
    let plan = plan(&current, &desired, Totals::of(&current));
    assert_eq!(
        plan.steps,
        [
            Step::Policed(10, None),
            Step::Policed(10, Some(abi::POLICED_EGRESS))
        ]
    );
}

#[test]
fn plan_removes_stale_allows_before_stale_denies_and_nothing_when_equal() {
    use PolicyAction::*;
    let broad = PolicyKey::protocol(1, 2, TCP);
    let narrow = PolicyKey::port(1, 2, TCP, 22);
    let current = State {
        policy: BTreeMap::from([(narrow, Deny), (broad, Allow)]),
        ..State::default()
    };
    let plan_ = plan(&current, &State::default(), Totals::of(&current));
    assert_eq!(
        plan_.steps,
        [Step::Policy(broad, None), Step::Policy(narrow, None)]
    );
    let same = plan(&current, &current, Totals::of(&current));
    assert!(same.steps.is_empty());
    assert_eq!(same.stats.changes(), 0);
}

#[test]
fn plan_removes_first_when_a_map_cannot_hold_both() {
    let old: BTreeMap<u64, (u32, Ipv4Addr)> = (1..=u64::from(abi::ENDPOINTS_MAX))
        .map(|i| (i, (5, Ipv4Addr::new(10, 0, 0, 1))))
        .collect();
    let current = State {
        endpoints: old,
        ..State::default()
    };
    let desired = State {
        endpoints: BTreeMap::from([(100_000, (6, Ipv4Addr::new(10, 0, 0, 2)))]),
        ..State::default()
    };
    let plan = plan(&current, &desired, Totals::of(&current));
    assert_eq!(plan.early_removals, ["endpoints"]);
    let first_add = pos(&plan, |s| matches!(s, Step::Endpoint(_, Some(_))));
    assert_eq!(first_add, abi::ENDPOINTS_MAX as usize);
}
