//! Arbitrary bytes through the GGUF header parser: it must return an error or a header whose
//! every tensor lies inside the bytes, end to end in info order with unique names and keys —
//! never panic, over-allocate or read out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = kiln::formats::gguf::parse_header(data, std::path::Path::new("fuzz.gguf")) {
        let mut names = std::collections::HashSet::new();
        let mut next = h.tensors.first().map_or(0, |t| t.start);
        for t in &h.tensors {
            assert!(t.start.checked_add(t.n_bytes).is_some_and(|e| e <= data.len()), "{} out of bounds", t.name);
            assert!(names.insert(&t.name), "{} twice", t.name);
            assert_eq!(t.start, next, "{} not right after the previous tensor", t.name);
            next = t.start + t.n_bytes.next_multiple_of(h.alignment);
        }
        let mut keys = std::collections::HashSet::new();
        assert!(h.metadata.iter().all(|(k, _)| keys.insert(k)), "a metadata key twice");
    }
});
