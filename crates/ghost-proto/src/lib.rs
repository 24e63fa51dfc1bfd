//! Generated gRPC code for every Ghost Runner service, and the conversions between wire
//! messages (prost: all fields optional, enums as `i32`) and `ghost-core` domain types.
//!
//! Every service and the CLI depend on this crate; it depends only on `ghost-core`. Adapters
//! convert once at the edge with the `TryFrom` impls in [`convert`], so logic modules never see
//! a prost struct.

#![allow(clippy::all, missing_docs)]
// The generated modules below also allow `too_many_lines` (tonic's generated `call`s); the
// hand-written conversions in `convert` are held to it.

pub mod convert;

/// `ghost.router.v1`: patches, the router service and the shared report messages.
pub mod router {
    /// Version 1.
    #[allow(clippy::too_many_lines)]
    pub mod v1 {
        tonic::include_proto!("ghost.router.v1");
    }
}

/// `ghost.executor.v1`: the Work stream messages.
pub mod executor {
    /// Version 1.
    #[allow(clippy::too_many_lines)]
    pub mod v1 {
        tonic::include_proto!("ghost.executor.v1");
    }
}

/// `ghost.summarizer.v1`: the summarizer service.
pub mod summarizer {
    /// Version 1.
    #[allow(clippy::too_many_lines)]
    pub mod v1 {
        tonic::include_proto!("ghost.summarizer.v1");
    }
}

/// `ghost.alerter.v1`: the alerter service.
pub mod alerter {
    /// Version 1.
    #[allow(clippy::too_many_lines)]
    pub mod v1 {
        tonic::include_proto!("ghost.alerter.v1");
    }
}

/// Encoded descriptor set of every Ghost Runner proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ghost_descriptor.bin"));
