//! Istio's resource types (networking.istio.io, security.istio.io) as Rust types that read the
//! YAML users already have, in every served version, and refuse fields Istio does not define.

// Placeholders until the full schemas land; each becomes a module of its own.
macro_rules! placeholder {
    ($($name:ident),*) => {$(
        #[doc = concat!("Istio `", stringify!($name), "` spec.")]
        #[derive(Debug, Clone, PartialEq, Default)]
        pub struct $name;
    )*};
}
placeholder!(
    VirtualService,
    DestinationRule,
    Sidecar,
    PeerAuthentication,
    AuthorizationPolicy
);
