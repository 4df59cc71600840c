//! Arbitrary bytes through the safetensors index: an error or tensors whose data lies inside
//! the bytes — never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ts) = kiln::formats::safetensors::index_safetensors(data, std::path::Path::new("fuzz.safetensors")) {
        for (name, dtype, shape, start) in ts {
            let n: usize = shape.iter().product();
            let end = start + dtype.bytes(n);
            assert!(end <= data.len(), "{name} out of bounds");
        }
    }
});
