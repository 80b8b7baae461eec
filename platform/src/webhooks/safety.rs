//! SSRF guard: webhook URLs are chosen by users, so by default a delivery
//! may not reach loopback, private, link-local (cloud metadata), shared,
//! multicast or reserved addresses. The check runs on the addresses DNS
//! returns, and the connection goes to exactly those checked addresses
//! (the HTTP client's resolver is [`GuardedResolver`]), so a name cannot
//! pass the check and then resolve elsewhere. Redirects are not followed.
//! The operator setting `allow_private_webhooks` lifts the address check
//! (tests, the local demo).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an address is refused, or `None` if it is a public unicast one.
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        Some("a cloud metadata address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_private() {
        Some("a private address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if ip.is_unspecified() || a == 0 {
        Some("an unspecified address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a shared (carrier-grade NAT) address")
    } else if ip.is_multicast() || ip.is_broadcast() || a >= 240 {
        Some("a multicast, broadcast or reserved address")
    } else if (a == 192 && b == 0 && c == 0) || (a == 198 && (b == 18 || b == 19)) {
        Some("a special-purpose address")
    } else if ip.is_documentation() {
        Some("a documentation address")
    } else {
        None
    }
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = embedded_v4(ip) {
        return v4_reason(v4);
    }
    let first = ip.segments()[0];
    if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
        Some("a cloud metadata address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_unspecified() {
        Some("an unspecified address")
    } else if first & 0xfe00 == 0xfc00 {
        Some("a private (unique local) address")
    } else if first & 0xffc0 == 0xfe80 || first & 0xffc0 == 0xfec0 {
        Some("a link-local address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if first == 0x2001 && ip.segments()[1] == 0x0db8 {
        Some("a documentation address")
    } else {
        None
    }
}

/// The IPv4 address inside an IPv4-mapped, IPv4-compatible, NAT64 or 6to4
/// IPv6 address (each reaches that IPv4 host).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        Some(v4)
    } else if (s[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified())
        || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
    {
        // IPv4-compatible, or NAT64.
        Some(tail)
    } else if s[0] == 0x2002 {
        Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ))
    } else {
        None
    }
}

/// A destination refused by the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The host in the URL.
    pub host: String,
    /// The address it is (or resolved to).
    pub ip: IpAddr,
    /// Why.
    pub reason: &'static str,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host == self.ip.to_string() {
            write!(f, "refused: {} is {}", self.ip, self.reason)?;
        } else {
            write!(
                f,
                "refused: {} resolves to {}, {}",
                self.host, self.ip, self.reason
            )?;
        }
        f.write_str(" (the operator setting allow_private_webhooks allows it)")
    }
}

impl std::error::Error for Refused {}

/// Checks every address of `host`; the first refused one is the error.
pub fn check_addresses(
    host: &str,
    addresses: impl IntoIterator<Item = IpAddr>,
) -> Result<(), Refused> {
    for ip in addresses {
        if let Some(reason) = forbidden_reason(ip) {
            return Err(Refused {
                host: host.to_owned(),
                ip,
                reason,
            });
        }
    }
    Ok(())
}

/// The HTTP client's resolver: system DNS, then the address check (unless
/// private destinations are allowed). A name with any refused address is
/// refused whole, so round-robin DNS cannot slip one through.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    /// Skip the address check.
    pub allow_private: bool,
}

/// DNS answered nothing.
#[derive(Debug)]
struct NoAddress(String);

impl fmt::Display for NoAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DNS: {} has no address", self.0)
    }
}

impl std::error::Error for NoAddress {}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if found.is_empty() {
                return Err(Box::new(NoAddress(host)) as BoxError);
            }
            if !allow_private
                && let Err(refused) = check_addresses(&host, found.iter().map(SocketAddr::ip))
            {
                return Err(Box::new(refused) as BoxError);
            }
            Ok(Box::new(found.into_iter()) as Addrs)
        })
    }
}

/// Checks a URL before sending: http(s) with a host, and an IP-literal
/// host against the address rules (names are checked by the resolver).
pub fn check_url(url: &url::Url, allow_private: bool) -> Result<(), String> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "refused: the URL scheme must be http or https, not {}",
            url.scheme()
        ));
    }
    let ip = match url.host() {
        None => return Err("refused: the URL has no host".into()),
        Some(url::Host::Domain(_)) => return Ok(()),
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
    };
    if allow_private {
        return Ok(());
    }
    check_addresses(&ip.to_string(), [ip]).map_err(|refused| refused.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> bool {
        forbidden_reason(text.parse().expect("an address")).is_some()
    }

    #[test]
    fn internal_addresses_are_refused_and_public_ones_allowed() {
        for bad in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "2002:c0a8:0101::1",
            "ff02::1",
        ] {
            assert!(refused(bad), "{bad} must be refused");
        }
        for good in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!refused(good), "{good} must be allowed");
        }
        assert_eq!(
            forbidden_reason("169.254.169.254".parse().expect("ip")),
            Some("a cloud metadata address")
        );
    }

    #[test]
    fn urls_must_be_http_and_ip_literals_are_checked() {
        let check = |u: &str, allow| check_url(&url::Url::parse(u).expect("url"), allow);
        assert!(check("ftp://example.com/x", false).is_err());
        assert!(check("https://example.com/x", false).is_ok());
        let err = check("http://127.0.0.1:9/x", false).expect_err("loopback");
        assert!(err.contains("127.0.0.1 is a loopback address"), "{err}");
        // The WHATWG parser turns decimal hosts into addresses first.
        assert!(check("http://2130706433/", false).is_err());
        assert!(check("http://[::1]/", false).is_err());
        assert!(check("http://127.0.0.1:9/x", true).is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_that_resolve_inside() {
        let guarded = GuardedResolver {
            allow_private: false,
        };
        let name: Name = "localhost".parse().expect("name");
        let err = match guarded.resolve(name).await {
            Ok(_) => panic!("localhost must be refused"),
            Err(err) => err.to_string(),
        };
        assert!(err.contains("localhost resolves to"), "{err}");
        let open = GuardedResolver {
            allow_private: true,
        };
        let addrs: Vec<_> = match open.resolve("localhost".parse().expect("name")).await {
            Ok(addrs) => addrs.collect(),
            Err(err) => panic!("{err}"),
        };
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
    }
}
