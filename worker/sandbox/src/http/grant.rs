//! Outbound grants: `scheme://host[:port]` entries of a manifest's
//! `[grants] outbound` and of the operator's `sandbox.caps.outbound`, how a
//! request is matched against them, and which addresses count as private.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The scheme of a grant or a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    /// Plain HTTP (default port 80).
    Http,
    /// HTTP over TLS (default port 443).
    Https,
}

impl Scheme {
    /// `http` or `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// The port a grant without one means.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// The host part of a grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// Exactly this DNS name (lowercase, no trailing dot).
    Name(String),
    /// `*.domain`: any name with at least one label before `.domain`
    /// (stored without the `*.`), never `domain` itself.
    Subdomains(String),
    /// Exactly this address, and only it: the one kind of grant that can
    /// reach a private address.
    Ip(IpAddr),
}

/// The port part of a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortPattern {
    /// Only this port.
    Exactly(u16),
    /// `*`: any port.
    Any,
}

/// One outbound grant, `scheme://host[:port]`, e.g. `https://api.example.com`,
/// `http://127.0.0.1:8080` or `https://*.example.org:*`. A bare host means
/// the scheme's default port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutboundGrant {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// A name, `*.domain` or an IP literal.
    pub host: HostPattern,
    /// A port, or any.
    pub port: PortPattern,
}

/// Why a grant does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "outbound grant {entry:?}: {why} (expected scheme://host[:port], e.g. \"https://api.example.com\" or \"http://127.0.0.1:8080\")"
)]
pub struct GrantSyntaxError {
    /// The entry as written.
    pub entry: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl FromStr for OutboundGrant {
    type Err = GrantSyntaxError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let err = |why| GrantSyntaxError {
            entry: entry.to_owned(),
            why,
        };
        let (scheme, rest) = entry.split_once("://").ok_or_else(|| err("no scheme"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(err("the scheme must be http or https")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(err("a grant has no path, query or user part"));
        }
        // `[v6]` or `[v6]:port`; otherwise `host` or `host:port`.
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (addr, after) = v6.split_once(']').ok_or_else(|| err("unclosed ["))?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| err("junk after ]"))?),
            };
            let ip = addr
                .parse::<Ipv6Addr>()
                .map_err(|_| err("not an IPv6 address inside [ ]"))?;
            (HostPattern::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            };
            (parse_host(host).map_err(err)?, port)
        };
        let port = match port {
            None => PortPattern::Exactly(scheme.default_port()),
            Some("*") => PortPattern::Any,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => PortPattern::Exactly(n),
                _ => return Err(err("the port must be 1 to 65535 or *")),
            },
        };
        Ok(Self { scheme, host, port })
    }
}

fn parse_host(host: &str) -> Result<HostPattern, &'static str> {
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(HostPattern::Ip(IpAddr::V4(ip)));
    }
    let (wild, name) = match host.strip_prefix("*.") {
        Some(domain) => (true, domain),
        None => (false, host),
    };
    let name = normalize_name(name)
        .ok_or("the host must be a DNS name, *.domain or an IP literal (IPv6 in [ ])")?;
    if wild {
        Ok(HostPattern::Subdomains(name))
    } else {
        Ok(HostPattern::Name(name))
    }
}

/// A DNS name in lowercase without its trailing dot, if it is one: labels of
/// 1 to 63 letters, digits and hyphens, 253 bytes at most, and not all
/// digits and dots (that would be an IPv4 address in disguise).
pub(crate) fn normalize_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    ok.then_some(name)
}

impl fmt::Display for OutboundGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.as_str())?;
        match &self.host {
            HostPattern::Name(n) => f.write_str(n)?,
            HostPattern::Subdomains(d) => write!(f, "*.{d}")?,
            HostPattern::Ip(IpAddr::V4(ip)) => write!(f, "{ip}")?,
            HostPattern::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
        }
        match self.port {
            PortPattern::Exactly(p) if p == self.scheme.default_port() => Ok(()),
            PortPattern::Exactly(p) => write!(f, ":{p}"),
            PortPattern::Any => f.write_str(":*"),
        }
    }
}

impl TryFrom<String> for OutboundGrant {
    type Error = GrantSyntaxError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<OutboundGrant> for String {
    fn from(g: OutboundGrant) -> Self {
        g.to_string()
    }
}

impl serde::Serialize for OutboundGrant {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for OutboundGrant {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for OutboundGrant {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "OutboundGrant".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "scheme://host[:port]: http or https; a DNS name, *.domain or an IP literal ([v6]); a port or * (default: the scheme's)",
            "pattern": "^https?://",
        })
    }
}

/// The host a request names, as the grant check sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RequestHost {
    /// A DNS name, normalized.
    Name(String),
    /// An IP literal.
    Ip(IpAddr),
}

impl RequestHost {
    /// Parses the host of a request's authority (`[v6]` bracketed); `None`
    /// if it is neither an IP literal nor a DNS name.
    pub(crate) fn parse(host: &str) -> Option<Self> {
        if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return v6.parse().ok().map(|ip| Self::Ip(IpAddr::V6(ip)));
        }
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return Some(Self::Ip(IpAddr::V4(ip)));
        }
        normalize_name(host).map(Self::Name)
    }
}

impl OutboundGrant {
    /// Whether a request to `scheme://host:port` falls under this grant.
    pub(crate) fn allows(&self, scheme: Scheme, host: &RequestHost, port: u16) -> bool {
        if self.scheme != scheme {
            return false;
        }
        if let PortPattern::Exactly(p) = self.port
            && p != port
        {
            return false;
        }
        match (&self.host, host) {
            (HostPattern::Name(n), RequestHost::Name(h)) => n == h,
            (HostPattern::Subdomains(d), RequestHost::Name(h)) => is_subdomain(h, d),
            (HostPattern::Ip(ip), RequestHost::Ip(h)) => ip == h,
            _ => false,
        }
    }

    /// Whether this (operator's) grant covers all that `other` (a
    /// manifest's) asks for.
    pub fn covers(&self, other: &OutboundGrant) -> bool {
        if self.scheme != other.scheme {
            return false;
        }
        let port = match (self.port, other.port) {
            (PortPattern::Any, _) => true,
            (PortPattern::Exactly(a), PortPattern::Exactly(b)) => a == b,
            (PortPattern::Exactly(_), PortPattern::Any) => false,
        };
        port && match (&self.host, &other.host) {
            (HostPattern::Name(a), HostPattern::Name(b)) => a == b,
            (HostPattern::Subdomains(d), HostPattern::Name(b)) => is_subdomain(b, d),
            (HostPattern::Subdomains(d), HostPattern::Subdomains(e)) => {
                e == d || is_subdomain(e, d)
            }
            (HostPattern::Ip(a), HostPattern::Ip(b)) => a == b,
            _ => false,
        }
    }

    /// Whether this grant names `ip` literally.
    pub(crate) fn names_ip(&self, ip: IpAddr) -> bool {
        self.host == HostPattern::Ip(ip)
    }
}

/// `name` is `<one or more labels>.domain`.
fn is_subdomain(name: &str, domain: &str) -> bool {
    name.strip_suffix(domain)
        .and_then(|head| head.strip_suffix('.'))
        .is_some_and(|head| !head.is_empty())
}

/// Whether `ip` is an address a grant by name never reaches: unspecified,
/// loopback, private (RFC 1918, ULA), link-local, CGNAT (100.64/10),
/// benchmarking, broadcast, multicast, documentation and reserved ranges, the
/// cloud metadata addresses (169.254.169.254, fd00:ec2::254), and their
/// IPv4-mapped and NAT64 forms.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private_v4(v4);
            }
            let s = v6.segments();
            // 64:ff9b::/96 (NAT64) embeds an IPv4 address.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return is_private_v4(Ipv4Addr::new(a, b, c, d));
            }
            v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                // fc00::/7 unique local (fd00:ec2::254 is in it).
                || (s[0] & 0xfe00) == 0xfc00
                // fe80::/10 link-local, and the deprecated fec0::/10 site-local.
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                // ::/96 IPv4-compatible (deprecated), 2001:db8::/32 documentation.
                || s[..6] == [0; 6]
                || (s[0] == 0x2001 && s[1] == 0xdb8)
        }
    }
}

fn is_private_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        // 0.0.0.0/8 "this network"
        || a == 0
        // 100.64.0.0/10 CGNAT
        || (a == 100 && (64..128).contains(&b))
        // 192.0.0.0/24 IETF protocol assignments
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        // 198.18.0.0/15 benchmarking
        || (a == 198 && (b == 18 || b == 19))
        // 240.0.0.0/4 reserved
        || a >= 240
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn g(s: &str) -> OutboundGrant {
        s.parse().unwrap()
    }

    fn host(s: &str) -> RequestHost {
        RequestHost::parse(s).unwrap()
    }

    #[test]
    fn grants_parse_and_print_back() {
        for (text, printed) in [
            ("https://api.example.com", "https://api.example.com"),
            ("https://API.Example.com.:443/", "https://api.example.com"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("https://*.example.org:*", "https://*.example.org:*"),
            ("http://[::1]:9000", "http://[::1]:9000"),
            ("http://[fd00:ec2::254]", "http://[fd00:ec2::254]"),
        ] {
            assert_eq!(g(text).to_string(), printed, "{text}");
            assert_eq!(g(printed), g(text));
        }
        let bare = g("https://api.example.com");
        assert_eq!(bare.port, PortPattern::Exactly(443));
        assert_eq!(g("http://x.example").port, PortPattern::Exactly(80));
        assert_eq!(
            g("http://10.0.0.1").host,
            HostPattern::Ip("10.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn bad_grants_are_refused_with_the_reason() {
        for (text, needle) in [
            ("api.example.com", "no scheme"),
            ("ftp://api.example.com", "http or https"),
            ("https://api.example.com/v1", "no path"),
            ("https://user@api.example.com", "no path"),
            ("https://api.example.com:0", "port"),
            ("https://api.example.com:99999", "port"),
            ("https://api.example.com:x", "port"),
            ("https://*", "DNS name"),
            ("https://a.*.example.com", "DNS name"),
            ("https://-bad.example", "DNS name"),
            ("https://", "DNS name"),
            ("http://999.1.1.1", "DNS name"),
            ("http://[::1", "unclosed"),
            ("http://[nope]", "IPv6"),
            ("http://::1", "DNS name"),
        ] {
            let err = text.parse::<OutboundGrant>().unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(err.contains(text), "{text}: {err}");
        }
    }

    #[test]
    fn requests_match_scheme_host_and_port() {
        let api = g("https://api.example.com");
        assert!(api.allows(Scheme::Https, &host("api.example.com"), 443));
        assert!(api.allows(Scheme::Https, &host("API.example.com."), 443));
        assert!(!api.allows(Scheme::Http, &host("api.example.com"), 443));
        assert!(!api.allows(Scheme::Https, &host("api.example.com"), 8443));
        assert!(!api.allows(Scheme::Https, &host("evil.api.example.com"), 443));
        assert!(!api.allows(Scheme::Https, &host("api.example.com.evil"), 443));

        let wild = g("https://*.example.org:*");
        assert!(wild.allows(Scheme::Https, &host("a.example.org"), 1));
        assert!(wild.allows(Scheme::Https, &host("a.b.example.org"), 8443));
        assert!(!wild.allows(Scheme::Https, &host("example.org"), 443));
        assert!(!wild.allows(Scheme::Https, &host("badexample.org"), 443));

        let ip = g("http://127.0.0.1:8080");
        assert!(ip.allows(Scheme::Http, &host("127.0.0.1"), 8080));
        assert!(!ip.allows(Scheme::Http, &host("localhost"), 8080));
        assert!(!ip.allows(Scheme::Http, &host("127.0.0.2"), 8080));
        assert!(ip.names_ip("127.0.0.1".parse().unwrap()));
        let v6 = g("http://[::1]:8080");
        assert!(v6.allows(Scheme::Http, &host("[::1]"), 8080));
        assert!(RequestHost::parse("bad host").is_none());
    }

    #[test]
    fn caps_cover_what_lies_inside_them() {
        let covers = |cap: &str, entry: &str| g(cap).covers(&g(entry));
        assert!(covers(
            "https://api.example.com",
            "https://api.example.com:443"
        ));
        assert!(covers("https://*.example.com", "https://api.example.com"));
        assert!(covers("https://*.example.com", "https://*.eu.example.com"));
        assert!(covers("https://*.example.com", "https://*.example.com"));
        assert!(covers(
            "https://*.example.com:*",
            "https://a.example.com:8443"
        ));
        assert!(covers("https://*.example.com:*", "https://*.example.com:*"));
        assert!(covers("http://127.0.0.1:*", "http://127.0.0.1:8080"));

        assert!(!covers("https://*.example.com", "https://example.com"));
        assert!(!covers("https://*.example.com", "http://api.example.com"));
        assert!(!covers("https://api.example.com", "https://*.example.com"));
        assert!(!covers(
            "https://api.example.com",
            "https://api.example.com:8443"
        ));
        assert!(!covers("https://*.example.com", "https://a.example.com:*"));
        assert!(!covers("http://127.0.0.1:*", "http://localhost:8080"));
        assert!(!covers("http://localhost:*", "http://127.0.0.1:8080"));
    }

    #[test]
    fn private_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "::",
            "::1",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }
}
