use super::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sel(s: &str) -> Selector {
    match s.parse() {
        Ok(sel) => sel,
        Err(e) => panic!("{s}: {e}"),
    }
}

#[test]
fn source_prefixes_select_as_cilium_does() {
    let l = labels(&[("k8s:app", "web"), ("reserved:host", "")]);
    assert_eq!(
        LabelKey::parse("app").unwrap().value_in(&l),
        Some("web"),
        "no source matches any source"
    );
    assert_eq!(
        LabelKey::parse("k8s:app").unwrap().value_in(&l),
        Some("web")
    );
    assert_eq!(
        LabelKey::parse("any:app").unwrap().value_in(&l),
        Some("web")
    );
    assert_eq!(LabelKey::parse("reserved:app").unwrap().value_in(&l), None);
    assert!(LabelKey::parse("container:app").is_err());
}

#[test]
fn not_in_matches_absent_labels() {
    let r = Requirement {
        key: LabelKey::parse("tier").unwrap(),
        op: Operator::NotIn(vec!["db".into()]),
    };
    let holds = |l: &Labels| r.holds(r.key.value_in(l));
    assert!(holds(&labels(&[])));
    assert!(holds(&labels(&[("k8s:tier", "web")])));
    assert!(!holds(&labels(&[("k8s:tier", "db")])));
    let ne = sel("tier!=db");
    assert!(ne.matches(&labels(&[])));
    assert!(ne.matches(&labels(&[("k8s:tier", "web")])));
    assert!(!ne.matches(&labels(&[("k8s:tier", "db")])));
}

#[test]
fn string_and_object_forms_build_the_same_selector() {
    let object = Selector::parse(
        "spec.endpointSelector",
        Some(&[("app".to_string(), "web".to_string())].into()),
        Some(&[
            RawExpression {
                key: "k8s:tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["db".into(), "cache".into()]),
            },
            RawExpression {
                key: "any:canary".into(),
                operator: "DoesNotExist".into(),
                values: None,
            },
        ]),
    )
    .expect("parses");
    assert_eq!(
        object,
        sel("app=web, k8s:tier notin (db,cache), !any:canary")
    );
    assert_eq!(
        object.to_string(),
        "app=web,k8s:tier notin (db,cache),!canary"
    );
}

#[test]
fn string_form_matches_identity_labels() {
    let l = labels(&[
        ("k8s:app", "web"),
        ("k8s:env", "prod"),
        ("reserved:host", ""),
    ]);
    for (s, want) in [
        ("", true),
        ("app", true),
        ("!app", false),
        ("!canary", true),
        ("app=web", true),
        ("app==web", true),
        ("k8s:app=web", true),
        ("reserved:app=web", false),
        ("app!=web", false),
        ("app!=db", true),
        ("env in (dev,prod)", true),
        ("env in (dev)", false),
        ("env notin (dev)", true),
        ("env notin (prod,dev)", false),
        ("zone notin (a)", true),
        ("zone in (a)", false),
        ("app=web,env=prod", true),
        ("app=web,env=dev", false),
        ("reserved:host", true),
        ("k8s:host", false),
    ] {
        assert_eq!(sel(s).matches(&l), want, "{s}");
    }
}

#[test]
fn matches_with_looks_keys_up_through_the_caller() {
    let bare = labels(&[("app", "web")]);
    let lookup = |k: &LabelKey| bare.get(&k.key).map(String::as_str);
    assert!(sel("k8s:app=web,!tier").matches_with(lookup));
    assert!(!sel("app in (db)").matches_with(lookup));
}

#[test]
fn string_form_round_trips_and_normalises() {
    for s in [
        "app=web",
        "app=",
        "k8s:app=web,tier!=db,!canary,env in (a,b),zone notin (x),team",
        "reserved:host",
    ] {
        assert_eq!(sel(s).to_string(), s);
    }
    for (s, want) in [
        (" app == web , k8s:tier ", "app=web,k8s:tier"),
        ("env in ( a , b )", "env in (a,b)"),
        ("any:app", "app"),
        ("  ", ""),
    ] {
        assert_eq!(sel(s).to_string(), want, "{s:?}");
    }
}

#[test]
fn string_form_errors() {
    for (s, at) in [
        ("app=a b", "app=a b"),
        ("=x", "=x"),
        ("app in ()", "app in ()"),
        ("app in (a,(b))", "app in (a,(b))"),
        ("app in (a", "app in (a"),
        ("app out (a)", "app out (a)"),
        ("a,,b", ""),
        ("app=x)", "app=x)"),
        ("!", "!"),
        ("container:app=x", "container:app=x"),
        ("app in (a) b", "app in (a) b"),
        ("k8s:=x", "k8s:=x"),
    ] {
        match s.parse::<Selector>() {
            Ok(sel) => panic!("{s} parsed as {sel:?}"),
            Err(e) => assert_eq!(e.at, at, "{s}: {e}"),
        }
    }
}

#[test]
fn object_form_errors_name_the_field() {
    let expr = |op: &str, values: Option<Vec<String>>| RawExpression {
        key: "app".into(),
        operator: op.into(),
        values,
    };
    let err = |labels: Option<&BTreeMap<String, String>>, exprs: &[RawExpression]| {
        Selector::parse("spec.endpointSelector", labels, Some(exprs))
            .expect_err("rejected")
            .to_string()
    };
    assert_eq!(
        err(
            Some(&[("foo:app".to_string(), "x".to_string())].into()),
            &[]
        ),
        "spec.endpointSelector.matchLabels.foo:app: label source \"foo\" is not supported (use \
         k8s:, reserved: or none)"
    );
    assert_eq!(
        err(None, &[expr("In", None)]),
        "spec.endpointSelector.matchExpressions[0].values: operator In needs at least one value"
    );
    assert_eq!(
        err(None, &[expr("Exists", Some(vec!["x".into()]))]),
        "spec.endpointSelector.matchExpressions[0].values: operator Exists takes no values"
    );
    assert_eq!(
        err(
            None,
            &[expr("Exists", None), expr("Gt", Some(vec!["1".into()]))]
        ),
        "spec.endpointSelector.matchExpressions[1].operator: \"Gt\" is not one of In, NotIn, \
         Exists, DoesNotExist"
    );
}
