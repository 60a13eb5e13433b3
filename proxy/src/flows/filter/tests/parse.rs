use super::*;
use crate::flows::filter::KEYS;

#[test]
fn parse_errors_name_the_filter() {
    assert_eq!(
        Criterion::parse("colour", "red"),
        Err(FilterError::UnknownKey {
            key: "colour".into()
        })
    );
    assert_eq!(
        Criterion::parse("pod", ""),
        Err(FilterError::EmptyValue { key: "pod" })
    );
    assert_eq!(
        Criterion::parse("pod", "/x"),
        Err(FilterError::EmptyValue { key: "pod" })
    );
    assert_eq!(
        Criterion::parse("to-pod", "/x"),
        Err(FilterError::EmptyValue { key: "to-pod" })
    );
    assert_eq!(
        Criterion::parse("verdict", "allowed"),
        Err(FilterError::Verdict {
            value: "allowed".into()
        })
    );
    let message = |k: &str, v: &str| match Criterion::parse(k, v) {
        Ok(c) => panic!("{k}={v} parsed as {c:?}"),
        Err(e) => e.to_string(),
    };
    for (k, v, want) in [
        ("pod", "", "--pod needs a value"),
        ("from-namespace", "", "--from-namespace needs a value"),
        ("label", " ", "--label needs a value"),
        (
            "verdict",
            "allowed",
            "--verdict allowed: expected FORWARDED, DROPPED, ERROR or AUDIT",
        ),
        (
            "http-status",
            "6xx",
            "--http-status 6xx: expected NNN, Nxx or Nxx+",
        ),
        (
            "http-status",
            "99",
            "--http-status 99: expected NNN, Nxx or Nxx+",
        ),
        (
            "http-status",
            "600",
            "--http-status 600: expected NNN, Nxx or Nxx+",
        ),
        (
            "http-status",
            "4x",
            "--http-status 4x: expected NNN, Nxx or Nxx+",
        ),
        (
            "http-status",
            "5+",
            "--http-status 5+: expected NNN, Nxx or Nxx+",
        ),
        (
            "protocol",
            "sctp",
            "--protocol sctp: expected TCP, UDP, HTTP, HTTP/1.1 or HTTP/2",
        ),
        (
            "port",
            "http",
            "--port http: expected a port number (1-65535)",
        ),
        (
            "to-port",
            "0",
            "--to-port 0: expected a port number (1-65535)",
        ),
        (
            "from-port",
            "70000",
            "--from-port 70000: expected a port number (1-65535)",
        ),
        (
            "http-method",
            "GE T",
            "--http-method GE T: expected an HTTP method such as GET or POST",
        ),
        (
            "since",
            "yesterday",
            "--since yesterday: expected an RFC 3339 time (2024-11-25T06:01:02Z) or a \
             duration ago (30s, 5m, 1h30m)",
        ),
    ] {
        assert_eq!(message(k, v), want, "{k}={v}");
    }
    for (k, v) in [
        ("until", "2024-13-01T00:00:00Z"),
        ("until", "2024-11-25T06:00:00+24:00"),
        ("since", "2024-11-25"),
        ("since", "-5m"),
        ("since", "100000y"),
        ("until", "9999-12-31T23:59:59-01:00"),
    ] {
        assert!(
            message(k, v).starts_with(&format!("--{k} {v}: expected an RFC 3339 time")),
            "{k}={v}"
        );
    }
    for v in [
        "app=a b",
        "=x",
        "app in ()",
        "app in (a,(b))",
        "app in (a",
        "app out (a)",
        "a,,b",
        "app=x)",
        "!",
    ] {
        let msg = message("from-label", v);
        assert!(
            msg.starts_with(&format!("--from-label {v}: expected KEY, !KEY")),
            "{v}: {msg}"
        );
    }
    let msg = message("http-path", "(unclosed");
    assert!(
        msg.starts_with("--http-path (unclosed: invalid regular expression: "),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
}

#[test]
fn display_round_trips_through_parse() {
    for (k, v) in [
        ("cluster", "c1"),
        ("namespace", "demo"),
        ("from-namespace", "demo"),
        ("to-namespace", "kube-system"),
        ("pod", "demo/fe"),
        ("pod", "fe"),
        ("pod", "demo/"),
        ("from-pod", "demo/fe"),
        ("to-pod", "be"),
        ("label", "app=web"),
        (
            "label",
            "k8s:app=web,tier!=db,!canary,env in (a,b),zone notin (x),team",
        ),
        ("from-label", "k8s:app"),
        ("to-label", "app="),
        ("verdict", "AUDIT"),
        ("protocol", "TCP"),
        ("protocol", "UDP"),
        ("protocol", "HTTP"),
        ("protocol", "HTTP/1.1"),
        ("protocol", "HTTP/2"),
        ("port", "80"),
        ("from-port", "41000"),
        ("to-port", "65535"),
        ("http-status", "200"),
        ("http-status", "4xx"),
        ("http-status", "5xx+"),
        ("http-method", "GET"),
        ("http-path", r"^/api/v[12]/.*\?id=\d+"),
        ("since", "2024-11-25T06:01:02Z"),
        ("until", "2024-11-25T06:01:02.123Z"),
        ("until", "2024-11-25T06:01:02.123456789Z"),
    ] {
        let c = Criterion::parse(k, v).expect("parses");
        assert_eq!((c.key(), c.to_string().as_str()), (k, v));
    }
    // Every key is covered above.
    for k in KEYS {
        assert!(
            !matches!(
                Criterion::parse(k, "x"),
                Err(FilterError::UnknownKey { .. })
            ),
            "{k}"
        );
    }
}

#[test]
fn values_are_normalised() {
    let show = |k: &str, v: &str| {
        Criterion::parse_at(k, v, now())
            .expect("parses")
            .to_string()
    };
    assert_eq!(show("protocol", "http/1.1"), "HTTP/1.1");
    assert_eq!(show("http-method", "delete"), "DELETE");
    assert_eq!(show("http-status", "4XX+"), "4xx+");
    assert_eq!(show("label", " app == web , k8s:tier "), "app=web,k8s:tier");
    assert_eq!(show("label", "env in ( a , b )"), "env in (a,b)");
    // `any:` is every source, which is what a key without a source means.
    assert_eq!(show("from-label", "any:app"), "app");
    // Durations become absolute times, which is what travels to the agents.
    assert_eq!(show("since", "5m"), "2024-11-25T05:55:10Z");
    assert_eq!(show("until", "1h30m"), "2024-11-25T04:30:10Z");
    assert_eq!(
        show("since", "2024-11-25T08:00:00+02:00"),
        "2024-11-25T06:00:00Z"
    );
    assert_eq!(
        show("since", "2024-11-25T06:00:00+00:00"),
        "2024-11-25T06:00:00Z"
    );
}
