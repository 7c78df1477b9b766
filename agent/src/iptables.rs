//! `trellis-agent init`: the iptables rules of transparent mode, as Istio's and Linkerd's
//! init containers install them. In the nat table of each address family (`iptables` for
//! IPv4, `ip6tables` for IPv6), chains of our own (`TRELLIS_*`) redirect the pod's inbound
//! TCP to the agent's inbound capture port and the pod's outbound TCP to its outbound
//! capture port; the agent's own connections (its UID) are left alone, which is how it
//! reaches the original destinations. [`rules`] and [`removal`] are pure (what `--dry-run`
//! prints is what is applied); [`install`] and [`uninstall`] run the `*-save`/`*-restore`
//! binaries, so the init container needs NET_ADMIN only.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
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

/// An address family: each has its own nat table and its own binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn save_binary(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    fn restore_binary(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    /// Where the application and the agent talk to each other, never captured.
    fn loopback(self) -> Cidr {
        match self {
            Family::V4 => Cidr { addr: IpAddr::V4(Ipv4Addr::LOCALHOST), len: 32 },
            Family::V6 => Cidr { addr: IpAddr::V6(Ipv6Addr::LOCALHOST), len: 128 },
        }
    }
}

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
    /// Of either family; each family's rules take its own.
    pub exclude_outbound_cidrs: Vec<Cidr>,
}

/// Which ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ports {
    All,
    Only(Vec<u16>),
}

/// An IP network, `a.b.c.d/len` or `x:y::z/len` (a bare address is a single host), held
/// as its base address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let t = s.trim();
        let (ip, len) = match t.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (t, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| {
            format!("{s:?} is not an IP network: {ip:?} is neither an IPv4 nor an IPv6 address")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| {
                format!("{s:?} is not an IP network: the prefix length must be 0 to {max}, not {l:?}")
            })?,
        };
        // The base address, as iptables-save prints the network back.
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Ok(Cidr { addr, len })
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

/// The `iptables-restore --noflush` (or `ip6tables-restore`) input that installs `plan` in
/// `family`'s nat table: deterministic, lists sorted, each rule as `*-save` prints it back.
pub fn rules(plan: &Plan, family: Family) -> String {
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
    let (uid, lo) = (plan.proxy_uid, family.loopback());
    rule(format!("-A {OUTPUT} ! -d {lo} -o lo -m owner --uid-owner {uid} -j {INBOUND}"));
    // Everything else the agent sends goes where it was sent.
    rule(format!("-A {OUTPUT} -m owner --uid-owner {uid} -j RETURN"));
    // The application and the agent talk over 127.0.0.1 or ::1 (the agent's admin, the
    // inbound forward); other IPv4 loopback addresses are captured, so a service's loopback
    // address works.
    rule(format!("-A {OUTPUT} -d {lo} -j RETURN"));
    for port in sorted(&plan.exclude_outbound_ports) {
        rule(format!("-A {OUTPUT} -p tcp -m tcp --dport {port} -j RETURN"));
    }
    for cidr in sorted(&plan.exclude_outbound_cidrs).into_iter().filter(|c| c.family() == family) {
        rule(format!("-A {OUTPUT} -d {cidr} -j RETURN"));
    }
    rule(format!("-A {OUTPUT} -j {OUT_REDIRECT}"));
    rule(format!("-A {OUT_REDIRECT} -p tcp -j REDIRECT --to-ports {}", plan.outbound_capture_port));
    out.push_str("COMMIT\n");
    out
}

/// What `--dry-run` prints: each family's restore input (`inputs` in [`Family::BOTH`]'s
/// order, `None` for nothing to do) under a comment line naming the binary it is for.
pub fn dry_run(inputs: [Option<String>; 2]) -> String {
    let mut out = String::new();
    for (family, input) in Family::BOTH.into_iter().zip(inputs) {
        let binary = family.restore_binary();
        match input {
            Some(input) => {
                let _ = write!(out, "# {}: {binary} --noflush\n{input}", family.name());
            }
            None => {
                let _ = writeln!(out, "# {}: nothing for {binary}", family.name());
            }
        }
    }
    out
}

/// The `*-restore --noflush` input that removes every rule and chain of ours from a nat
/// table as `iptables-save` or `ip6tables-save` printed it, or `None` when there is nothing of ours.
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

/// Replaces whatever rules of ours are installed with `plan`'s, in every family the
/// kernel has; the families it installed in.
pub fn install(plan: &Plan) -> anyhow::Result<Vec<Family>> {
    let families = families();
    for &family in &families {
        uninstall_family(family)?;
        restore(family, &rules(plan, family))?;
    }
    Ok(families)
}

/// Removes every rule and chain of ours, in every family the kernel has; true when there
/// was something to remove.
pub fn uninstall() -> anyhow::Result<bool> {
    let mut removed = false;
    for family in families() {
        removed |= uninstall_family(family)?;
    }
    Ok(removed)
}

fn uninstall_family(family: Family) -> anyhow::Result<bool> {
    match removal(&save(family)?) {
        Some(input) => restore(family, &input).map(|()| true),
        None => Ok(false),
    }
}

/// The families whose tables exist: IPv6 only when the kernel has it at all (a kernel
/// booted with `ipv6.disable=1` has no ip6tables, and no IPv6 traffic to capture either).
pub fn families() -> Vec<Family> {
    let v6 = std::path::Path::new("/proc/net/if_inet6").exists();
    Family::BOTH.into_iter().filter(|f| *f == Family::V4 || v6).collect()
}

/// `family`'s nat table as its `*-save` binary prints it.
pub fn save(family: Family) -> anyhow::Result<String> {
    let binary = family.save_binary();
    let out = Command::new(binary)
        .args(["-t", "nat"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| missing(binary, e))?;
    if !out.status.success() {
        return Err(anyhow!(
            "{binary} -t nat failed (the init step needs the NET_ADMIN capability, and the kernel \
             {} nat table): {}",
            family.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8(out.stdout).with_context(|| format!("{binary} printed something that is not UTF-8"))
}

fn restore(family: Family, input: &str) -> anyhow::Result<()> {
    let binary = family.restore_binary();
    let mut child = Command::new(binary)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| missing(binary, e))?;
    child.stdin.take().expect("piped").write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(anyhow!(
            "{binary} --noflush failed (the init step needs the NET_ADMIN capability): {}\ninput:\n{input}",
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
        .assert_eq(&rules(&plan(), Family::V4));
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
            exclude_outbound_cidrs: ["169.254.169.254", "fd00:ec2::254", "10.0.0.0/8", "2001:db8::/32"]
                .map(|c| c.parse().unwrap())
                .to_vec(),
        };
        let r = rules(&p, Family::V4);
        assert_eq!(r, rules(&p, Family::V4), "deterministic");
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
    fn each_family_takes_its_own_loopback_and_networks() {
        let p = Plan {
            exclude_outbound_cidrs: ["10.0.0.0/8", "fd00:ec2::254", "2001:db8::/32"]
                .map(|c| c.parse().unwrap())
                .to_vec(),
            ..plan()
        };
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
            -A TRELLIS_OUTPUT ! -d ::1/128 -o lo -m owner --uid-owner 1337 -j TRELLIS_INBOUND
            -A TRELLIS_OUTPUT -m owner --uid-owner 1337 -j RETURN
            -A TRELLIS_OUTPUT -d ::1/128 -j RETURN
            -A TRELLIS_OUTPUT -d 2001:db8::/32 -j RETURN
            -A TRELLIS_OUTPUT -d fd00:ec2::254/128 -j RETURN
            -A TRELLIS_OUTPUT -j TRELLIS_REDIRECT
            -A TRELLIS_REDIRECT -p tcp -j REDIRECT --to-ports 15001
            COMMIT
        "#]]
        .assert_eq(&rules(&p, Family::V6));
        let v4 = rules(&p, Family::V4);
        assert!(v4.contains("-A TRELLIS_OUTPUT -d 10.0.0.0/8 -j RETURN\n"), "{v4}");
        assert!(!v4.contains("::"), "no IPv6 network among the IPv4 rules: {v4}");
    }

    #[test]
    fn a_dry_run_names_each_familys_binary_above_its_input() {
        let out = dry_run([Some(rules(&plan(), Family::V4)), None]);
        let heads: Vec<&str> = out.lines().filter(|l| l.starts_with('#')).collect();
        assert_eq!(heads, ["# IPv4: iptables-restore --noflush", "# IPv6: nothing for ip6tables-restore"]);
        let both = dry_run(Family::BOTH.map(|f| Some(rules(&plan(), f))));
        let v6 = both.split_once("# IPv6: ip6tables-restore --noflush\n").unwrap().1;
        assert_eq!(v6, rules(&plan(), Family::V6));
    }

    #[test]
    fn networks_parse_to_their_base_and_bad_ones_are_named() {
        for (given, base) in [
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("10.1.2.3", "10.1.2.3/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("fd00::1:2/64", "fd00::/64"),
            ("FD00:0:0:0:0:0:0:1", "fd00::1/128"),
            ("2001:db8:ffff::/33", "2001:db8:8000::/33"),
            ("::/0", "::/0"),
        ] {
            let c: Cidr = given.parse().unwrap();
            assert_eq!(c.to_string(), base, "{given}");
        }
        assert_eq!("fd00::/8".parse::<Cidr>().unwrap().family(), Family::V6);
        for (bad, why) in [
            ("10.0.0.0/33", "0 to 32, not \"33\""),
            ("fd00::/129", "0 to 128, not \"129\""),
            ("ten/8", "\"ten\" is neither an IPv4 nor an IPv6 address"),
            ("10.0.0.0/", "0 to 32, not \"\""),
            ("fd00::/-1", "0 to 128"),
            ("[fd00::1]/64", "neither"),
        ] {
            let e = bad.parse::<Cidr>().unwrap_err();
            assert!(e.contains(&format!("{bad:?}")) && e.contains(why), "{bad}: {e}");
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
        for family in Family::BOTH {
            let undo = removal(&rules(&plan(), family)).unwrap();
            for chain in [INBOUND, IN_REDIRECT, OUTPUT, OUT_REDIRECT] {
                assert!(undo.contains(&format!("-X {chain}\n")), "{chain}: {undo}");
            }
            assert_eq!(undo.lines().filter(|l| l.starts_with("-D ")).count(), 2, "{undo}");
        }
    }
}
