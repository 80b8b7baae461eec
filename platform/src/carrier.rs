//! Where phone numbers come from. The embedded default is the local carrier
//! (numbers on loopback SIP, in the 555-01xx range reserved for fiction); a
//! SIP trunk carrier offers the numbers the operator declared in
//! configuration.

use serde::Serialize;
use utoipa::ToSchema;

/// A number that can be bought (the API's AvailableNumber).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AvailableNumber {
    /// E.164.
    pub phone_number: String,
    /// ISO country.
    pub country_code: String,
    /// `local` or `toll_free`.
    pub number_type: String,
    /// US state.
    pub state: Option<String>,
    /// City.
    pub locality: Option<String>,
    /// Monthly cost.
    pub monthly_cost_cents: i64,
    /// Upfront cost.
    pub upfront_cost_cents: i64,
    /// Always `USD`.
    pub currency: String,
}

/// A number search.
#[derive(Debug, Clone, Default)]
pub struct NumberQuery {
    /// Country (only `US`).
    pub country_code: String,
    /// Area code (local numbers).
    pub area_code: Option<String>,
    /// `local` / `toll_free`.
    pub number_type: Option<String>,
    /// Most results.
    pub limit: usize,
}

/// A source of phone numbers.
pub trait Carrier: Send + Sync + std::fmt::Debug + 'static {
    /// The carrier's name, stored on each number (`local`, `sip_trunk`).
    fn name(&self) -> &'static str;
    /// Numbers matching `query`, for which `taken` is false.
    fn search(&self, query: &NumberQuery, taken: &dyn Fn(&str) -> bool) -> Vec<AvailableNumber>;
    /// The offer for `e164` if this carrier can sell it.
    fn offer(&self, e164: &str) -> Option<AvailableNumber>;
    /// Makes a bought number reachable (routes it to this node).
    fn provision(&self, e164: &str) {
        let _ = e164;
    }
}

const MONTHLY_COST_CENTS: i64 = 100;

fn offer(e164: &str, number_type: &str, locality: Option<&str>) -> AvailableNumber {
    AvailableNumber {
        phone_number: e164.to_owned(),
        country_code: "US".into(),
        number_type: number_type.into(),
        state: None,
        locality: locality.map(str::to_owned),
        monthly_cost_cents: MONTHLY_COST_CENTS,
        upfront_cost_cents: 0,
        currency: "USD".into(),
    }
}

/// The local carrier: any US number `+1 NPA 555 01XX` (local) or
/// `+1 800 555 01XX` (toll free). Calls between them stay on loopback SIP:
/// a bought number is routed to this node's SIP address.
#[derive(Debug, Default, Clone)]
pub struct LocalCarrier {
    routes: Option<(
        callingbox_engine::transport::sip::LocalCarrier,
        std::net::SocketAddr,
    )>,
}

impl LocalCarrier {
    /// Numbers routed on `routes` to the SIP server at `sip`.
    pub fn routed(
        routes: callingbox_engine::transport::sip::LocalCarrier,
        sip: std::net::SocketAddr,
    ) -> Self {
        LocalCarrier {
            routes: Some((routes, sip)),
        }
    }
}

impl LocalCarrier {
    fn parse(e164: &str) -> Option<(&str, &str)> {
        let digits = e164.strip_prefix("+1")?;
        if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (area, rest) = digits.split_at(3);
        if !rest.starts_with("55501") || area.starts_with('0') || area.starts_with('1') {
            return None;
        }
        Some((area, if area == "800" { "toll_free" } else { "local" }))
    }
}

impl Carrier for LocalCarrier {
    fn name(&self) -> &'static str {
        "local"
    }

    fn search(&self, query: &NumberQuery, taken: &dyn Fn(&str) -> bool) -> Vec<AvailableNumber> {
        if query.country_code != "US" {
            return Vec::new();
        }
        let toll_free = query.number_type.as_deref() == Some("toll_free");
        let area = if toll_free {
            "800".to_owned()
        } else {
            query.area_code.clone().unwrap_or_else(|| "415".into())
        };
        (0..100)
            .map(|n| format!("+1{area}55501{n:02}"))
            .filter(|e164| !taken(e164))
            .filter_map(|e164| self.offer(&e164))
            .take(query.limit)
            .collect()
    }

    fn offer(&self, e164: &str) -> Option<AvailableNumber> {
        let (_, kind) = Self::parse(e164)?;
        Some(offer(e164, kind, Some("Loopback")))
    }

    fn provision(&self, e164: &str) {
        if let Some((routes, sip)) = &self.routes {
            let _ = routes.assign(e164, *sip);
        }
    }
}

/// A SIP trunk: sells exactly the numbers the operator declared.
#[derive(Debug, Clone, Default)]
pub struct TrunkCarrier {
    /// Declared numbers, E.164.
    pub numbers: Vec<String>,
}

impl Carrier for TrunkCarrier {
    fn name(&self) -> &'static str {
        "sip_trunk"
    }

    fn search(&self, query: &NumberQuery, taken: &dyn Fn(&str) -> bool) -> Vec<AvailableNumber> {
        self.numbers
            .iter()
            .filter(|n| !taken(n))
            .filter(|n| {
                query
                    .area_code
                    .as_deref()
                    .is_none_or(|area| n.strip_prefix("+1").is_some_and(|d| d.starts_with(area)))
            })
            .filter_map(|n| self.offer(n))
            .filter(|o| {
                query
                    .number_type
                    .as_deref()
                    .is_none_or(|t| t == o.number_type)
            })
            .take(query.limit)
            .collect()
    }

    fn offer(&self, e164: &str) -> Option<AvailableNumber> {
        if !self.numbers.iter().any(|n| n == e164) {
            return None;
        }
        let toll_free = [
            "+1800", "+1888", "+1877", "+1866", "+1855", "+1844", "+1833",
        ]
        .iter()
        .any(|p| e164.starts_with(p));
        Some(offer(
            e164,
            if toll_free { "toll_free" } else { "local" },
            None,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_carrier_offers_fictional_numbers_in_the_area_asked() {
        let query = NumberQuery {
            country_code: "US".into(),
            area_code: Some("212".into()),
            number_type: None,
            limit: 3,
        };
        let found = LocalCarrier::default().search(&query, &|n| n == "+12125550100");
        let numbers: Vec<_> = found.iter().map(|o| o.phone_number.as_str()).collect();
        assert_eq!(numbers, ["+12125550101", "+12125550102", "+12125550103"]);
        assert!(LocalCarrier::default().offer("+12125550199").is_some());
        assert!(LocalCarrier::default().offer("+12125551234").is_none());
        assert_eq!(
            LocalCarrier::default()
                .offer("+18005550100")
                .map(|o| o.number_type),
            Some("toll_free".into())
        );
    }

    #[test]
    fn a_trunk_sells_only_declared_numbers() {
        let trunk = TrunkCarrier {
            numbers: vec!["+14155550000".into(), "+18885550000".into()],
        };
        assert!(trunk.offer("+14155550001").is_none());
        let query = NumberQuery {
            country_code: "US".into(),
            limit: 10,
            number_type: Some("toll_free".into()),
            ..Default::default()
        };
        let found = trunk.search(&query, &|_| false);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].phone_number, "+18885550000");
    }
}
