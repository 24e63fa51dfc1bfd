//! Network namespaces for the partition tests: one namespace per service, each with one veth
//! into a bridge in a hub namespace, and one veth from the hub into the test's own namespace
//! (so the test reaches every service, and a partition between two services leaves the test's
//! view alone). Addresses: `10.231.<subnet>.<n>/24`, the test at `.254`.
//!
//! The subnet is claimed by creating the hub namespace `ghost-net-<subnet>` (creation fails if
//! it exists, so two test processes never share one); the services' namespaces are named
//! `ghost-<pid>-<counter>-<service>`. Everything is removed when [`Net`] is dropped, also when
//! a test fails: the namespaces (which takes their veths with them) and the test's veth.
//!
//! Faults: [`Net::partition`] drops every packet between two services with `iptables` in both
//! of their namespaces (DROP, not REJECT: the peer sees silence, as behind a dead link),
//! [`Net::heal`] flushes the rules; [`Net::degrade`] adds delay and loss with `tc netem`.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Why the partition tests cannot run here, if they cannot (not root, a tool missing, no
/// namespace support); `None` when they can.
pub fn unsupported() -> Option<String> {
    if !ghost_testkit::disk::is_root() {
        return Some("not root: network namespaces need root (CI runs as root)".to_owned());
    }
    for tool in ["ip", "iptables", "tc"] {
        let found = Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|out| out.status.success());
        if !found {
            return Some(format!(
                "`{tool}` is missing (Debian: iproute2 for ip and tc, iptables)"
            ));
        }
    }
    None
}

/// Runs `program args`, returning its stderr on failure.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|err| format!("{program} {}: {err}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `program args` and panics with its stderr on failure.
fn must(program: &str, args: &[&str]) {
    if let Err(err) = run(program, args) {
        panic!("{err}");
    }
}

/// One test's namespaces; removed on drop.
pub struct Net {
    subnet: u8,
    hub: String,
    host_veth: String,
    /// The services' namespaces, in the order given to [`Net::create`] (addresses `.1`, `.2`…).
    services: Vec<(String, String)>,
}

impl Net {
    /// Namespaces for `services` (each gets the address `.1`, `.2`… in order).
    pub fn create(services: &[&str]) -> Self {
        let pid = std::process::id();
        let counter = COUNTER.fetch_add(1, Ordering::SeqCst);
        // Spread the first guesses so parallel test processes rarely try the same subnet.
        let start = (pid as usize * 7 + counter as usize * 13) % 200;
        let subnet = (0..200)
            .map(|offset| u8::try_from(20 + (start + offset) % 200).expect("below 256"))
            .find(|subnet| run("ip", &["netns", "add", &format!("ghost-net-{subnet}")]).is_ok())
            .expect("a free 10.231.x.0/24 (ghost-net-x namespaces left over? `ip netns list`)");
        let mut net = Self {
            subnet,
            hub: format!("ghost-net-{subnet}"),
            host_veth: format!("ghostnet{subnet}"),
            services: Vec::new(),
        };
        for service in services {
            net.services.push((
                (*service).to_owned(),
                format!("ghost-{pid}-{counter}-{service}"),
            ));
        }
        net.wire();
        net
    }

    fn wire(&self) {
        let hub = self.hub.as_str();
        must("ip", &["-n", hub, "link", "add", "br0", "type", "bridge"]);
        must("ip", &["-n", hub, "link", "set", "br0", "up"]);
        for (index, (_, ns)) in self.services.iter().enumerate() {
            must("ip", &["netns", "add", ns]);
            let port = format!("port{}", index + 1);
            must(
                "ip",
                &[
                    "-n", hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", ns,
                ],
            );
            must(
                "ip",
                &["-n", hub, "link", "set", &port, "master", "br0", "up"],
            );
            let address = format!("{}/24", self.address(index + 1));
            must("ip", &["-n", ns, "addr", "add", &address, "dev", "eth0"]);
            must("ip", &["-n", ns, "link", "set", "eth0", "up"]);
            must("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        must(
            "ip",
            &[
                "link",
                "add",
                &self.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                "uplink",
                "netns",
                hub,
            ],
        );
        must(
            "ip",
            &["-n", hub, "link", "set", "uplink", "master", "br0", "up"],
        );
        let address = format!("{}/24", self.test_address());
        must("ip", &["addr", "add", &address, "dev", &self.host_veth]);
        must("ip", &["link", "set", &self.host_veth, "up"]);
    }

    fn address(&self, host: usize) -> Ipv4Addr {
        Ipv4Addr::new(
            10,
            231,
            self.subnet,
            u8::try_from(host).expect("few services"),
        )
    }

    fn index(&self, service: &str) -> usize {
        self.services
            .iter()
            .position(|(name, _)| name == service)
            .unwrap_or_else(|| panic!("no namespace for {service}"))
    }

    /// The address of `service`.
    pub fn ip(&self, service: &str) -> Ipv4Addr {
        self.address(self.index(service) + 1)
    }

    /// The test's own address on the bridge (for fakes the services call, e.g. Slack).
    pub fn test_address(&self) -> Ipv4Addr {
        self.address(254)
    }

    /// The namespace of `service`.
    pub fn namespace(&self, service: &str) -> &str {
        &self.services[self.index(service)].1
    }

    /// Drops every packet between `a` and `b`, in both directions, in both namespaces.
    pub fn partition(&self, a: &str, b: &str) {
        for (here, there) in [(a, b), (b, a)] {
            let ns = self.namespace(here);
            let peer = self.ip(there).to_string();
            must(
                "ip",
                &[
                    "netns", "exec", ns, "iptables", "-A", "INPUT", "-s", &peer, "-j", "DROP",
                ],
            );
            must(
                "ip",
                &[
                    "netns", "exec", ns, "iptables", "-A", "OUTPUT", "-d", &peer, "-j", "DROP",
                ],
            );
        }
    }

    /// Removes every drop rule and qdisc added to `a`'s and `b`'s namespaces.
    pub fn heal(&self, a: &str, b: &str) {
        for here in [a, b] {
            let ns = self.namespace(here);
            must("ip", &["netns", "exec", ns, "iptables", "-F"]);
            // No qdisc to remove is fine.
            let _ = run(
                "ip",
                &[
                    "netns", "exec", ns, "tc", "qdisc", "del", "dev", "eth0", "root",
                ],
            );
        }
    }

    /// Delay and loss on everything `a` sends to `b` and `b` to `a` (`tc netem` on both
    /// ends). Where the kernel has no netem (some VMs), the loss is made with `iptables`'
    /// `statistic` match instead and the delay is left out; the answer says which was done.
    pub fn degrade(&self, a: &str, b: &str, delay_ms: u32, loss_percent: u32) -> String {
        let delay = format!("{delay_ms}ms");
        let loss = format!("{loss_percent}%");
        let netem = [a, b].iter().try_for_each(|here| {
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    self.namespace(here),
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    "eth0",
                    "root",
                    "netem",
                    "delay",
                    &delay,
                    "loss",
                    &loss,
                ],
            )
        });
        match netem {
            Ok(()) => format!("tc netem {delay} delay, {loss} loss each way"),
            Err(err) => {
                let probability = format!("{:.2}", f64::from(loss_percent) / 100.0);
                for (here, there) in [(a, b), (b, a)] {
                    let peer = self.ip(there).to_string();
                    must(
                        "ip",
                        &[
                            "netns",
                            "exec",
                            self.namespace(here),
                            "iptables",
                            "-A",
                            "OUTPUT",
                            "-d",
                            &peer,
                            "-m",
                            "statistic",
                            "--mode",
                            "random",
                            "--probability",
                            &probability,
                            "-j",
                            "DROP",
                        ],
                    );
                }
                eprintln!("tc netem is unavailable here, so no delay: {err}");
                format!("{loss} loss each way (iptables statistic; no netem, so no delay)")
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // The processes in them are gone first (their guards drop before this one); deleting a
        // namespace deletes its end of each veth, and so the other end.
        for (_, ns) in &self.services {
            let _ = run("ip", &["netns", "del", ns]);
        }
        let _ = run("ip", &["link", "del", &self.host_veth]);
        let _ = run("ip", &["netns", "del", &self.hub]);
    }
}
