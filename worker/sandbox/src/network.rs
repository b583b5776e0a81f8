//! Kiln's own `wasi:sockets` entry points: the three ways a guest could
//! reach the network, each refused with `access-denied` and recorded in the
//! job's [`Audit`].
//!
//! wasmtime-wasi's p2 sockets are linked as they are (so components that
//! import them still load), then these host functions *shadow* the three
//! that could reach the network: `tcp-create-socket.create-tcp-socket`,
//! `udp-create-socket.create-udp-socket` and
//! `ip-name-lookup.resolve-addresses`. Every other `wasi:sockets` function
//! acts on a socket or a resolver stream, which a guest can only get from
//! these three, or on the `network` handle, which reaches nothing by itself.
//! wasmtime-wasi would refuse the same calls (its context has TCP, UDP and
//! name lookups off), but silently; here the host sees them.
//!
//! The shadowing goes through wasmtime-wasi's own generated
//! `add_to_linker` functions, so the interface names (and their
//! `wasi:sockets@0.2.x` version) are exactly the ones being replaced, the
//! signatures are checked by the compiler, and a guest built against an
//! older 0.2 patch release reaches them through the linker's semver
//! matching like any other WASI import.
//!
//! Raw sockets are never granted. Outbound HTTP goes through `wasi:http`
//! and the manifest's `[grants] outbound` ([`crate::http`]); these
//! functions stay denied whatever it grants (a raw connection carries no
//! scheme or host name to match a grant against).

use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{
    self, HostResolveAddressStream, ResolveAddressStream,
};
use wasmtime_wasi::p2::bindings::sockets::network::{
    self, ErrorCode, HostNetwork, IpAddress, IpAddressFamily, Network,
};
use wasmtime_wasi::p2::bindings::sockets::{tcp_create_socket, udp_create_socket};
use wasmtime_wasi::p2::{DynPollable, SocketError, SocketResult, TcpSocket, UdpSocket};
use wasmtime_wasi::sockets::WasiSocketsCtxView;

use crate::audit::{Audit, Capability, Denial};
use crate::host::JobState;

/// What Kiln's socket functions see of a job's store: its audit trail, and
/// wasmtime-wasi's sockets view for the resolver-stream methods it keeps.
pub(crate) struct NetworkGate<'a> {
    pub(crate) audit: &'a mut Audit,
    pub(crate) sockets: WasiSocketsCtxView<'a>,
}

impl NetworkGate<'_> {
    /// Records the denial and returns the error the guest gets.
    fn deny(&mut self, capability: Capability, detail: &str) -> ErrorCode {
        self.audit.deny(Denial::new(capability, detail));
        ErrorCode::AccessDenied
    }
}

/// The [`HasData`] of the shadowing functions.
struct Gate;

impl HasData for Gate {
    type Data<'a> = NetworkGate<'a>;
}

/// Replaces the network entry points of wasmtime-wasi's p2 sockets, which
/// must already be in `linker` (`wasmtime_wasi::p2::add_to_linker_async`).
pub(crate) fn shadow_sockets(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let shadowed = (|| {
        tcp_create_socket::add_to_linker::<JobState, Gate>(linker, JobState::network_gate)?;
        udp_create_socket::add_to_linker::<JobState, Gate>(linker, JobState::network_gate)?;
        ip_name_lookup::add_to_linker::<JobState, Gate>(linker, JobState::network_gate)
    })();
    linker.allow_shadowing(false);
    shadowed
}

fn family(family: IpAddressFamily) -> &'static str {
    match family {
        IpAddressFamily::Ipv4 => "ipv4",
        IpAddressFamily::Ipv6 => "ipv6",
    }
}

impl tcp_create_socket::Host for NetworkGate<'_> {
    fn create_tcp_socket(
        &mut self,
        address_family: IpAddressFamily,
    ) -> SocketResult<Resource<TcpSocket>> {
        Err(self.deny(Capability::Tcp, family(address_family)).into())
    }
}

impl udp_create_socket::Host for NetworkGate<'_> {
    async fn create_udp_socket(
        &mut self,
        address_family: IpAddressFamily,
    ) -> SocketResult<Resource<UdpSocket>> {
        Err(self.deny(Capability::Udp, family(address_family)).into())
    }
}

impl ip_name_lookup::Host for NetworkGate<'_> {
    fn resolve_addresses(
        &mut self,
        _network: Resource<Network>,
        name: String,
    ) -> SocketResult<Resource<ResolveAddressStream>> {
        Err(self.deny(Capability::Dns, &name).into())
    }
}

/// The `network` interface's own functions stay wasmtime-wasi's (the
/// generated traits above require them of the same type).
impl network::Host for NetworkGate<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        self.sockets.convert_error_code(error)
    }

    fn network_error_code(
        &mut self,
        error: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        self.sockets.network_error_code(error)
    }
}

impl HostNetwork for NetworkGate<'_> {
    fn drop(&mut self, network: Resource<Network>) -> wasmtime::Result<()> {
        HostNetwork::drop(&mut self.sockets, network)
    }
}

/// A resolver stream exists only if `resolve-addresses` made one, which
/// Kiln's never does; these stay wasmtime-wasi's.
impl HostResolveAddressStream for NetworkGate<'_> {
    fn resolve_next_address(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> SocketResult<Option<IpAddress>> {
        self.sockets.resolve_next_address(stream)
    }

    fn subscribe(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        HostResolveAddressStream::subscribe(&mut self.sockets, stream)
    }

    fn drop(&mut self, stream: Resource<ResolveAddressStream>) -> wasmtime::Result<()> {
        HostResolveAddressStream::drop(&mut self.sockets, stream)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use wasmtime::component::ResourceTable;
    use wasmtime_wasi::sockets::WasiSocketsCtx;

    use super::*;
    use crate::audit::Denials;

    /// Runs `call` on a gate over a fresh audit, and returns the error code
    /// the guest got and the denials recorded.
    fn through_gate<T>(
        call: impl FnOnce(&mut NetworkGate<'_>) -> SocketResult<T>,
    ) -> (ErrorCode, Denials) {
        let mut audit = Audit::new(Arc::from("p"), Arc::from("1.0.0"), Arc::from("job"));
        let (mut ctx, mut table) = (WasiSocketsCtx::default(), ResourceTable::new());
        let mut gate = NetworkGate {
            audit: &mut audit,
            sockets: WasiSocketsCtxView {
                ctx: &mut ctx,
                table: &mut table,
            },
        };
        let Err(error) = call(&mut gate) else {
            panic!("not denied");
        };
        (error.downcast().unwrap(), audit.take())
    }

    /// The result of a host function that never waits.
    fn ready<T>(f: impl Future<Output = T>) -> T {
        match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(t) => t,
            Poll::Pending => panic!("the denial waited"),
        }
    }

    #[test]
    fn every_entry_point_denies_and_records() {
        type Call = fn(&mut NetworkGate<'_>) -> SocketResult<()>;
        let calls: [(Call, Denial); 3] = [
            (
                |g| tcp_create_socket::Host::create_tcp_socket(g, IpAddressFamily::Ipv6).map(drop),
                Denial::new(Capability::Tcp, "ipv6"),
            ),
            (
                |g| {
                    ready(udp_create_socket::Host::create_udp_socket(
                        g,
                        IpAddressFamily::Ipv4,
                    ))
                    .map(drop)
                },
                Denial::new(Capability::Udp, "ipv4"),
            ),
            (
                |g| {
                    let name = "db.internal\r\n".to_owned();
                    ip_name_lookup::Host::resolve_addresses(g, Resource::new_borrow(0), name)
                        .map(drop)
                },
                Denial::new(Capability::Dns, "db.internal\\r\\n"),
            ),
        ];
        for (call, denial) in calls {
            let (code, denials) = through_gate(call);
            assert!(matches!(code, ErrorCode::AccessDenied), "{code:?}");
            assert_eq!(denials.audited(), [denial]);
        }
    }
}
