//! Network namespaces for the tests that need more than one host
//! (`tests/tests/netns_partition.rs`, `tests/tests/netns_address_set.rs`):
//! two namespaces joined by a veth pair ([`Netns`]); several namespaces on
//! one bridge ([`Lan`], `tests/tests/netns_group.rs`); and the commands that
//! set them up. Creating them needs root (CAP_NET_ADMIN) and `ip`
//! (iproute2); the partition needs `nft` (nftables). The tests using them
//! are `#[ignore]`d, and run by `.ci/run` with `--ignored`.

use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command.
///
/// # Errors
/// The command line and its stderr when it cannot start or fails.
pub fn run(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs a command in namespace `ns` (`ip netns exec`).
///
/// # Errors
/// As [`run`].
pub fn run_in(ns: &str, args: &[&str]) -> Result<(), String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    run(&full)
}

/// Two namespaces joined by a veth pair, each end with an address of a
/// /24 of its own; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// The server's namespace.
    pub server_ns: String,
    /// The client's namespace.
    pub client_ns: String,
    /// The address of the server's end of the pair.
    pub server_ip: String,
    /// The address of the client's end of the pair.
    pub client_ip: String,
    /// The server's end of the pair.
    pub server_if: String,
}

impl Netns {
    /// Sets the pair up, or says why it cannot be done here.
    ///
    /// # Errors
    /// The command that failed, and its message.
    pub fn create() -> Result<Self, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}x{n}", std::process::id() % 100_000);
        let subnet = (10 + std::process::id() % 200 + n) % 250;
        let net = Self {
            server_ns: format!("crs{id}"),
            client_ns: format!("crc{id}"),
            server_ip: format!("10.203.{subnet}.1"),
            client_ip: format!("10.203.{subnet}.2"),
            server_if: format!("crvs{id}"),
        };
        let client_if = format!("crvc{id}");
        run(&["ip", "netns", "add", &net.server_ns])?;
        // From here on, drop cleans up whatever was made.
        run(&["ip", "netns", "add", &net.client_ns])?;
        run(&[
            "ip",
            "link",
            "add",
            &net.server_if,
            "netns",
            &net.server_ns,
            "type",
            "veth",
            "peer",
            "name",
            &client_if,
            "netns",
            &net.client_ns,
        ])?;
        for (ns, ifname, ip) in [
            (&net.server_ns, &net.server_if, &net.server_ip),
            (&net.client_ns, &client_if, &net.client_ip),
        ] {
            run_in(
                ns,
                &["ip", "addr", "add", &format!("{ip}/24"), "dev", ifname],
            )?;
            run_in(ns, &["ip", "link", "set", ifname, "up"])?;
            run_in(ns, &["ip", "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// Sets the server's end of the pair up or down.
    ///
    /// # Panics
    /// If `ip` fails.
    pub fn link(&self, up: bool) {
        run_in(
            &self.server_ns,
            &[
                "ip",
                "link",
                "set",
                &self.server_if,
                if up { "up" } else { "down" },
            ],
        )
        .unwrap();
    }

    /// Drops every packet from the client at the server's side (and back),
    /// with an nftables table of the server namespace's own.
    ///
    /// # Panics
    /// If `nft` fails.
    pub fn partition(&self) {
        let rules = format!(
            "table inet courier_partition {{\n\
               chain input {{ type filter hook input priority 0; policy accept; ip saddr {c} drop; }}\n\
               chain output {{ type filter hook output priority 0; policy accept; ip daddr {c} drop; }}\n\
             }}\n",
            c = self.client_ip
        );
        let path = crate::unique_temp_path("nft-rules");
        std::fs::write(&path, rules).unwrap();
        let outcome = run_in(&self.server_ns, &["nft", "-f", &path.display().to_string()]);
        let _ = std::fs::remove_file(&path);
        outcome.unwrap();
    }

    /// Deletes the table of [`Netns::partition`].
    ///
    /// # Panics
    /// If `nft` fails.
    pub fn heal(&self) {
        run_in(
            &self.server_ns,
            &["nft", "delete", "table", "inet", "courier_partition"],
        )
        .unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and with it
        // the other end; its nftables tables go with it too.
        let _ = run(&["ip", "netns", "del", &self.server_ns]);
        let _ = run(&["ip", "netns", "del", &self.client_ns]);
    }
}

/// Several namespaces on one Ethernet segment: a bridge in a namespace of
/// its own (the hub), and one veth pair from each host namespace to it,
/// each host with an address of one /24. Partitions between sets of hosts
/// are nftables tables in the hosts' namespaces. Deleted on drop.
#[derive(Debug)]
pub struct Lan {
    /// The hub's namespace, holding the bridge.
    hub: String,
    /// The hosts' namespaces, in order.
    pub hosts: Vec<String>,
    /// The hosts' addresses, in the same order.
    pub ips: Vec<String>,
}

/// The nftables table of [`Lan::partition`].
const LAN_TABLE: &str = "courier_lan_partition";

impl Lan {
    /// Makes `hosts` namespaces on one bridge, or says why it cannot.
    ///
    /// # Errors
    /// The command that failed, and its message.
    pub fn create(hosts: usize) -> Result<Self, String> {
        assert!((1..=200).contains(&hosts), "1 to 200 hosts");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}x{n}", std::process::id() % 100_000);
        let subnet = (10 + std::process::id() % 200 + n) % 250;
        let mut lan = Self {
            hub: format!("crlh{id}"),
            hosts: Vec::new(),
            ips: Vec::new(),
        };
        run(&["ip", "netns", "add", &lan.hub])?;
        // From here on, drop cleans up whatever was made.
        run_in(&lan.hub, &["ip", "link", "add", "br0", "type", "bridge"])?;
        run_in(&lan.hub, &["ip", "link", "set", "br0", "up"])?;
        run_in(&lan.hub, &["ip", "link", "set", "lo", "up"])?;
        for h in 0..hosts {
            let ns = format!("crl{h}h{id}");
            run(&["ip", "netns", "add", &ns])?;
            lan.hosts.push(ns.clone());
            let ip = format!("10.204.{subnet}.{}", h + 1);
            lan.ips.push(ip.clone());
            let port = format!("p{h}");
            run(&[
                "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port,
                "netns", &lan.hub,
            ])?;
            run_in(&lan.hub, &["ip", "link", "set", &port, "master", "br0"])?;
            run_in(&lan.hub, &["ip", "link", "set", &port, "up"])?;
            run_in(
                &ns,
                &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
            )?;
            run_in(&ns, &["ip", "link", "set", "eth0", "up"])?;
            run_in(&ns, &["ip", "link", "set", "lo", "up"])?;
        }
        Ok(lan)
    }

    /// Cuts every host of `a` off from every host of `b` (indices into
    /// [`Lan::hosts`]), both ways: each host of either set drops the other
    /// set's packets in and out, with an nftables table of its own. The
    /// hosts of one set still reach each other.
    ///
    /// # Panics
    /// If `nft` fails.
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        for (mine, theirs) in [(a, b), (b, a)] {
            let others: Vec<&str> = theirs.iter().map(|&h| self.ips[h].as_str()).collect();
            let set = others.join(", ");
            let rules = format!(
                "table inet {LAN_TABLE} {{\n\
                   chain input {{ type filter hook input priority 0; policy accept; ip saddr {{ {set} }} drop; }}\n\
                   chain output {{ type filter hook output priority 0; policy accept; ip daddr {{ {set} }} drop; }}\n\
                 }}\n"
            );
            let path = crate::unique_temp_path("nft-rules");
            std::fs::write(&path, rules).unwrap();
            for &h in mine {
                let outcome = run_in(&self.hosts[h], &["nft", "-f", &path.display().to_string()]);
                if let Err(e) = outcome {
                    let _ = std::fs::remove_file(&path);
                    panic!("{e}");
                }
            }
            let _ = std::fs::remove_file(&path);
        }
    }

    /// Deletes the tables of [`Lan::partition`] (of the hosts that have one).
    pub fn heal(&self) {
        for ns in &self.hosts {
            let _ = run_in(ns, &["nft", "delete", "table", "inet", LAN_TABLE]);
        }
    }

    /// Sets host `h`'s link to the bridge up or down.
    ///
    /// # Panics
    /// If `ip` fails.
    pub fn link(&self, h: usize, up: bool) {
        run_in(
            &self.hosts[h],
            &["ip", "link", "set", "eth0", if up { "up" } else { "down" }],
        )
        .unwrap();
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth ends (and their peers) and
        // its nftables tables.
        for ns in &self.hosts {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        let _ = run(&["ip", "netns", "del", &self.hub]);
    }
}

/// Why namespaces cannot be made here, if `ip` is missing.
pub fn missing_ip() -> Option<String> {
    run(&["ip", "-V"])
        .err()
        .map(|_| "the `ip` command (iproute2) is missing".into())
}

/// Why [`Netns::partition`] cannot run here, if `ip` or `nft` is missing.
pub fn missing_ip_or_nft() -> Option<String> {
    missing_ip().or_else(|| {
        run(&["nft", "--version"])
            .err()
            .map(|_| "the `nft` command is missing (Debian package `nftables`)".into())
    })
}

/// Starts `server` (the `conformance_server` binary: integration tests
/// pass `env!("CARGO_BIN_EXE_conformance_server")`) in namespace `ns`,
/// listening at `listen`; returns it and the address it printed.
pub async fn serve_in(ns: &str, server: &str, listen: &str) -> (crate::Process, String) {
    let mut process = crate::Process::spawn(
        std::path::Path::new("ip"),
        &["netns", "exec", ns, server, listen],
    );
    let address = process.expect_line("ADDRESS ").await;
    (process, address)
}
