//! Arbitrary bytes through the GGUF header parser: it must return an error or a header whose
//! every tensor lies inside the bytes — never panic, over-allocate or read out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = kiln::formats::gguf::parse_header(data, std::path::Path::new("fuzz.gguf")) {
        for t in &h.tensors {
            assert!(t.start.checked_add(t.n_bytes).is_some_and(|e| e <= data.len()), "{} out of bounds", t.name);
        }
    }
});
