//! Any body: parsing never panics; what parses has a key, and parsing is
//! deterministic (the same bytes give the same key).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = hookhost_fuzz::event::parse(data) {
        assert!(!p.key.is_empty());
        assert!(p.key.starts_with(p.event.event_type()));
        let again = hookhost_fuzz::event::parse(data).expect("parses twice");
        assert_eq!(again.key, p.key);
        assert_eq!(again.ordering_key, p.ordering_key);
    }
});
