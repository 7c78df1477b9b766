//! `trellis-agent init`: the iptables rules of transparent mode, as Istio's and Linkerd's
//! init containers install them. In the nat table, chains of our own (`TRELLIS_*`) redirect
//! the pod's inbound TCP to the agent's inbound capture port and the pod's outbound TCP to
//! its outbound capture port; the agent's own connections (its UID) are left alone, which is
//! how it reaches the original destinations. [`rules`] and [`removal`] are pure (what
//! `--dry-run` prints is what is applied); [`install`] and [`uninstall`] run the
//! `iptables-save`/`iptables-restore` binaries, so the init container needs NET_ADMIN only.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{Context, anyhow};

/// Jumped to from PREROUTING: inbound connections, redirected unless their port is exempt.
const INBOUND: &str = "TRELLIS_INBOUND";
const IN_REDIRECT: &str = "TRELLIS_IN_REDIRECT";
/// Jumped to from OUTPUT: the pod's own connections, redirected unless exempt.
const OUTPUT: &str = "TRELLIS_OUTPUT";
const OUT_REDIRECT: &str = "TRELLIS_REDIRECT";
/// Every chain of ours begins so; nothing else in the table is touched.
const PREFIX: &str = "TRELLIS_";

/// What to capture and where to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub inbound_capture_port: u16,
    pub outbound_capture_port: u16,
    /// Connections of this UID (the agent's) are never redirected.
    pub proxy_uid: u32,
    /// Inbound ports to capture.
    pub inbound_ports: Ports,
    pub exclude_inbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub exclude_outbound_cidrs: Vec<Cidr>,
}

/// Which ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ports {
    All,
    Only(Vec<u16>),
}

/// An IPv4 network, `a.b.c.d/len` (a bare address is a /32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (ip, len) = s.trim().split_once('/').unwrap_or((s.trim(), "32"));
        let bad = || format!("{s:?} is not an IPv4 network (a.b.c.d/len)");
        let addr: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().ok().filter(|l| *l <= 32).ok_or_else(bad)?;
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        Ok(Cidr { addr: Ipv4Addr::from(u32::from(addr) & mask), len })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn sorted<T: Ord + Copy>(items: &[T]) -> Vec<T> {
    let mut v = items.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

/// The `iptables-restore --noflush` input that installs `plan`: deterministic, lists sorted,
/// each rule as `iptables-save` prints it back.
pub fn rules(plan: &Plan) -> String {
    let mut out = String::from("*nat\n");
    for chain in [INBOUND, IN_REDIRECT, OUTPUT, OUT_REDIRECT] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    let mut rule = |r: String| {
        out.push_str(&r);
        out.push('\n');
    };
    rule(format!("-A PREROUTING -p tcp -j {INBOUND}"));
    rule(format!("-A OUTPUT -p tcp -j {OUTPUT}"));

    // Inbound: to the inbound capture port, but for exempt ports.
    for port in sorted(&plan.exclude_inbound_ports) {
        rule(format!("-A {INBOUND} -p tcp -m tcp --dport {port} -j RETURN"));
    }
    match &plan.inbound_ports {
        Ports::All => rule(format!("-A {INBOUND} -p tcp -j {IN_REDIRECT}")),
        Ports::Only(ports) => {
            for port in sorted(ports) {
                rule(format!("-A {INBOUND} -p tcp -m tcp --dport {port} -j {IN_REDIRECT}"));
            }
        }
    }
    rule(format!("-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {}", plan.inbound_capture_port));

    // Outbound. The agent calling its own pod's address (the application calling itself
    // through the mesh) crosses loopback and never meets PREROUTING: treat it as inbound.
    let uid = plan.proxy_uid;
    rule(format!("-A {OUTPUT} ! -d 127.0.0.1/32 -o lo -m owner --uid-owner {uid} -j {INBOUND}"));
    // Everything else the agent sends goes where it was sent.
    rule(format!("-A {OUTPUT} -m owner --uid-owner {uid} -j RETURN"));
    // The application and the agent talk over 127.0.0.1 (the agent's admin, the inbound
    // forward); other loopback addresses are captured, so a service's loopback address works.
    rule(format!("-A {OUTPUT} -d 127.0.0.1/32 -j RETURN"));
    for port in sorted(&plan.exclude_outbound_ports) {
        rule(format!("-A {OUTPUT} -p tcp -m tcp --dport {port} -j RETURN"));
    }
    for cidr in sorted(&plan.exclude_outbound_cidrs) {
        rule(format!("-A {OUTPUT} -d {cidr} -j RETURN"));
    }
    rule(format!("-A {OUTPUT} -j {OUT_REDIRECT}"));
    rule(format!("-A {OUT_REDIRECT} -p tcp -j REDIRECT --to-ports {}", plan.outbound_capture_port));
    out.push_str("COMMIT\n");
    out
}

/// The `iptables-restore --noflush` input that removes every rule and chain of ours from
/// the nat table as `iptables-save` printed it, or `None` when there is nothing of ours.
/// Jumps into our chains go first, then our chains are flushed, then deleted.
pub fn removal(saved_nat: &str) -> Option<String> {
    let ours = |chain: &str| chain.starts_with(PREFIX);
    let mut jumps = Vec::new();
    let mut chains = Vec::new();
    for line in saved_nat.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or_default();
            if ours(name) {
                chains.push(name.to_owned());
            }
        } else if let Some(spec) = line.strip_prefix("-A ") {
            let chain = spec.split_whitespace().next().unwrap_or_default();
            let target = spec.split(" -j ").nth(1).and_then(|t| t.split_whitespace().next());
            if !ours(chain) && target.is_some_and(ours) {
                jumps.push(format!("-D {spec}"));
            }
        }
    }
    if jumps.is_empty() && chains.is_empty() {
        return None;
    }
    let mut out = String::from("*nat\n");
    for line in jumps {
        let _ = writeln!(out, "{line}");
    }
    for c in &chains {
        let _ = writeln!(out, "-F {c}");
    }
    for c in &chains {
        let _ = writeln!(out, "-X {c}");
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// Replaces whatever rules of ours are installed with `plan`'s.
pub fn install(plan: &Plan) -> anyhow::Result<()> {
    uninstall()?;
    restore(&rules(plan))
}

/// Removes every rule and chain of ours; true when there was something to remove.
pub fn uninstall() -> anyhow::Result<bool> {
    match removal(&save()?) {
        Some(input) => restore(&input).map(|()| true),
        None => Ok(false),
    }
}

/// The nat table as `iptables-save` prints it.
pub fn save() -> anyhow::Result<String> {
    let out = Command::new("iptables-save")
        .args(["-t", "nat"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| missing("iptables-save", e))?;
    if !out.status.success() {
        return Err(anyhow!(
            "iptables-save -t nat failed (the init step needs the NET_ADMIN capability): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8(out.stdout).context("iptables-save printed something that is not UTF-8")
}

fn restore(input: &str) -> anyhow::Result<()> {
    let mut child = Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| missing("iptables-restore", e))?;
    child.stdin.take().expect("piped").write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(anyhow!(
            "iptables-restore --noflush failed (the init step needs the NET_ADMIN capability): {}\ninput:\n{input}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn missing(binary: &str, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        anyhow!("{binary} not found: install iptables (Debian/Ubuntu: apt install iptables)")
    } else {
        anyhow!("cannot run {binary}: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            inbound_capture_port: 15006,
            outbound_capture_port: 15001,
            proxy_uid: 1337,
            inbound_ports: Ports::All,
            exclude_inbound_ports: vec![15000],
            exclude_outbound_ports: vec![],
            exclude_outbound_cidrs: vec![],
        }
    }

    #[test]
    fn the_default_plan_redirects_both_ways_and_spares_the_agent_and_127_0_0_1() {
        expect_test::expect![[r#"
            *nat
            :TRELLIS_INBOUND - [0:0]
            :TRELLIS_IN_REDIRECT - [0:0]
            :TRELLIS_OUTPUT - [0:0]
            :TRELLIS_REDIRECT - [0:0]
            -A PREROUTING -p tcp -j TRELLIS_INBOUND
            -A OUTPUT -p tcp -j TRELLIS_OUTPUT
            -A TRELLIS_INBOUND -p tcp -m tcp --dport 15000 -j RETURN
            -A TRELLIS_INBOUND -p tcp -j TRELLIS_IN_REDIRECT
            -A TRELLIS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
            -A TRELLIS_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j TRELLIS_INBOUND
            -A TRELLIS_OUTPUT -m owner --uid-owner 1337 -j RETURN
            -A TRELLIS_OUTPUT -d 127.0.0.1/32 -j RETURN
            -A TRELLIS_OUTPUT -j TRELLIS_REDIRECT
            -A TRELLIS_REDIRECT -p tcp -j REDIRECT --to-ports 15001
            COMMIT
        "#]]
        .assert_eq(&rules(&plan()));
    }

    #[test]
    fn exclusions_and_chosen_ports_come_out_sorted_once() {
        let p = Plan {
            inbound_capture_port: 16006,
            outbound_capture_port: 16001,
            proxy_uid: 2020,
            inbound_ports: Ports::Only(vec![9080, 8080, 9080]),
            exclude_inbound_ports: vec![22, 15000, 22],
            exclude_outbound_ports: vec![5432, 443],
            exclude_outbound_cidrs: vec!["169.254.169.254".parse().unwrap(), "10.0.0.0/8".parse().unwrap()],
        };
        let r = rules(&p);
        assert_eq!(r, rules(&p), "deterministic");
        let body: Vec<&str> = r.lines().filter(|l| l.starts_with("-A TRELLIS_")).collect();
        assert_eq!(
            body,
            [
                "-A TRELLIS_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
                "-A TRELLIS_INBOUND -p tcp -m tcp --dport 15000 -j RETURN",
                "-A TRELLIS_INBOUND -p tcp -m tcp --dport 8080 -j TRELLIS_IN_REDIRECT",
                "-A TRELLIS_INBOUND -p tcp -m tcp --dport 9080 -j TRELLIS_IN_REDIRECT",
                "-A TRELLIS_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006",
                "-A TRELLIS_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 2020 -j TRELLIS_INBOUND",
                "-A TRELLIS_OUTPUT -m owner --uid-owner 2020 -j RETURN",
                "-A TRELLIS_OUTPUT -d 127.0.0.1/32 -j RETURN",
                "-A TRELLIS_OUTPUT -p tcp -m tcp --dport 443 -j RETURN",
                "-A TRELLIS_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN",
                "-A TRELLIS_OUTPUT -d 10.0.0.0/8 -j RETURN",
                "-A TRELLIS_OUTPUT -d 169.254.169.254/32 -j RETURN",
                "-A TRELLIS_OUTPUT -j TRELLIS_REDIRECT",
                "-A TRELLIS_REDIRECT -p tcp -j REDIRECT --to-ports 16001",
            ]
        );
    }

    #[test]
    fn networks_parse_to_their_base_and_bad_ones_are_named() {
        assert_eq!("10.1.2.3/8".parse::<Cidr>().unwrap().to_string(), "10.0.0.0/8");
        assert_eq!("10.1.2.3".parse::<Cidr>().unwrap().to_string(), "10.1.2.3/32");
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().to_string(), "0.0.0.0/0");
        for bad in ["10.0.0.0/33", "fd00::/8", "ten/8", "10.0.0.0/"] {
            assert!(bad.parse::<Cidr>().unwrap_err().contains(bad), "{bad}");
        }
    }

    #[test]
    fn removal_takes_out_our_jumps_and_chains_and_nothing_else() {
        let saved = "# Generated by iptables-save\n*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
            :DOCKER - [0:0]\n:TRELLIS_INBOUND - [0:0]\n:TRELLIS_OUTPUT - [0:0]\n\
            -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
            -A PREROUTING -p tcp -j TRELLIS_INBOUND\n-A OUTPUT -p tcp -j TRELLIS_OUTPUT\n\
            -A TRELLIS_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j TRELLIS_INBOUND\n\
            -A TRELLIS_INBOUND -p tcp -j TRELLIS_IN_REDIRECT\nCOMMIT\n";
        expect_test::expect![[r#"
            *nat
            -D PREROUTING -p tcp -j TRELLIS_INBOUND
            -D OUTPUT -p tcp -j TRELLIS_OUTPUT
            -F TRELLIS_INBOUND
            -F TRELLIS_OUTPUT
            -X TRELLIS_INBOUND
            -X TRELLIS_OUTPUT
            COMMIT
        "#]]
        .assert_eq(&removal(saved).unwrap());
        assert_eq!(removal("*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j DOCKER\nCOMMIT\n"), None);
        // What `rules` installs, `removal` takes out whole.
        let installed = rules(&plan());
        let undo = removal(&installed).unwrap();
        for chain in [INBOUND, IN_REDIRECT, OUTPUT, OUT_REDIRECT] {
            assert!(undo.contains(&format!("-X {chain}\n")), "{chain}: {undo}");
        }
        assert_eq!(undo.lines().filter(|l| l.starts_with("-D ")).count(), 2, "{undo}");
    }
}
