//! Capability denials the host sees, and their audit trail.
//!
//! A plugin that reaches at run time for something it was not granted gets
//! a typed WASI error. Where the attempt goes through the host (socket
//! creation and name lookups, see [`crate::network`]; outgoing HTTP
//! requests, see [`crate::http`]), the host also records
//! it: one audit line per denial under the target `kiln::audit`, and a count
//! per [`Capability`] in the job's [`Run`](crate::Run), which the worker
//! turns into `kiln_capability_denials_total`. File and environment attempts
//! fail inside the guest (it has no preopens and no variables), so the host
//! never sees them and nothing here counts them.
//!
//! A guest looping on denied calls is bounded: the counts are one integer
//! per capability, and only the first [`MAX_AUDITED`] denials of a store are
//! kept with their detail and logged; the rest are counted, and one summary
//! line at the end of the job says how many went unlogged.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Denials of one store that are logged and kept with their detail; later
/// ones are only counted.
pub const MAX_AUDITED: usize = 16;

/// The longest detail kept, in bytes (a DNS name has at most 253).
const MAX_DETAIL_BYTES: usize = 256;

/// Something a plugin can reach for through the host and be denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    /// Creating a TCP socket (`wasi:sockets/tcp-create-socket`).
    Tcp,
    /// Creating a UDP socket (`wasi:sockets/udp-create-socket`).
    Udp,
    /// Resolving a host name (`wasi:sockets/ip-name-lookup`).
    Dns,
    /// An outgoing HTTP request (`wasi:http/outgoing-handler`) that no
    /// outbound grant allows, or past the job's request budget.
    Http,
}

impl Capability {
    /// Every capability, in a fixed order.
    pub const ALL: [Capability; 4] = [
        Capability::Tcp,
        Capability::Udp,
        Capability::Dns,
        Capability::Http,
    ];

    /// The label: `tcp`, `udp`, `dns` or `http`.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Tcp => "tcp",
            Capability::Udp => "udp",
            Capability::Dns => "dns",
            Capability::Http => "http",
        }
    }

    fn index(self) -> usize {
        match self {
            Capability::Tcp => 0,
            Capability::Udp => 1,
            Capability::Dns => 2,
            Capability::Http => 3,
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One denied attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// What was asked for.
    pub capability: Capability,
    /// What the host knows of the attempt: the address family of a socket
    /// (`ipv4`, `ipv6`), the name asked to resolve. Guest-chosen text, so
    /// control characters are escaped and it is cut at 256 bytes.
    pub detail: String,
}

impl Denial {
    /// A denial of `capability`, with `detail` made safe for logs.
    pub fn new(capability: Capability, detail: &str) -> Self {
        Self {
            capability,
            detail: sanitize(detail),
        }
    }
}

/// The denials of a run: a count per capability, and the first
/// [`MAX_AUDITED`] with their detail. Its size is bounded whatever the guest
/// does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Denials {
    counts: [u64; Capability::ALL.len()],
    audited: Vec<Denial>,
}

impl Denials {
    /// No denial at all.
    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|&n| n == 0)
    }

    /// Denials of `capability`.
    pub fn count(&self, capability: Capability) -> u64 {
        self.counts[capability.index()]
    }

    /// All denials.
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0, |a, &n| a.saturating_add(n))
    }

    /// `(capability, count)` for every capability denied at least once.
    pub fn counts(&self) -> impl Iterator<Item = (Capability, u64)> + '_ {
        Capability::ALL
            .into_iter()
            .map(|c| (c, self.count(c)))
            .filter(|&(_, n)| n > 0)
    }

    /// The first [`MAX_AUDITED`] denials, in order, with their detail.
    pub fn audited(&self) -> &[Denial] {
        &self.audited
    }

    /// Denials counted but not kept (nor logged) with their detail.
    pub fn unaudited(&self) -> u64 {
        self.total().saturating_sub(self.audited.len() as u64)
    }

    /// Counts `denial`, and keeps it with its detail while fewer than
    /// [`MAX_AUDITED`] are kept; says whether it was kept.
    pub fn record(&mut self, denial: Denial) -> bool {
        let n = &mut self.counts[denial.capability.index()];
        *n = n.saturating_add(1);
        if self.audited.len() >= MAX_AUDITED {
            return false;
        }
        self.audited.push(denial);
        true
    }

    /// Adds the denials of another run of the same job (a batch run input
    /// by input), keeping the bound.
    pub(crate) fn merge(&mut self, other: Denials) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts) {
            *mine = mine.saturating_add(theirs);
        }
        let room = MAX_AUDITED.saturating_sub(self.audited.len());
        self.audited.extend(other.audited.into_iter().take(room));
    }
}

/// A store's audit trail: who runs, and the denials so far. Clones share
/// the trail (an HTTP request in flight records its denial after the host
/// call that made it has returned).
#[derive(Debug, Clone)]
pub(crate) struct Audit {
    plugin: Arc<str>,
    /// Empty while the plugin's identity is being read at load.
    plugin_version: Arc<str>,
    job_id: Arc<str>,
    denials: Arc<Mutex<Denials>>,
}

impl Audit {
    pub(crate) fn new(plugin: Arc<str>, plugin_version: Arc<str>, job_id: Arc<str>) -> Self {
        Self {
            plugin,
            plugin_version,
            job_id,
            denials: Arc::default(),
        }
    }

    fn denials(&self) -> MutexGuard<'_, Denials> {
        self.denials.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a denial: counted always, logged while the budget lasts.
    pub(crate) fn deny(&self, denial: Denial) {
        let mut denials = self.denials();
        if !denials.record(denial) {
            return;
        }
        let Some(d) = denials.audited().last() else {
            return;
        };
        tracing::warn!(
            target: "kiln::audit",
            plugin = &*self.plugin,
            plugin_version = &*self.plugin_version,
            job_id = &*self.job_id,
            capability = d.capability.as_str(),
            detail = d.detail.as_str(),
            "capability denied"
        );
    }

    /// The denials so far, leaving none; logs one summary line when some
    /// were counted but not logged.
    pub(crate) fn take(&mut self) -> Denials {
        let denials = std::mem::take(&mut *self.denials());
        let unaudited = denials.unaudited();
        if unaudited > 0 {
            tracing::warn!(
                target: "kiln::audit",
                plugin = &*self.plugin,
                plugin_version = &*self.plugin_version,
                job_id = &*self.job_id,
                unaudited,
                tcp = denials.count(Capability::Tcp),
                udp = denials.count(Capability::Udp),
                dns = denials.count(Capability::Dns),
                http = denials.count(Capability::Http),
                "audit budget of {MAX_AUDITED} lines exhausted: further capability denials counted, not logged"
            );
        }
        denials
    }
}

/// Guest text made safe for a log line: control characters escaped, cut at
/// [`MAX_DETAIL_BYTES`] on a character boundary (with `…` when cut).
fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_DETAIL_BYTES));
    for c in text.chars() {
        let before = out.len();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > MAX_DETAIL_BYTES {
            out.truncate(before);
            out.push('…');
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit() -> Audit {
        Audit::new(Arc::from("p"), Arc::from("1.0.0"), Arc::from("job"))
    }

    #[test]
    fn labels_are_stable() {
        let labels: Vec<_> = Capability::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(labels, ["tcp", "udp", "dns", "http"]);
        assert_eq!(Capability::Dns.to_string(), "dns");
    }

    #[test]
    fn counts_every_denial_but_keeps_only_the_budget() {
        let mut a = audit();
        for i in 0..10_000 {
            a.deny(Denial::new(Capability::Dns, &format!("host-{i}.example")));
        }
        a.deny(Denial::new(Capability::Tcp, "ipv4"));
        let d = a.take();
        assert_eq!(d.count(Capability::Dns), 10_000);
        assert_eq!(d.count(Capability::Tcp), 1);
        assert_eq!(d.count(Capability::Udp), 0);
        assert_eq!(d.total(), 10_001);
        assert_eq!(d.audited().len(), MAX_AUDITED);
        assert_eq!(d.unaudited(), 10_001 - MAX_AUDITED as u64);
        assert_eq!(d.audited()[0].detail, "host-0.example");
        assert_eq!(
            d.counts().collect::<Vec<_>>(),
            [(Capability::Tcp, 1), (Capability::Dns, 10_000)]
        );
        // Taken: the store starts over.
        assert!(a.take().is_empty());
    }

    #[test]
    fn merging_keeps_the_bound() {
        let mut a = audit();
        let mut b = audit();
        for _ in 0..MAX_AUDITED {
            a.deny(Denial::new(Capability::Udp, "ipv6"));
            b.deny(Denial::new(Capability::Tcp, "ipv4"));
        }
        let mut total = a.take();
        total.merge(b.take());
        assert_eq!(total.count(Capability::Udp), MAX_AUDITED as u64);
        assert_eq!(total.count(Capability::Tcp), MAX_AUDITED as u64);
        assert_eq!(total.audited().len(), MAX_AUDITED);
        assert!(
            total
                .audited()
                .iter()
                .all(|d| d.capability == Capability::Udp)
        );
    }

    #[test]
    fn details_are_escaped_and_cut() {
        assert_eq!(
            Denial::new(Capability::Dns, "evil\nkiln::audit fake").detail,
            "evil\\nkiln::audit fake"
        );
        let long = Denial::new(Capability::Dns, &"é".repeat(1_000)).detail;
        assert!(
            long.len() <= MAX_DETAIL_BYTES + '…'.len_utf8(),
            "{}",
            long.len()
        );
        assert!(long.ends_with('…'));
        assert_eq!(
            Denial::new(Capability::Dns, "localhost").detail,
            "localhost"
        );
    }
}
