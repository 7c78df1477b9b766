//! Trellis's own gRPC protocols, generated from `proto/`: the workload identity service
//! (CSR → X.509-SVID). Generated code only, no I/O of its own: the control plane serves it,
//! the agent and the tests call it.

#![forbid(unsafe_code)]

/// `trellis.identity.v1`: the identity service.
pub mod identity {
    tonic::include_proto!("trellis.identity.v1");
}
