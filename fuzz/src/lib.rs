//! The host's parser and signature check, compiled on their own (their
//! source files, not the whole host with wasmtime), so fuzzing builds fast.

pub mod config {
    //! The one item of the host's config module the signature check needs.
    #[derive(Clone)]
    pub struct Secret(Vec<u8>);

    impl Secret {
        pub fn new(bytes: impl Into<Vec<u8>>) -> Secret {
            Secret(bytes.into())
        }
        pub fn expose(&self) -> &[u8] {
            &self.0
        }
    }
}

#[path = "../../host/src/event.rs"]
pub mod event;
#[path = "../../host/src/json_strict.rs"]
mod json_strict;
#[path = "../../host/src/signature.rs"]
pub mod signature;
