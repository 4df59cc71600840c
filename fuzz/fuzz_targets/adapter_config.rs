//! Arbitrary text as a PEFT `adapter_config.json`: LoRA settings or an error naming the field,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let path = std::path::Path::new("adapter_config.json");
    if let Ok(c) = kiln::adapters::lora::parse_adapter_config(text, path) {
        assert!(c.r > 0 && c.alpha.is_finite());
    }
});
