use super::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn entry(url: &str) -> Subscription {
    Subscription {
        name: None,
        previous_secret: None,
        url: url.to_owned(),
        secret: Secret::new(SECRET),
        events: vec!["*".to_owned()],
        targets: Vec::new(),
        allow_private: false,
    }
}

fn refused(subscription: &Subscription) -> String {
    subscription.prepare(3).unwrap_err()
}

#[test]
fn forbidden_addresses_are_named_by_kind() {
    let cases = [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fc00::1", "unique local"),
        ("fd12:3456::1", "unique local"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("100.64.0.1", "CGNAT"),
        ("100.127.255.255", "CGNAT"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("64:ff9b::a9fe:a9fe", "link-local"),
    ];
    for (ip, kind) in cases {
        let ip: IpAddr = ip.parse().unwrap();
        let found = forbidden(ip).unwrap_or_else(|| panic!("{ip} allowed"));
        assert!(found.contains(kind), "{ip}: {found}");
    }
    for ip in [
        "8.8.8.8",
        "172.32.0.1",
        "100.128.0.1",
        "2606:4700::1111",
        "::ffff:1.1.1.1",
    ] {
        let ip: IpAddr = ip.parse().unwrap();
        assert_eq!(forbidden(ip), None, "{ip}");
    }
}

#[test]
fn private_urls_are_refused_naming_the_entry_and_the_rule_unless_allowed() {
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://[::1]/hook",
        "http://[::ffff:7f00:1]/hook",
        "http://2130706433/hook",
        "http://0x7f.1/hook",
        "https://169.254.169.254/latest/meta-data/",
        "http://localhost:9/hook",
        "http://LOCALHOST./hook",
        "http://api.localhost/hook",
        "http://10.0.0.7/hook",
    ] {
        let message = refused(&entry(url));
        assert!(
            message.starts_with("subscriptions[3] (http"),
            "{url}: {message}"
        );
        assert!(message.contains("allow_private = true"), "{url}: {message}");
        let allowed = Subscription {
            name: None,
            previous_secret: None,
            allow_private: true,
            ..entry(url)
        };
        assert!(allowed.prepare(0).is_ok(), "{url}");
    }
    let message = refused(&entry("http://127.0.0.1:8080/hook?token=abc"));
    assert!(
        message.contains("127.0.0.1 is a loopback address"),
        "{message}"
    );
    assert!(
        !message.contains("token"),
        "the path and query stay out: {message}"
    );
    assert!(entry("https://hooks.example.com/ghost").prepare(0).is_ok());
}

#[test]
fn urls_must_be_http_without_userinfo() {
    assert!(refused(&entry("ftp://example.com/x")).contains("http:// or https://"));
    assert!(refused(&entry("file:///etc/passwd")).contains("http:// or https://"));
    assert!(refused(&entry("not a url")).contains("not a valid URL"));
    let message = refused(&entry("https://user:pw@example.com/x"));
    assert!(message.contains("user:password@"), "{message}");
    assert!(!message.contains("pw"), "{message}");
    let long = format!("https://example.com/{}", "a".repeat(3000));
    assert!(refused(&entry(&long)).contains("longer than"));
}

#[test]
fn secrets_must_be_whsec_base64_of_24_to_64_bytes_and_are_never_echoed() {
    let short = format!("whsec_{}", STANDARD.encode([7_u8; 16]));
    let long = format!("whsec_{}", STANDARD.encode([7_u8; 65]));
    for secret in [
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_not*base64!",
        short.as_str(),
        long.as_str(),
        "",
    ] {
        let subscription = Subscription {
            name: None,
            previous_secret: None,
            secret: Secret::new(secret),
            ..entry("https://example.com/hook")
        };
        let message = refused(&subscription);
        assert!(message.contains("secret must be whsec_"), "{message}");
        if !secret.is_empty() {
            assert!(!message.contains(secret), "{message}");
        }
    }
    let fine = format!("whsec_{}", STANDARD.encode([9_u8; 64]));
    let subscription = Subscription {
        name: None,
        previous_secret: None,
        secret: Secret::new(fine),
        ..entry("https://example.com/hook")
    };
    assert_eq!(subscription.prepare(0).unwrap().secret, vec![9_u8; 64]);
}

#[test]
fn events_are_terminal_status_names_or_star() {
    let with = |events: &[&str]| Subscription {
        name: None,
        previous_secret: None,
        events: events.iter().map(|e| (*e).to_owned()).collect(),
        ..entry("https://example.com/hook")
    };
    let prepared = with(&["patch.failed", "patch.rolled_back"])
        .prepare(0)
        .unwrap();
    assert_eq!(prepared.statuses, vec![Status::Failed, Status::RolledBack]);
    assert!(prepared.wants("MAIN", Status::Failed));
    assert!(!prepared.wants("MAIN", Status::Succeeded));
    let all = with(&["*"]).prepare(0).unwrap();
    assert_eq!(all.statuses.len(), 8);
    for bad in ["patch.done", "patch.queued", "failed", "patch.*"] {
        let message = with(&[bad]).prepare(0).unwrap_err();
        assert!(message.contains("unknown event"), "{message}");
        assert!(
            message.contains("patch.succeeded, patch.failed, patch.rolled_back, patch.cancelled, patch.timed_out, patch.rejected, patch.lost, patch.interrupted"),
            "{message}"
        );
    }
    assert!(
        with(&[])
            .prepare(0)
            .unwrap_err()
            .contains("events is empty")
    );
}

#[test]
fn targets_filter_and_must_be_target_names() {
    let subscription = Subscription {
        name: None,
        previous_secret: None,
        targets: vec!["MAIN".to_owned()],
        ..entry("https://example.com/hook")
    };
    let prepared = subscription.prepare(0).unwrap();
    assert!(prepared.wants("MAIN", Status::Succeeded));
    assert!(!prepared.wants("OTHER", Status::Succeeded));
    let bad = Subscription {
        name: None,
        previous_secret: None,
        targets: vec!["../x".to_owned()],
        ..entry("https://example.com/hook")
    };
    assert!(refused(&bad).contains("not a target name"));
}

#[test]
fn a_list_refuses_duplicates_and_too_many_and_loads_through_serde() {
    let message = prepare_all(&[
        entry("https://example.com/hook"),
        entry("https://example.com/hook"),
    ])
    .unwrap_err();
    assert!(message.contains("subscriptions[1]"), "{message}");
    let many = vec![entry("https://example.com/hook"); MAX_SUBSCRIPTIONS + 1];
    assert!(prepare_all(&many).unwrap_err().contains("at most"));

    #[derive(Debug, serde::Deserialize)]
    struct Holder {
        #[serde(deserialize_with = "deserialize_checked")]
        subscriptions: Vec<Subscription>,
    }
    let err = serde_json::from_value::<Holder>(serde_json::json!({"subscriptions": [
        {"url": "https://example.com/ok", "secret": SECRET, "events": ["*"]},
        {"url": "http://127.0.0.1:9/hook", "secret": SECRET, "events": ["*"]},
    ]}))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("subscriptions[1] (http://127.0.0.1:9)"),
        "{err}"
    );
    let fine: Holder = serde_json::from_value(serde_json::json!({"subscriptions": [
        {"url": "https://example.com/ok", "secret": SECRET, "events": ["patch.failed"]},
    ]}))
    .unwrap();
    assert_eq!(fine.subscriptions[0].events, ["patch.failed"]);
    assert!(err.contains("loopback"), "{err}");
    assert!(!err.contains(SECRET), "{err}");
}

#[tokio::test]
async fn the_resolver_checks_every_address_a_name_resolves_to() {
    let guarded = GuardedResolver {
        allow_private: false,
    };
    let message = guarded.lookup("localhost").await.unwrap_err();
    assert!(message.contains("loopback"), "{message}");
    assert!(message.contains("allow_private"), "{message}");
    let open = GuardedResolver {
        allow_private: true,
    };
    let addrs = open.lookup("localhost").await.unwrap();
    assert!(
        addrs.iter().all(|addr| addr.ip().is_loopback()),
        "{addrs:?}"
    );
}

#[test]
fn reserved_benchmarking_site_local_and_tunnelled_addresses_are_refused() {
    let cases = [
        ("192.0.0.1", "192.0.0.0/24"),
        ("192.0.0.255", "192.0.0.0/24"),
        ("198.18.0.1", "198.18.0.0/15"),
        ("198.19.255.255", "198.18.0.0/15"),
        ("240.0.0.1", "240.0.0.0/4"),
        ("254.255.255.255", "240.0.0.0/4"),
        ("255.255.255.255", "broadcast"),
        ("fec0::1", "site-local"),
        ("feff::1", "site-local"),
        ("64:ff9b:1::a00:1", "64:ff9b:1::/48"),
        // 6to4 carrying 127.0.0.1, 10.0.0.1, 169.254.169.254.
        ("2002:7f00:1::1", "loopback"),
        ("2002:a00:1::", "private"),
        ("2002:a9fe:a9fe::1", "link-local"),
        // Teredo: the client's address is the last 32 bits inverted (127.0.0.1 here), the
        // server's the 32 bits after 2001:0::.
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),
        ("2001:0:a00:1::1", "private"),
    ];
    for (ip, kind) in cases {
        let ip: IpAddr = ip.parse().unwrap();
        let found = forbidden(ip).unwrap_or_else(|| panic!("{ip} allowed"));
        assert!(found.contains(kind), "{ip}: {found}");
    }
    for ip in [
        "192.0.1.1",
        "198.17.255.255",
        "198.20.0.1",
        "203.0.114.1",
        "223.255.255.255",
        "2002:808:808::1",
        "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
        "2001:db9::1",
        "fe00::1",
        "64:ff9b:2::1",
    ] {
        let ip: IpAddr = ip.parse().unwrap();
        assert_eq!(forbidden(ip), None, "{ip}");
    }
}

#[test]
fn a_name_is_the_key_and_label_and_must_be_short_and_plain() {
    let named = |name: &str| Subscription {
        name: Some(name.to_owned()),
        ..entry("https://hooks.example.com/x?token=abc")
    };
    let prepared = named("ops-1").prepare(0).unwrap();
    assert_eq!(prepared.key, "ops-1");
    assert_eq!(prepared.label, "ops-1");
    let unnamed = entry("https://hooks.example.com/x?token=abc")
        .prepare(0)
        .unwrap();
    assert_eq!(unnamed.key, "https://hooks.example.com/x?token=abc");
    assert!(unnamed.label.starts_with("url-") && !unnamed.label.contains("token"));
    for bad in ["", "has space", "a/b", &"x".repeat(65)] {
        let err = refused(&named(bad));
        assert!(
            err.starts_with("subscriptions[3] (https://hooks.example.com): name"),
            "{err}"
        );
    }
    let err = prepare_all(&[
        named("ops"),
        Subscription {
            name: Some("ops".to_owned()),
            ..entry("https://other.example.com/")
        },
    ])
    .unwrap_err();
    assert!(err.contains("the same name as subscriptions[0]"), "{err}");
}

#[test]
fn a_previous_secret_is_checked_like_the_secret_and_never_echoed() {
    let with = |previous: &str| Subscription {
        previous_secret: Some(Secret::new(previous)),
        ..entry("https://hooks.example.com/x")
    };
    let prepared = with("whsec_C2FtcGxlLXNlY3JldC1mb3ItZ2hvc3QtcnVubmVyISE=")
        .prepare(0)
        .unwrap();
    assert_eq!(prepared.previous_secret.map(|key| key.len()), Some(32));
    let err = refused(&with("whsec_c2hvcnQ="));
    assert!(err.contains("previous_secret must be whsec_"), "{err}");
    assert!(!err.contains("c2hvcnQ"), "{err}");
}
