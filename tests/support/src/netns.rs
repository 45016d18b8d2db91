//! A network namespace of a test's own, behind a veth pair to the host: a
//! peer inside can be silenced mid-connection by an iptables `DROP` rule,
//! so that it sends neither FIN nor RST and acknowledges nothing.
//!
//! Linux only, and root only (namespaces, veth, iptables): [`Netns::create`]
//! fails the test with a message saying so. Dropping a [`Netns`] deletes the
//! namespace, which removes the veth pair and the namespace's iptables rules
//! with it.

use std::io;
use std::net::Ipv4Addr;
use std::process::Command;

/// A network namespace with a veth pair to the host, on a `/30` of its own.
#[derive(Debug)]
pub struct Netns {
    name: String,
    host_link: String,
    ip: Ipv4Addr,
}

impl Netns {
    /// Sets up a namespace on `10.231.<subnet>.<base>/30`: host side
    /// `.base+1`, namespace side `.base+2`. `prefix` (one letter per test
    /// binary) and `tag` (one letter per test) keep the names of parallel
    /// tests apart; `who` names the test file in the message of a run
    /// without root.
    pub fn create(who: &str, prefix: &str, tag: &str, subnet: u8, base: u8) -> io::Result<Netns> {
        assert!(
            is_root(),
            "{who} needs root (network namespaces, veth, iptables); run it as root, as CI does"
        );
        let pid = std::process::id();
        let host_ip = Ipv4Addr::new(10, 231, subnet, base + 1);
        let ns = Netns {
            name: format!("redial-{pid}-{prefix}{tag}"),
            // Interface names have at most 15 bytes.
            host_link: format!("{prefix}h{pid}{tag}"),
            ip: Ipv4Addr::new(10, 231, subnet, base + 2),
        };
        let ns_link = format!("{prefix}n{pid}{tag}");
        run("ip", &["netns", "add", &ns.name])?;
        // From here on, `ns`'s drop cleans up whatever was made.
        run(
            "ip",
            &[
                "link",
                "add",
                &ns.host_link,
                "type",
                "veth",
                "peer",
                "name",
                &ns_link,
            ],
        )?;
        run("ip", &["link", "set", &ns_link, "netns", &ns.name])?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{host_ip}/30"),
                "dev",
                &ns.host_link,
            ],
        )?;
        run("ip", &["link", "set", &ns.host_link, "up"])?;
        let ns_ip = format!("{}/30", ns.ip);
        ns.exec(&["ip", "addr", "add", &ns_ip, "dev", &ns_link])?;
        ns.exec(&["ip", "link", "set", &ns_link, "up"])?;
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace side's address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// `program` to run inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Runs `args` inside the namespace, failing if it fails.
    pub fn exec(&self, args: &[&str]) -> io::Result<()> {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Silences `port` inside the namespace: everything sent to it is
    /// dropped, with no RST and no FIN back (new SYNs too).
    pub fn drop_traffic(&self, port: u16) {
        self.iptables("-A", port).expect("add the DROP rule");
    }

    /// Removes the rule of [`drop_traffic`](Self::drop_traffic) again.
    pub fn restore_traffic(&self, port: u16) {
        self.iptables("-D", port).expect("delete the DROP rule");
    }

    fn iptables(&self, op: &str, port: u16) -> io::Result<()> {
        let port = port.to_string();
        self.exec(&[
            "iptables", op, "INPUT", "-p", "tcp", "--dport", &port, "-j", "DROP",
        ])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "delete", &self.name]);
        // Normally gone with the namespace; in case the setup stopped halfway.
        let _ = run("ip", &["link", "delete", &self.host_link]);
    }
}

/// Runs `program` with `args`, failing with its stderr if it fails.
fn run(program: &str, args: &[&str]) -> io::Result<()> {
    let output = Command::new(program).args(args).output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?.to_owned();
            Some(line.split_whitespace().nth(2)? == "0")
        })
        .unwrap_or(false)
}
